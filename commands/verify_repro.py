"""Prove the recorded results reproduce: re-run preprocess, train and evaluate from scratch in
a scratch copy of the project and compare every output's hash with this project's dvc.lock.

    make verify-repro          (or: python -m commands.verify_repro)

Exit status 0 when every output is bit-identical, 1 otherwise, naming the kernel path when it
differs from the one dvc.lock's outputs were made on. metrics/run.json (the MLflow run id, the
wall time and the kernel path) differs by nature and is reported but not compared. The scratch copy
shares this project's DVC cache and logs to its own, discarded, MLflow store.
"""

import json
import tempfile
from pathlib import Path

from mnist_dense.cli import PipelineError, run
from mnist_dense.paths import MODEL, RUN_INFO
from mnist_dense.provenance import cpu_flags, cpu_name, dvc_lock_outputs, l1_data_cache
from tooling.processes import clean_environment, sh
from tooling.project_copy import STAGES, copy_project, rerun_from_scratch

DIFFERS_BY_NATURE = {"metrics/run.json"}


def scratch_copy(root: Path, scratch: Path) -> None:
    """The project's files (tracked or not ignored), its raw data, and a link to its cache."""
    copy_project(root, scratch)
    sh("git", "init", "-q", cwd=scratch)
    sh("dvc", "cache", "dir", "--local", str(root / ".dvc" / "cache"), cwd=scratch)
    sh("dvc", "checkout", "--quiet", "download", cwd=scratch)


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
        paths = {name: kernel_path(folder) for name, folder in (("then", root), ("here", scratch))}
    report, mismatches, compared = compare(recorded, rerun)
    print(report)
    print(machine_row(recorded, rerun, paths["here"]))
    if mismatches:
        if paths["then"] != paths["here"]:
            print(path_reason(paths["then"], paths["here"]))
        raise PipelineError(f"{mismatches} of {compared} outputs differ from dvc.lock")
    print(f"OK: all {compared} outputs bit-identical to dvc.lock")


def path_reason(then: str, here: str) -> str:
    return f"likely reason: another kernel path: {then} then, {here} here"


def kernel_path(project: Path) -> str:
    """The kernel path a project's train stage recorded in metrics/run.json."""
    try:
        return json.loads((project / RUN_INFO).read_text()).get("kernel_path", "?")
    except (OSError, ValueError):
        return "?"


def machine_row(recorded: dict[str, str], rerun: dict[str, str], path: str) -> str:
    """This machine's row of docs/reproducibility.md's table of CPUs."""
    flags = " ".join(cpu_flags()) or "?"
    model = rerun.get(str(MODEL), "-")
    same = "identical" if model == recorded.get(str(MODEL)) else "DIFFERENT"
    cpu = f"{cpu_name()}, L1d {l1_data_cache()}"
    return f"machine row: | {cpu} | {flags} | {path} | `{model[:8]}` | {same} |"


if __name__ == "__main__":
    run(main)
