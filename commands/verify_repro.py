"""Prove the recorded results reproduce: re-run preprocess, train and evaluate from scratch in
a scratch copy of the project and compare every output's hash with this project's dvc.lock.

    make verify-repro          (or: python -m commands.verify_repro)

Exit status 0 when every output is bit-identical, 1 otherwise. metrics/run.json (the MLflow
run id and wall time) differs by nature and is reported but not compared. The scratch copy
shares this project's DVC cache and logs to its own, discarded, MLflow store.
"""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from mnist_dense.lineage import clean_environment, copy_project, dvc_lock_outputs

STAGES = ("preprocess", "train", "evaluate")
DIFFERS_BY_NATURE = {"metrics/run.json"}


def sh(*args: str, cwd: Path, env: dict | None = None) -> str:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"error: `{' '.join(args)}` failed in {cwd}:\n{result.stdout}{result.stderr}")
    return result.stdout


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
    if json.loads(sh("dvc", "status", "--json", cwd=root)):
        sys.exit("error: the workspace differs from dvc.lock; run `dvc repro` first")
    recorded = dvc_lock_outputs(root / "dvc.lock", STAGES)
    env = clean_environment()
    with tempfile.TemporaryDirectory(prefix="verify-repro-") as folder:
        scratch = Path(folder)
        scratch_copy(root, scratch)
        print(f"re-running {', '.join(STAGES)} from scratch in {scratch} ...", flush=True)
        sh(
            "dvc",
            "repro",
            "--force",
            "--no-run-cache",
            "--single-item",
            *STAGES,
            cwd=scratch,
            env=env,
        )
        rerun = dvc_lock_outputs(scratch / "dvc.lock", STAGES)
    report, mismatches, compared = compare(recorded, rerun)
    print(report)
    if mismatches:
        sys.exit(f"FAILED: {mismatches} of {compared} outputs differ from dvc.lock")
    print(f"OK: all {compared} outputs bit-identical to dvc.lock")


if __name__ == "__main__":
    main()
