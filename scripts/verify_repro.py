"""Prove the recorded results reproduce: re-run preprocess, train and evaluate from scratch in
a scratch copy of the project and compare every output's hash with this project's dvc.lock.

    make verify-repro          (or: python -m scripts.verify_repro)

Exit status 0 when every output is bit-identical, 1 otherwise. metrics/run.json (the MLflow
run id and wall time) differs by nature and is reported but not compared. The scratch copy
shares this project's DVC cache and logs to its own, discarded, MLflow store.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

STAGES = ("preprocess", "train", "evaluate")
DIFFERS_BY_NATURE = {"metrics/run.json"}


def sh(*args: str, cwd: Path, env: dict | None = None) -> str:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"error: `{' '.join(args)}` failed in {cwd}:\n{result.stdout}{result.stderr}")
    return result.stdout


def outputs(lock_file: Path) -> dict[str, str]:
    """{output path: md5} of the compared stages in a dvc.lock."""
    stages = yaml.safe_load(lock_file.read_text())["stages"]
    return {out["path"]: out["md5"] for stage in STAGES for out in stages[stage].get("outs", [])}


def scratch_copy(root: Path, scratch: Path) -> None:
    """The project's files (tracked or not ignored), its raw data, and a link to its cache."""
    listed = sh("git", "ls-files", "--cached", "--others", "--exclude-standard", "-z", cwd=root)
    for name in filter(None, listed.split("\0")):
        if (root / name).is_file():
            (scratch / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / name, scratch / name)
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
    recorded = outputs(root / "dvc.lock")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "MLFLOW_"))}
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
        rerun = outputs(scratch / "dvc.lock")
    report, mismatches, compared = compare(recorded, rerun)
    print(report)
    if mismatches:
        sys.exit(f"FAILED: {mismatches} of {compared} outputs differ from dvc.lock")
    print(f"OK: all {compared} outputs bit-identical to dvc.lock")


if __name__ == "__main__":
    main()
