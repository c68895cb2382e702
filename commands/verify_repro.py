"""Prove the recorded results reproduce: re-run preprocess, train and evaluate from scratch in
a scratch copy of the project and compare every output's hash with this project's dvc.lock.

    make verify-repro          (or: python -m commands.verify_repro)

Exit status 0 when every output is bit-identical, 1 otherwise, naming the likely reason: the
kernel path, Eigen's blocking or the CPU's caches, where they differ from those dvc.lock's
outputs were made with. metrics/run.json (the MLflow run id, the wall time, the kernel path and
the CPU's caches) differs by nature and is reported but not compared. The scratch copy
shares this project's DVC cache and logs to its own, discarded, MLflow store.
"""

import contextlib
import json
import tempfile
from pathlib import Path

from mnist_dense.config import MODEL, RUN_INFO, TEST_METRICS
from mnist_dense.errors import PipelineError
from mnist_dense.runtime.cli import run
from mnist_dense.tracking.provenance import (
    bit_deciding_flags,
    cache_difference,
    cpu_name,
    dvc_lock_outputs,
)
from tooling.processes import clean_environment, sh
from tooling.project_copy import STAGES, rerun_from_scratch, scratch_copy

DIFFERS_BY_NATURE = {"metrics/run.json"}


def compare(recorded: dict[str, str], rerun: dict[str, str]) -> tuple[str, int, int]:
    """A table of both hashes per output; the number of mismatches and of outputs compared."""
    width = max(map(len, recorded))
    lines = [f"{'output':<{width}}  {'dvc.lock':<36}  {'re-run':<36}  result"]
    mismatches = compared = 0
    for path, md5 in recorded.items():
        if path in DIFFERS_BY_NATURE:
            verdict = "differs by nature (run id, wall time)"
        else:
            compared += 1
            verdict = "identical" if rerun.get(path) == md5 else "DIFFERENT"
            mismatches += verdict == "DIFFERENT"
        lines.append(f"{path:<{width}}  {md5:<36}  {rerun.get(path, '-'):<36}  {verdict}")
    return "\n".join(lines), mismatches, compared


def main() -> None:
    root = Path.cwd()
    if json.loads(sh("dvc", "status", "--json", cwd=root).stdout):
        raise PipelineError("the workspace differs from dvc.lock; run `dvc repro` first")
    recorded = dvc_lock_outputs(root / "dvc.lock", STAGES)
    with tempfile.TemporaryDirectory(prefix="verify-repro-") as folder:
        scratch = Path(folder)
        scratch_copy(root, scratch)
        print(f"re-running {', '.join(STAGES)} from scratch in {scratch} ...", flush=True)
        rerun = {
            path: md5
            for path, md5 in rerun_from_scratch(scratch, clean_environment()).items()
            if path in recorded
        }
        then, here = machine(root), machine(scratch)
    report, mismatches, compared = compare(recorded, rerun)
    print(report)
    print(machine_row(recorded, rerun, here))
    if mismatches:
        print(f"likely reason: {likely_reason(then, here)}")
        raise PipelineError(f"{mismatches} of {compared} outputs differ from dvc.lock")
    print(f"OK: all {compared} outputs bit-identical to dvc.lock")


def likely_reason(then: dict[str, str], here: dict[str, str]) -> str:
    """What differs between the machine that made dvc.lock's outputs and this one, the
    likeliest cause first."""
    if "?" not in (then["machine"], here["machine"]) and then["machine"] != here["machine"]:
        return (
            f"this machine's architecture ({here['machine']}) computes other bits than the "
            f"committed lock (made on {then['machine']}): test accuracy "
            f"{accuracy_difference(then['test_accuracy'], here['test_accuracy'])}"
        )
    if then["kernel_path"] != here["kernel_path"]:
        return f"another kernel path: {then['kernel_path']} then, {here['kernel_path']} here"
    if then["eigen_blocking"] != here["eigen_blocking"]:
        return (
            "Eigen blocked the matrix products by other cache sizes: "
            f"{then['eigen_blocking']} then, {here['eigen_blocking']} here"
        )
    caches = cache_difference(then["cpu_caches"], here["cpu_caches"])
    if caches:
        return (
            f"another CPU cache size ({caches}), though the blocking was pinned: "
            "a source docs/reproducibility.md does not list yet"
        )
    return "none recorded: the same kernel path, blocking and caches"


def accuracy_difference(then: str, here: str) -> str:
    """ "98.94 % there, 98.90 % here (-0.04 points)"."""
    try:
        points = 100 * (float(here) - float(then))
    except ValueError:
        return f"{then} there, {here} here"
    return f"{100 * float(then):.2f} % there, {100 * float(here):.2f} % here ({points:+.2f} points)"


def machine(project: Path) -> dict[str, str]:
    """What a project's train stage recorded about its machine in metrics/run.json, and the
    test accuracy evaluate wrote."""
    recorded = {}
    for path in (RUN_INFO, TEST_METRICS):
        with contextlib.suppress(OSError, ValueError):
            recorded |= json.loads((project / path).read_text())
    keys = ("machine", "kernel_path", "eigen_blocking", "cpu_vendor", "cpu_caches")
    return {key: str(recorded.get(key, "?")) for key in (*keys, "test_accuracy")}


def machine_row(recorded: dict[str, str], rerun: dict[str, str], here: dict[str, str]) -> str:
    """This machine's row of docs/reproducibility.md's table of CPUs."""
    flags = " ".join(bit_deciding_flags()) or "?"
    model = rerun.get(str(MODEL), "-")
    same = "identical" if model == recorded.get(str(MODEL)) else "DIFFERENT"
    cpu = f"{cpu_name()} ({here['cpu_vendor']}; {here['cpu_caches']})"
    return f"machine row: | {cpu} | {flags} | {here['kernel_path']} | `{model[:8]}` | {same} |"


if __name__ == "__main__":
    run(main)
