"""`make tune`: an Optuna search over DVC experiments, on tiny data in a copy of the project."""

import ctypes
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from commands import tune as tune_command
from commands.tune import Dimension, load_space, searched
from mnist_dense.errors import PipelineError
from tests.conftest import ROOT, exp_run, experiments

SPACE = {
    "train.learning_rate": {"low": 0.00001, "high": 0.03, "log": True},
    "train.hidden_units": [[16], [32]],
    "train.epochs": {"low": 3, "high": 5},
}


def tune(
    folder: Path, env: dict, *args: str, heartbeat: tuple[str, str] = ("2", "6")
) -> subprocess.Popen:
    """A worker of `make tune`; `heartbeat` is Optuna's (interval, grace period) in seconds."""
    return subprocess.Popen(
        [sys.executable, "-m", "commands.tune", "--space", "space.yaml", *args],
        cwd=folder,
        env=env | {"MNIST_TUNE_HEARTBEAT_S": heartbeat[0], "MNIST_TUNE_GRACE_S": heartbeat[1]},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(process: subprocess.Popen, timeout: float = 900) -> str:
    output = process.communicate(timeout=timeout)[0]
    assert process.returncode == 0, output
    return output


@pytest.fixture
def searchable(project):
    folder, env = project
    (folder / "space.yaml").write_text(yaml.safe_dump(SPACE))
    return folder, env


def study_of(folder: Path, name: str, storage: str | None = None) -> optuna.Study:
    return optuna.load_study(
        study_name=name, storage=storage or f"sqlite:///{folder / 'optuna.db'}"
    )


def children(folder: Path, study: str) -> list:
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("e2e").experiment_id
    return client.search_runs([experiment], f"tags.`optuna.study` = '{study}'")


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            {"train.learnin_rate": {"low": 0.1, "high": 0.2}},
            "train.learnin_rate: not a params.yaml key",
        ),
        ({"train.dropout": {"low": 0.5, "high": 0.1}}, "low (0.5) must be below high (0.1)"),
        (
            {"train.learning_rate": {"low": 0, "high": 0.1, "log": True}},
            "a log scale needs low > 0",
        ),
        (
            {"train.dropout": {"low": 0.1, "high": 1.5}},
            "train.dropout: input should be less than 1",
        ),
        ({"train.optimizer": ["adam", "adamw2"]}, "train.optimizer: input should be"),
        ({"train.epochs": {"low": 1, "hi": 3}}, "expected a list of choices or {low, high}"),
    ],
)
def test_a_bad_search_space_is_one_line(tmp_path, entry, message):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(entry))
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    with pytest.raises(PipelineError, match=re.escape(message)) as caught:
        load_space(path, base)
    assert "\n" not in str(caught.value) and str(path) in str(caught.value)


def test_a_bad_search_space_stops_the_command_before_any_trial(workdir, call_main):
    (workdir / "bad.yaml").write_text("train.dropout: {low: 0.5, high: 0.1}\n")
    result = call_main(tune_command.main, "--space", "bad.yaml", "--study", "never")
    assert result.code == 1
    assert (
        result.err.strip() == "error: bad.yaml: train.dropout: low (0.5) must be below high (0.1)"
    )
    assert not (workdir / "optuna.db").exists()


def test_a_key_fixed_by_s_is_not_searched_and_the_report_shows_what_ran(
    workdir, call_main, monkeypatch
):
    """`-S train.epochs=2` with train.epochs in the space: every trial runs 2 epochs, so
    Optuna never samples (nor reports) an epoch count, and the best's params show 2."""
    (workdir / "space.yaml").write_text(yaml.safe_dump(SPACE))
    commands: list[list[str]] = []

    class InstantTrial:
        """A trial's `dvc exp run` that ends at once, printing no epoch: its command kept."""

        def __init__(self, command: list[str], **options: object) -> None:
            commands.append(command)
            self.stdout, self.pid = iter(()), 0

        def wait(self) -> int:
            return 0

    instant = SimpleNamespace(
        Popen=InstantTrial,
        PIPE=subprocess.PIPE,
        STDOUT=subprocess.STDOUT,
        CalledProcessError=subprocess.CalledProcessError,
        run=subprocess.run,
    )
    monkeypatch.setattr(tune_command, "subprocess", instant)
    monkeypatch.setattr(tune_command.Tuner, "_validation_accuracy", lambda self, name: 0.9)
    monkeypatch.setattr(tune_command.Tuner, "_log_plots", lambda self, study: None)
    args = ("--space", "space.yaml", "--study", "fixed", "--trials", "2", "-S", "train.epochs=2")
    result = call_main(tune_command.main, *args)
    assert result.code == 0, result.err
    assert "train.epochs: fixed at 2 by -S, not searched" in result.out
    assert len(commands) == 2
    for command in commands:
        overrides = [command[i + 1] for i, part in enumerate(command) if part == "-S"]
        assert [o for o in overrides if o.startswith("train.epochs=")] == ["train.epochs=2"]
    trials = study_of(workdir, "fixed").trials
    assert all(set(t.params) == {"train.learning_rate", "train.hidden_units"} for t in trials)
    (best,) = [line for line in result.out.splitlines() if line.startswith("best:")]
    assert "'train.epochs': 2" in best and "'train.learning_rate':" in best
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("mnist-dense").experiment_id
    (parent,) = client.search_runs([experiment], "tags.`tune.role` = 'parent'")
    assert json.loads(parent.data.tags["best.params"])["train.epochs"] == 2


def test_fixing_every_key_of_the_space_is_refused_in_one_line():
    space = [Dimension("train.epochs", "int", 1, 3), Dimension("train.dropout", "float", 0, 0.5)]
    with pytest.raises(PipelineError) as caught:
        searched(space, {"train.epochs": 2, "train.dropout": 0.1})
    assert str(caught.value) == (
        "-S fixes every key of the search space (train.epochs, train.dropout); nothing left to "
        "search"
    )


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_trial_gets_the_parent_death_signal_from_a_prctl_resolved_before_the_fork(
    monkeypatch,
):
    """Loading libc between fork and exec can deadlock a threaded worker (--jobs 2): the child
    only calls the prctl the worker resolved at import. Here loading a library after the fork
    fails, and the child still has SIGINT as its parent-death signal."""

    def loading(*args: object, **kwargs: object) -> None:
        raise AssertionError("a library loaded between fork and exec")

    monkeypatch.setattr(ctypes, "CDLL", loading)
    ask = (
        "import ctypes; s = ctypes.c_int(); "
        "ctypes.CDLL('libc.so.6').prctl(2, ctypes.byref(s)); print(s.value)"  # PR_GET_PDEATHSIG
    )
    child = subprocess.run(
        [sys.executable, "-c", ask],
        capture_output=True,
        text=True,
        preexec_fn=tune_command._die_with_parent,
        check=True,
    )
    assert int(child.stdout) == signal.SIGINT


def test_a_four_trial_study_on_two_jobs(searchable):
    folder, env = searchable
    output = finish(tune(folder, env, "--trials", "4", "--jobs", "2", "--study", "four"))
    study = study_of(folder, "four")
    assert len(study.trials) == 4
    finished = {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED}
    assert all(t.state in finished for t in study.trials)
    names = {f"four-{n}" for n in range(4)}
    completed = {
        t.user_attrs["dvc_exp"] for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE
    }
    assert completed <= set(experiments(folder, env)) and completed <= names
    runs = children(folder, "four")
    (parent,) = [r for r in runs if r.data.tags.get("tune.role") == "parent"]
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.info.run_name for r in trials) == sorted(names)
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    figures = {a.path for a in client.list_artifacts(parent.info.run_id, "figures")}
    assert "figures/optimization_history.png" in figures
    assert parent.data.tags["best.dvc_exp"] in completed
    assert f"adopt it: dvc exp apply {study.best_trial.user_attrs['dvc_exp']}" in output


def test_a_time_box_starts_no_trial_after_it_ends(searchable):
    folder, env = searchable
    args = ("--trials", "5", "--timeout", "0.001", "--study", "boxed")
    output = finish(tune(folder, env, *args))
    # Optuna checks the clock between trials: the first one runs, then the box is over
    assert len(study_of(folder, "boxed").trials) == 1
    assert "study boxed: 1 trials (1 complete)" in output


def test_a_trial_clearly_behind_is_pruned_and_leaves_no_experiment(searchable):
    folder, env = searchable
    study = optuna.create_study(
        study_name="prune", storage=f"sqlite:///{folder / 'optuna.db'}", direction="maximize"
    )
    good = {"train.learning_rate": 0.02, "train.hidden_units": "[32]", "train.epochs": 5}
    for _ in range(3):
        study.enqueue_trial(good)
    study.enqueue_trial(good | {"train.learning_rate": 0.00001, "train.hidden_units": "[16]"})
    finish(tune(folder, env, "--trials", "4", "--study", "prune", "-S", "train.dropout=0.0"))
    # the fourth barely learns: behind the median of the first three after the warm-up
    states = [t.state for t in study_of(folder, "prune").trials]
    assert states[:3] == [optuna.trial.TrialState.COMPLETE] * 3
    assert states[3] == optuna.trial.TrialState.PRUNED
    assert "prune-3" not in experiments(folder, env)
    (pruned,) = [r for r in children(folder, "prune") if r.info.run_name == "prune-3"]
    assert pruned.data.tags["optuna.state"] == "pruned" and pruned.info.status == "KILLED"
    leftovers = list((folder / ".dvc" / "tmp" / "exps" / "run").glob("*prune-3*"))
    assert leftovers == []


def test_a_pruned_trial_that_ran_to_its_end_leaves_no_experiment(searchable, monkeypatch):
    """The prune signal can land after DVC saved the trial's experiment: it is removed."""
    folder, env = searchable
    exp_run(folder, env, "finished-first", "train.epochs=1")
    assert "finished-first" in experiments(folder, env)
    monkeypatch.chdir(folder)
    tune_command.Tuner._discard("finished-first")
    assert "finished-first" not in experiments(folder, env)
    tune_command.Tuner._discard("finished-first")  # gone already: nothing to do


def test_a_worker_killed_mid_trial_leaves_it_failed_and_another_carries_on(searchable):
    folder, env = searchable
    storage = f"sqlite:///{folder / 'optuna.db'}"
    beat = ("1", "3")  # Optuna's heartbeat interval and grace period, seconds
    args = ("--trials", "1", "--study", "killed")
    doomed = tune(folder, env, *args, "-S", "train.epochs=200", heartbeat=beat)
    deadline = time.monotonic() + 240
    # well into its training: the trial has reported an epoch's validation accuracy
    while not any(
        t.state == optuna.trial.TrialState.RUNNING and t.intermediate_values
        for t in _trials_or_none(storage, "killed")
    ):
        assert time.monotonic() < deadline and doomed.poll() is None
        time.sleep(0.5)
    os.kill(doomed.pid, signal.SIGKILL)
    doomed.wait()
    killed_at = time.monotonic()
    time.sleep(max(0.0, killed_at + int(beat[1]) + 1 - time.monotonic()))  # its heartbeat stale
    finish(tune(folder, env, *args, "-S", "train.epochs=3", heartbeat=beat))
    states = [t.state for t in study_of(folder, "killed").trials]
    assert states == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE]
    assert "killed-0" not in experiments(folder, env) and "killed-1" in experiments(folder, env)
    left = subprocess.run(["pgrep", "-f", "killed-0"], capture_output=True, text=True).stdout
    assert left.strip() == ""  # its training went down with it


def _trials_or_none(storage: str, name: str) -> list:
    try:
        return optuna.load_study(study_name=name, storage=storage).trials
    except KeyError:
        return []


@pytest.fixture
def echoing_bin(tmp_path) -> Path:
    """A stand-in for .venv/bin whose `python` prints the arguments a recipe gave it (as JSON)
    instead of running a command; `python -c` (the Makefile's WITH_ARGS) is the real one."""
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "python").write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        "if sys.argv[1] == '-c':\n"
        "    os.execv(sys.executable, [sys.executable, *sys.argv[1:]])\n"
        "print(json.dumps(sys.argv[1:]))\n"
    )
    (folder / "python").chmod(0o755)
    return folder


def make(echoing_bin: Path, *args: str) -> subprocess.CompletedProcess:
    """`make args...` in the project with .venv/bin replaced (the venv is not remade), free of
    any ARGS of a `make test ARGS=...` running this test (in the environment and MAKEFLAGS)."""
    outer = ("ARGS", "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")
    return subprocess.run(
        ["make", "-s", "-o", ".venv/.installed", f"BIN={echoing_bin}", *args],
        cwd=ROOT,
        env={name: value for name, value in os.environ.items() if name not in outer},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_make_args_are_words_for_the_command_never_shell_code(echoing_bin, tmp_path):
    """ARGS was pasted into the recipe's shell line: `;touch x` in it ran. Now each shell (or
    make) metacharacter is a plain word, quotes still group words, and the command gets them
    after its own arguments."""
    marks = [tmp_path / f"ran-{n}" for n in range(5)]
    args = (
        f'-S train.epochs=2 --study "two words" ;touch {marks[0]} $(touch {marks[1]}) '
        f"`touch {marks[2]}` $(shell touch {marks[3]}) | tee {marks[4]} *.md"
    )
    result = make(echoing_bin, "tune", f"ARGS={args}")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [
        *("-m", "commands.tune", "-S", "train.epochs=2", "--study", "two words", ";touch"),
        *(str(marks[0]), "$(touch", f"{marks[1]})", "`touch", f"{marks[2]}`", "$(shell"),
        *("touch", f"{marks[3]})", "|", "tee", str(marks[4]), "*.md"),
    ]
    assert not any(mark.exists() for mark in marks)


def test_make_registry_without_args_lists_and_with_args_passes_them(echoing_bin):
    assert json.loads(make(echoing_bin, "registry").stdout) == ["-m", "commands.registry", "list"]
    promote = make(echoing_bin, "registry", """ARGS=promote 3 --why "it's the best" """)
    assert json.loads(promote.stdout) == [
        *("-m", "commands.registry", "promote", "3", "--why", "it's the best")
    ]


def test_make_args_with_an_unclosed_quote_is_one_line(echoing_bin):
    result = make(echoing_bin, "tune", "ARGS=--study 'unclosed")
    assert result.returncode != 0 and result.stdout == ""
    assert result.stderr.splitlines()[0] == "error: ARGS: No closing quotation"
