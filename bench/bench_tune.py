"""make bench-tune: the search against a grid, on the same budget of trainings, in one run.

Both arms search the same three params of the default network (learning rate, dropout, batch
size) with the same number of trainings, each a DVC experiment in a scratch copy of the project
(its own MLflow store and Optuna study; the project is not touched):
- the grid: `dvc exp run --queue` over 2 x 2 x 2 values, run by `dvc queue start -j JOBS`;
- the search: `python -m commands.tune` with the same budget over the same ranges, with
  pruning.
Reported side by side: the best validation accuracy each reached, the wall time, and how much
training pruning skipped (epochs not run, and their time at the pruned trials' own pace).
Writes results/bench-tune.md.
"""

import itertools
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import optuna
import yaml

from mnist_dense.tracking.provenance import cpu_name
from tooling.dvc_queue import run_queue
from tooling.processes import clean_environment, sh, tool
from tooling.project_copy import scratch_copy

ROOT = Path.cwd()
RESULTS = ROOT / "results" / "bench-tune.md"
EPOCHS = 10
JOBS = 2
GRID = {
    "train.learning_rate": [0.0007, 0.004],
    "train.dropout": [0.15, 0.45],
    "train.batch_size": [128, 512],
}
SPACE = {  # the grid's ranges, searched continuously (batch size as choices)
    "train.learning_rate": {"low": 0.0007, "high": 0.004, "log": True},
    "train.dropout": {"low": 0.15, "high": 0.45},
    "train.batch_size": [128, 256, 512],
}
FIXED = {"train.epochs": EPOCHS, "train.threads": 1}  # one core per trial, two at a time


def val_accuracies(copy: Path, env: dict, prefix: str = "") -> dict[str, float]:
    shown = json.loads(sh(tool("dvc"), "exp", "show", "--json", cwd=copy, env=env).stdout)
    return {
        exp["name"]: exp["revs"][0]["data"]["metrics"]["metrics/train.json"]["data"]["val_accuracy"]
        for baseline in shown
        for exp in baseline.get("experiments") or []
        if exp.get("name", "").startswith(prefix) and exp["revs"][0]["data"].get("metrics")
    }


def grid(copy: Path, env: dict) -> tuple[float, float, int]:
    dvc = tool("dvc")
    before = set(val_accuracies(copy, env))
    started = time.perf_counter()
    for values in itertools.product(*GRID.values()):
        overrides = dict(zip(GRID, values, strict=True)) | FIXED
        sets = [arg for key, value in overrides.items() for arg in ("-S", f"{key}={value}")]
        sh(dvc, "exp", "run", "--queue", *sets, cwd=copy, env=env)
    run_queue(dvc, JOBS, cwd=copy, env=env)
    seconds = time.perf_counter() - started
    found = {k: v for k, v in val_accuracies(copy, env).items() if k not in before}
    return max(found.values()), seconds, len(found)


def search(copy: Path, env: dict, trials: int) -> tuple[float, float, optuna.Study]:
    (copy / "bench-space.yaml").write_text(yaml.safe_dump(SPACE))
    command = [sys.executable, "-m", "commands.tune", "--space", "bench-space.yaml"]
    command += ["--study", "bench", "--trials", str(trials), "--jobs", str(JOBS)]
    command += [arg for key, value in FIXED.items() for arg in ("-S", f"{key}={value}")]
    started = time.perf_counter()
    sh(*command, cwd=copy, env=env)
    seconds = time.perf_counter() - started
    study = optuna.load_study(study_name="bench", storage=f"sqlite:///{copy / 'optuna.db'}")
    return study.best_value, seconds, study


def main() -> None:
    if not (ROOT / "data" / "raw").is_dir():
        sys.exit("error: data/raw is missing; run `dvc repro download` first")
    budget = len(list(itertools.product(*GRID.values())))
    with tempfile.TemporaryDirectory(prefix="bench-tune-") as folder:
        copy = Path(folder)
        scratch_copy(ROOT, copy)
        env = clean_environment(
            PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
        )
        sh(tool("dvc"), "repro", cwd=copy, env=env)  # the baseline the experiments start from
        sh("git", "add", "-A", cwd=copy, env=env)  # experiments need a commit to start from
        author = ("-c", "user.name=bench-tune", "-c", "user.email=bench-tune@localhost")
        sh("git", *author, "commit", "-qm", "baseline", cwd=copy, env=env)
        grid_best, grid_seconds, grid_runs = grid(copy, env)
        search_best, search_seconds, study = search(copy, env, budget)
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    skipped = sum(t.user_attrs["epochs_planned"] - t.user_attrs["epochs_run"] for t in pruned)
    saved = sum(
        (t.user_attrs["epochs_planned"] - t.user_attrs["epochs_run"])
        * t.user_attrs["training_seconds"]
        / t.user_attrs["epochs_run"]
        for t in pruned
    )
    lines = [
        f"# make bench-tune: {cpu_name()}, {os.cpu_count()} cores, {platform.platform()}",
        "",
        f"Run {time.strftime('%Y-%m-%d %H:%M')} by `make bench-tune`. The default network, "
        f"{EPOCHS} epochs per training, {JOBS} trainings at a time (one thread each); the same "
        f"budget of {budget} trainings for both.",
        "",
        "| | trainings | best val_accuracy | wall time | pruned | epochs skipped |",
        "|---|---|---|---|---|---|",
        f"| grid, `dvc exp run --queue` (2 x 2 x 2) | {grid_runs} | {grid_best:.4f} | "
        f"{grid_seconds:.0f} s | - | - |",
        f"| search, `make tune` (TPE, median pruning) | {len(study.trials)} | {search_best:.4f} | "
        f"{search_seconds:.0f} s | {len(pruned)} | {skipped} (about {saved:.0f} s of training) |",
        "",
        f"Search space: {json.dumps(SPACE)}; grid: {json.dumps(GRID)}.",
    ]
    print("\n".join(lines))
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    print(f"\nwritten to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
