"""Reproduce an MLflow run from its record, and say whether it is the same.

    make reproduce ARGS=<mlflow run id>     (or: python -m commands.reproduce RUN_ID)

Reads the run's record (git commit, every param, the DVC hashes of its data and model, the
environment it ran in), checks the commit out in a scratch git worktree, and runs preprocess,
train and evaluate there with exactly the run's params: the raw data comes from the DVC cache,
else the DVC remote, else the download stage (sha256-verified). Then it compares the new data
and model hashes and test metrics with the recorded ones, prints a table and, where they
differ, the likeliest reasons. Exit status 0 only when the model bytes and the test accuracy
are identical.

The workspace, dvc.lock and the MLflow store are left as they were, but for two tags on the
run: `reproduced.at` and `reproduced.result`. The re-run logs to a scratch store.
"""

import argparse
import datetime
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mnist_dense.config import MODEL, RUN_INFO, TEST_METRICS, from_text
from mnist_dense.errors import PipelineError
from mnist_dense.runtime.cli import run
from mnist_dense.tracking import provenance, store
from mnist_dense.tracking.provenance import cache_difference
from tooling.processes import clean_environment, sh
from tooling.project_copy import STAGES, rerun_from_scratch

HASHED = ("data/raw", "data/processed", str(MODEL))
METRICS = ("test_accuracy", "test_loss", "test_macro_f1")
REQUIRED_TAGS = ("git.commit", *(f"dvc.md5.{path}" for path in HASHED))
# environment tags that decide the bits, and what a difference in each one means
ENVIRONMENT = {
    "kernels.path": "another kernel path (mnist_dense/runtime/kernels.py)",
    "kernels.eigen_blocking": "other cache sizes for Eigen's blocking of matrix products",
    "env.cpu_caches": "another CPU cache size",
    "env.cpu_flags": "another CPU instruction set",
    "env.cpu_vendor": "another CPU vendor",
    "env.cpu": "another CPU model",
    "env.threads": "another thread count",
    "env.requirements_sha256": "another requirements.txt (other library versions)",
    "env.tensorflow": "another TensorFlow",
    "env.python": "another Python",
}


@dataclass
class Record:
    """What an MLflow run says about itself."""

    run_id: str
    commit: str
    dirty: bool
    params: dict[str, object]
    hashes: dict[str, str]
    metrics: dict[str, float]
    environment: dict[str, str]

    @classmethod
    def of(cls, found: Run) -> "Record":
        tags = found.data.tags
        missing = [tag for tag in REQUIRED_TAGS if tag not in tags]
        if missing or not found.data.params:
            what = ", ".join(missing) + (", its params" if not found.data.params else "")
            raise PipelineError(
                f"run {found.info.run_id}: no record to reproduce it from (missing {what}); "
                "only runs of the train stage carry one"
            )
        return cls(
            run_id=found.info.run_id,
            commit=tags["git.commit"],
            dirty=tags.get("git.dirty") == "true",
            params={key: from_text(value) for key, value in found.data.params.items()},
            hashes={path: tags[f"dvc.md5.{path}"] for path in HASHED},
            metrics={
                name: found.data.metrics[name] for name in METRICS if name in found.data.metrics
            },
            environment={tag: tags.get(tag, "?") for tag in ENVIRONMENT},
        )


def params_yaml(params: dict[str, object]) -> str:
    """params.yaml holding exactly these dotted-key params."""
    nested: dict[str, dict] = {}
    for key, value in params.items():
        section, _, name = key.partition(".")
        nested.setdefault(section, {})[name] = value
    return yaml.safe_dump(nested, sort_keys=False)


def raw_data(worktree: Path, env: dict) -> str:
    """Put the raw MNIST files in the worktree; say where they came from."""
    if sh("dvc", "checkout", "-q", "download", cwd=worktree, env=env, check=False).returncode == 0:
        return "the DVC cache"
    if sh("dvc", "pull", "--quiet", "download", cwd=worktree, env=env, check=False).returncode == 0:
        return "the DVC remote"
    sh("dvc", "repro", "--single-item", "download", cwd=worktree, env=env)
    return "a verified download"


def rerun(record: Record, root: Path, scratch: Path) -> dict[str, object]:
    """Run the record's params at its commit in a worktree; the new hashes and test metrics."""
    worktree = scratch / "worktree"
    sh("git", "worktree", "add", "--detach", "--quiet", str(worktree), record.commit, cwd=root)
    try:
        (worktree / "params.yaml").write_text(params_yaml(record.params))
        env = clean_environment(
            MLFLOW_TRACKING_URI=f"sqlite:///{scratch / 'mlflow.db'}", DVC_NO_ANALYTICS="1"
        )
        sh("dvc", "cache", "dir", "--local", str(root / ".dvc" / "cache"), cwd=worktree, env=env)
        source = raw_data(worktree, env)
        print(
            f"re-running {', '.join(STAGES)} at {record.commit[:12]} ({source} for data/raw) ...",
            flush=True,
        )
        hashes = rerun_from_scratch(worktree, env)
        machine = json.loads((worktree / RUN_INFO).read_text())
        return (
            {path: hashes.get(path, "-") for path in HASHED}
            | json.loads((worktree / TEST_METRICS).read_text())
            | {"kernels.path": machine.get("kernel_path", "?")}
            | {"kernels.eigen_blocking": machine.get("eigen_blocking", "?")}
        )
    finally:
        sh("git", "worktree", "remove", "--force", str(worktree), cwd=root, check=False)
        sh("git", "worktree", "prune", cwd=root, check=False)


def compare(record: Record, reproduced: dict[str, object]) -> tuple[list[str], list[str]]:
    """The table's lines and the names of what differs."""
    recorded = record.hashes | record.metrics
    width = max(len(name) for name in recorded)
    lines = [f"{'':<{width}}  {'recorded':<36}  {'reproduced':<36}  result"]
    differs = []
    for name, value in recorded.items():
        same = reproduced.get(name) == value
        differs += [] if same else [name]
        lines.append(
            f"{name:<{width}}  {value!s:<36}  {reproduced.get(name, '-')!s:<36}  "
            f"{'identical' if same else 'DIFFERENT'}"
        )
    return lines, differs


def likely_reasons(record: Record, here: dict[str, str], differs: list[str]) -> list[str]:
    """Why a re-run might differ: what is not as it was when the run was made."""
    reasons = []
    if "data/raw" in differs:
        reasons.append("the raw data differs from the run's (another MNIST download?)")
    if record.dirty:
        reasons.append(
            "the run was made from a working tree with uncommitted changes, which its commit "
            "does not hold"
        )
    for tag, meaning in ENVIRONMENT.items():
        then, now = record.environment[tag], here.get(tag, "?")
        if then == now:
            continue
        if tag == "env.cpu_caches":  # the levels, L2 first: it changed the bits unpinned
            reasons.append(f"{meaning} ({cache_difference(then, now)})")
        else:
            reasons.append(f"{meaning}: {then} then, {now} here")
    return reasons or ["none recorded: the same code, params, data and environment"]


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="make reproduce ARGS=", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("run_id", metavar="RUN_ID", nargs="?")
    args = parser.parse_args()
    if not args.run_id:
        raise PipelineError("which run? make reproduce ARGS=<mlflow run id> (the id is in the UI)")
    uri = store.connect()
    client = MlflowClient(uri)
    try:
        found = client.get_run(args.run_id)
    except MlflowException:
        raise PipelineError(
            f"run {args.run_id}: not in the MLflow store {store.masked(uri)}"  # no password
        ) from None
    record = Record.of(found)
    root = Path(provenance.git("rev-parse", "--show-toplevel") or ".").resolve()
    if provenance.git("cat-file", "-e", f"{record.commit}^{{commit}}", cwd=root) is None:
        raise PipelineError(
            f"run {record.run_id} was made at commit {record.commit}, which this repository "
            "does not hold (`git fetch` the branch it was made on)"
        )
    with tempfile.TemporaryDirectory(prefix="reproduce-") as folder:
        reproduced = rerun(record, root, Path(folder))
    lines, differs = compare(record, reproduced)
    print("\n".join(lines))
    identical = not {str(MODEL), "test_accuracy"} & set(differs)
    if differs:
        here = provenance.environment(int(record.params.get("train.threads", 0)))
        for tag in ("kernels.path", "kernels.eigen_blocking"):  # the re-run's, not this process's
            here[tag] = str(reproduced.get(tag, "?"))
        print("likely reasons: " + "; ".join(likely_reasons(record, here, differs)))
    result = "identical" if not differs else f"differs: {', '.join(differs)}"
    client.set_tag(
        record.run_id,
        "reproduced.at",
        datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    )
    client.set_tag(record.run_id, "reproduced.result", result)
    if not identical:
        raise PipelineError(f"run {record.run_id} did not reproduce ({result})")
    same = "model bytes and test metrics identical" if not differs else result
    print(f"OK: run {record.run_id} reproduced: {same}")


if __name__ == "__main__":
    run(main)
