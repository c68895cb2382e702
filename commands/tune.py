"""Hyperparameter search with Optuna, each trial a DVC experiment and a child MLflow run.

    make tune ARGS='--trials 40 --jobs 2'                     (python -m commands.tune ...)
    MNIST_TUNE_STORAGE=postgresql://... make tune ARGS='--trials 40 --study wide'  (each machine)
    make tune ARGS='--trials 4 --jobs 2 -S train.epochs=2'    (a quick search)

The search space is tune.yaml (--space FILE): one entry per params.yaml key, an int or float
range (`log: true` for a log scale) or a list of choices, checked against the params schema
before any trial. `-S key=value` fixes a param for every trial (a key of the space it fixes
is not searched; the report shows what ran). Each trial runs as
`dvc exp run --temp -n <study>-<number>` with its params, so `dvc exp show` lists it and
`dvc exp apply` brings it back; its MLflow run is a child of the study's parent run, which
holds the search space, the best trial so far and Optuna's plots. The objective is the final
validation accuracy (metrics/train.json), never the test set. A trial whose per-epoch
validation accuracy falls clearly behind is pruned (Optuna's MedianPruner, or --pruner
hyperband): its training is stopped, DVC keeps no experiment of it, and Optuna and MLflow
record it as pruned.

The study lives in MNIST_TUNE_STORAGE (default: sqlite:///<project>/optuna.db, git-ignored;
--storage for a URL without a password). With a PostgreSQL URL, the same command on several
machines works on one study: each worker asks
Optuna for trials, runs them as its own DVC experiments (`dvc exp push`ed to --git-remote when
given), and a worker killed mid-trial leaves that trial FAIL (Optuna's heartbeat) while the
others carry on. --trials is what this worker runs; --jobs how many at once; --timeout
SECONDS starts no trial after that long (a time-boxed search).
"""

import argparse
import ctypes
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import optuna
import yaml
from mlflow.tracking import MlflowClient
from sqlalchemy import make_url
from sqlalchemy.exc import SQLAlchemyError

from mnist_dense.config import (
    PARAMS_FILE,
    apply,
    as_override,
    as_text,
    from_text,
    parse_params,
    read_yaml,
)
from mnist_dense.errors import PipelineError
from mnist_dense.model.progress import parse_epoch_line
from mnist_dense.runtime.cli import run
from mnist_dense.tracking import store
from mnist_dense.tracking.provenance import project_root
from mnist_dense.tracking.runs import PARENT_ENV, TRIAL_ENV
from tooling.processes import tool

SPACE_FILE = Path("tune.yaml")
HEARTBEAT_S = int(os.environ.get("MNIST_TUNE_HEARTBEAT_S", "10"))
GRACE_S = int(os.environ.get("MNIST_TUNE_GRACE_S", "40"))  # a trial silent this long is dead
FIXED_ATTR = "fixed"  # a trial's user attribute: the -S params it ran with besides its own
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


@dataclass(frozen=True)
class Dimension:
    """One searched key: an int or float range, or a list of choices."""

    key: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple | None = None

    def suggest(self, trial: optuna.Trial) -> object:
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log)
        if self.kind == "float":
            return trial.suggest_float(self.key, self.low, self.high, log=self.log)
        # Optuna stores choices as plain values; lists become their JSON text
        picked = trial.suggest_categorical(self.key, [_storable(c) for c in self.choices])
        return from_text(picked) if isinstance(picked, str) and picked.startswith("[") else picked


def _storable(value: object) -> object:
    return json.dumps(value) if isinstance(value, list) else value


def load_space(path: Path, base: dict) -> list[Dimension]:
    """Read and check the search space; one line naming the key for anything wrong."""
    try:
        entries = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise PipelineError(f"{path}: not found (--space FILE names another)") from None
    except yaml.YAMLError as error:
        raise PipelineError(f"{path}: malformed YAML ({error})") from None
    if not isinstance(entries, dict) or not entries:
        raise PipelineError(f"{path}: expected a mapping of params.yaml keys to ranges or choices")
    dimensions = []
    for key, entry in entries.items():
        where = f"{path}: {key}"
        section, _, name = str(key).partition(".")
        if name not in base.get(section, {}):
            raise PipelineError(f"{where}: not a params.yaml key")
        if isinstance(entry, list):
            dimension = Dimension(key, "choices", choices=tuple(entry))
            if len(entry) < 2:
                raise PipelineError(f"{where}: a list of choices needs at least two")
            values = list(entry)
        elif isinstance(entry, dict) and {"low", "high"} <= set(entry) <= {"low", "high", "log"}:
            low, high, log = entry["low"], entry["high"], bool(entry.get("log", False))
            kind = "int" if isinstance(low, int) and isinstance(high, int) else "float"
            if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (low, high)):
                raise PipelineError(f"{where}: low and high must be numbers, got {low!r}, {high!r}")
            if not low < high:
                raise PipelineError(f"{where}: low ({low}) must be below high ({high})")
            if log and low <= 0:
                raise PipelineError(f"{where}: a log scale needs low > 0, got {low}")
            dimension = Dimension(key, kind, float(low), float(high), log)
            values = [low, high]
        else:
            raise PipelineError(
                f"{where}: expected a list of choices or {{low, high}} with optional log: true"
            )
        for value in values:  # each end of the range, each choice, must be a valid param
            parse_params(apply(base, {key: value}), where)
        dimensions.append(dimension)
    return dimensions


def fixed_overrides(settings: list[str], base: dict) -> dict[str, object]:
    """-S key=value pairs, checked against the schema."""
    fixed = {}
    for setting in settings:
        key, sep, value = setting.partition("=")
        if not sep:
            raise PipelineError(f"-S {setting}: expected key=value")
        fixed[key] = read_yaml(value)
    parse_params(apply(base, fixed), "-S")
    return fixed


def _pdeathsig() -> Callable[[], object] | None:
    """What a trial's process runs between fork and exec so that it receives SIGINT (as
    Ctrl-C: DVC cleans up) when the worker dies, even by SIGKILL (Linux's PR_SET_PDEATHSIG).

    Resolved here, in the worker at import, before any thread or fork: loading libc and
    looking up `prctl` after fork could wait forever on a loader lock that another of the
    worker's threads (--jobs, Optuna's heartbeat) held at the fork. The child only calls the
    resolved function. None where there is no prctl (macOS): no parent-death signal there.
    """
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    return partial(prctl, PR_SET_PDEATHSIG, int(signal.SIGINT))


_die_with_parent = _pdeathsig()


def searched(space: list[Dimension], fixed: dict[str, object]) -> list[Dimension]:
    """The space without the keys -S fixes: a fixed key is not sampled, so Optuna neither
    models nor reports a value that never ran. Says which it leaves out; refuses to search
    nothing."""
    left = [d for d in space if d.key not in fixed]
    for key in (d.key for d in space if d.key in fixed):
        print(f"{key}: fixed at {as_text(fixed[key])} by -S, not searched", flush=True)
    if not left:
        raise PipelineError(
            f"-S fixes every key of the search space ({', '.join(d.key for d in space)}); "
            "nothing left to search"
        )
    return left


def ran(trial: optuna.trial.FrozenTrial) -> dict[str, object]:
    """The params a trial ran with: Optuna's sampled ones and those -S fixed."""
    return trial.params | trial.user_attrs.get(FIXED_ATTR, {})


class Tuner:
    """Runs trials of one study as DVC experiments and reports them to Optuna and MLflow."""

    def __init__(self, study: optuna.Study, space: list[Dimension], fixed: dict, args) -> None:
        self.study, self.space, self.fixed, self.args = study, space, fixed, args
        self.client = MlflowClient(store.connect())
        self.experiment = store.experiment_id(self.client, store.experiment_name())
        self.parent = self._parent_run()
        self.lock = threading.Lock()
        self.epochs = read_yaml(PARAMS_FILE.read_text())["train"]["epochs"]  # unless searched

    def _parent_run(self) -> str:
        """The study's MLflow parent run, shared by every worker (the oldest one wins a race)."""
        found = f"tags.`optuna.study` = '{self.study.study_name}' and tags.`tune.role` = 'parent'"
        existing = self.client.search_runs([self.experiment], found, order_by=["start_time ASC"])
        if existing:
            return existing[0].info.run_id
        mine = self.client.create_run(
            self.experiment,
            run_name=f"{self.study.study_name} (search)",
            tags={"optuna.study": self.study.study_name, "tune.role": "parent"},
        ).info.run_id
        oldest = self.client.search_runs([self.experiment], found, order_by=["start_time ASC"])[0]
        if oldest.info.run_id != mine:
            self.client.delete_run(mine)
            return oldest.info.run_id
        self.client.log_text(mine, Path(self.args.space).read_text(), "search_space/tune.yaml")
        for key, value in self.fixed.items():
            self.client.log_param(mine, key, value)
        return mine

    def objective(self, trial: optuna.Trial) -> float:
        params = {d.key: d.suggest(trial) for d in self.space} | self.fixed
        trial.set_user_attr(FIXED_ATTR, self.fixed)  # what ran beyond Optuna's params
        name = f"{self.study.study_name}-{trial.number}"
        trial.set_user_attr("dvc_exp", name)
        command = [tool("dvc"), "exp", "run", "--temp", "-n", name]
        for key, value in params.items():
            command += ["-S", as_override(key, value)]
        env = os.environ | {
            PARENT_ENV: self.parent,
            TRIAL_ENV: f"{self.study.study_name}:{trial.number}",
            "PYTHONUNBUFFERED": "1",
        }
        process = subprocess.Popen(
            command,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own group: pruning stops dvc and the stage together
            preexec_fn=_die_with_parent,  # resolved before any fork (_pdeathsig)
        )
        tail: list[str] = []
        started = time.monotonic()
        for line in process.stdout:
            tail = [*tail[-20:], line]
            report = parse_epoch_line(line)
            if report:
                epoch, val_accuracy = report.epoch, report.val_accuracy
                trial.report(val_accuracy, epoch)
                # what the benchmark needs to tell the time pruning saved
                trial.set_user_attr("epochs_run", epoch)
                trial.set_user_attr("epochs_planned", params.get("train.epochs", self.epochs))
                trial.set_user_attr("training_seconds", round(time.monotonic() - started, 1))
                if trial.should_prune():
                    with suppress(ProcessLookupError):  # it may have ended meanwhile
                        os.killpg(process.pid, signal.SIGINT)  # as Ctrl-C: DVC cleans up
                    process.wait()
                    self._discard(name)  # if it finished before the signal landed
                    self._mark_child(name, "pruned")
                    print(f"trial {trial.number} ({name}): pruned at epoch {epoch}", flush=True)
                    raise optuna.TrialPruned(f"val_accuracy {val_accuracy:.4f} at epoch {epoch}")
        if process.wait() != 0:
            raise RuntimeError(f"{' '.join(command[:6])} failed: {''.join(tail[-5:]).strip()}")
        value = self._validation_accuracy(name)
        self._mark_child(name, "complete")
        if self.args.git_remote:
            subprocess.run([tool("dvc"), "exp", "push", self.args.git_remote, name], check=True)
        print(f"trial {trial.number} ({name}): val_accuracy {value:.4f}", flush=True)
        return value

    @staticmethod
    def _experiment_refs(name: str) -> list[str]:
        """The experiment's refs under refs/exps, newest first: found by name whatever commit
        it started from (HEAD may move while a search runs)."""
        refs = subprocess.run(
            ["git", "for-each-ref", "--sort=-committerdate", "--format=%(refname)", "refs/exps"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        return [ref for ref in refs if ref.rsplit("/", 1)[-1] == name]

    @staticmethod
    def _discard(name: str) -> None:
        """A pruned trial leaves no experiment, also one whose run ended before the signal."""
        if Tuner._experiment_refs(name):
            subprocess.run([tool("dvc"), "exp", "remove", name], check=True, capture_output=True)

    def _validation_accuracy(self, name: str) -> float:
        """The experiment's final val_accuracy, read from its commit under refs/exps."""
        found = self._experiment_refs(name)
        if not found:
            raise RuntimeError(f"experiment {name} has no ref under refs/exps")
        shown = subprocess.run(
            ["git", "show", f"{found[0]}:metrics/train.json"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return float(json.loads(shown)["val_accuracy"])

    def _mark_child(self, name: str, state: str) -> None:
        query = f"tags.`dvc.exp_name` = '{name}' and tags.`mlflow.parentRunId` = '{self.parent}'"
        for child in self.client.search_runs([self.experiment], query):
            self.client.set_tag(child.info.run_id, "optuna.state", state)
            if state == "pruned" and child.info.status != "KILLED":  # it ran to its end
                self.client.set_terminated(child.info.run_id, "KILLED")

    def after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """Keep the parent run's record of the best trial and Optuna's plots current."""
        with self.lock:
            done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
            if not done:
                return
            best = max(done, key=lambda t: t.value)
            self.client.log_metric(self.parent, "best_val_accuracy", best.value, step=trial.number)
            self.client.set_tag(self.parent, "best.dvc_exp", best.user_attrs.get("dvc_exp", ""))
            self.client.set_tag(self.parent, "best.trial", str(best.number))
            self.client.set_tag(self.parent, "best.params", json.dumps(ran(best)))
            self._log_plots(study)

    def _log_plots(self, study: optuna.Study) -> None:
        from optuna.visualization import matplotlib as plots

        figures = {"optimization_history": plots.plot_optimization_history}
        complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if len(complete) >= 2 and len(self.space) >= 2:
            figures["param_importances"] = plots.plot_param_importances
        for name, plot in figures.items():
            try:
                axes = plot(study)
            except (ValueError, RuntimeError):  # too few distinct trials for this plot yet
                continue
            self.client.log_figure(self.parent, axes.figure, f"figures/{name}.png")


def make_study(args) -> optuna.Study:
    if args.storage and make_url(args.storage).password:
        raise PipelineError(
            "--storage: a URL with a password would be readable by any user of this machine "
            "(ps); put it in MNIST_TUNE_STORAGE instead (make -s team-env sets it)"
        )
    storage_url = (
        args.storage
        or os.environ.get("MNIST_TUNE_STORAGE")  # the team stack's (make -s team-env)
        or f"sqlite:///{project_root() / 'optuna.db'}"
    )
    for attempt in range(5):  # workers starting together race to create Optuna's tables
        try:
            storage = optuna.storages.RDBStorage(
                storage_url,
                heartbeat_interval=HEARTBEAT_S,
                grace_period=GRACE_S,  # a silent trial is then marked FAIL, never retried
            )
            break
        except SQLAlchemyError as error:
            if attempt == 4:
                shown = make_url(storage_url).render_as_string(hide_password=True)
                raise PipelineError(f"Optuna storage {shown}: {error.args[0]}") from None
            time.sleep(1 + attempt)
    pruner = {
        "median": optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2),
        "hyperband": optuna.pruners.HyperbandPruner(min_resource=2),
        "none": optuna.pruners.NopPruner(),
    }[args.pruner]
    return optuna.create_study(
        study_name=args.study,
        storage=storage,
        direction="maximize",
        pruner=pruner,
        load_if_exists=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="make tune", description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20, help="trials this worker runs")
    parser.add_argument("--jobs", type=int, default=1, help="trials at once on this machine")
    parser.add_argument(
        "--timeout", type=float, help="seconds after which no new trial starts (running ones end)"
    )
    parser.add_argument("--space", default=str(SPACE_FILE), help="search space YAML")
    parser.add_argument("--study", default="search", help="Optuna study (and DVC name prefix)")
    parser.add_argument(
        "--storage",
        help="Optuna storage URL without a password (default: $MNIST_TUNE_STORAGE, which may "
        "hold one, else optuna.db)",
    )
    parser.add_argument("--pruner", choices=["median", "hyperband", "none"], default="median")
    parser.add_argument("--git-remote", help="dvc exp push each finished trial to this remote")
    parser.add_argument("-S", dest="fixed", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", args.study):
        raise PipelineError(f"--study {args.study}: letters, digits, '.', '_' and '-' only")
    base = read_yaml(PARAMS_FILE.read_text())
    space = load_space(Path(args.space), base)
    fixed = fixed_overrides(args.fixed, base)
    space = searched(space, fixed)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", module="optuna.importance")  # "importances will be equal"
    study = make_study(args)
    tuner = Tuner(study, space, fixed, args)
    print(
        f"study {study.study_name}: {args.trials} trials, {args.jobs} at a time, searching "
        f"{', '.join(d.key for d in space)}; MLflow parent run {tuner.parent}",
        flush=True,
    )
    study.optimize(
        tuner.objective,
        n_trials=args.trials,
        timeout=args.timeout,
        n_jobs=args.jobs,
        callbacks=[tuner.after_trial],
        catch=(RuntimeError, subprocess.CalledProcessError),
    )
    tuner.client.set_terminated(tuner.parent)  # another worker may still add to it
    report(study, tuner)


def report(study: optuna.Study, tuner: Tuner) -> None:
    states = [t.state.name.lower() for t in study.trials]
    counts = ", ".join(f"{states.count(s)} {s}" for s in sorted(set(states)))
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise PipelineError(f"study {study.study_name}: no trial completed ({counts})")
    best = max(complete, key=lambda t: t.value)
    name = best.user_attrs["dvc_exp"]
    query = f"tags.`dvc.exp_name` = '{name}' and tags.`mlflow.parentRunId` = '{tuner.parent}'"
    child = tuner.client.search_runs([tuner.experiment], query)
    print(f"study {study.study_name}: {len(study.trials)} trials ({counts})")
    print(
        f"best: trial {best.number}, val_accuracy {best.value:.4f}, params {ran(best)}, "
        f"DVC experiment {name}, MLflow run {child[0].info.run_id if child else '?'}"
    )
    print(f"adopt it: dvc exp apply {name}")


if __name__ == "__main__":
    run(main)
