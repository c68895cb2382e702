"""Copies of the project: what verify-repro, the benchmarks and the tests run in."""

import shutil
from pathlib import Path

from mnist_dense.tracking.provenance import git
from tooling.processes import sh


def project_files(root: Path) -> list[str]:
    """The project's files as git sees them: tracked, or untracked and not ignored."""
    listed = git("ls-files", "--cached", "--others", "--exclude-standard", "-z", cwd=root) or ""
    return [name for name in listed.split("\0") if name and (root / name).is_file()]


def copy_project(root: Path, dest: Path, skip: tuple[str, ...] = ()) -> None:
    """Copy the project's files (project_files) into `dest`, leaving out names under `skip`."""
    for name in project_files(root):
        if not name.startswith(skip):
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / name, dest / name)


STAGES = ("preprocess", "train", "evaluate")  # what a re-run from scratch re-makes


def rerun_from_scratch(folder: Path, env: dict) -> dict[str, str]:
    """Re-run STAGES in a copy of the project, ignoring DVC's run-cache; the hash of every
    output its dvc.lock then records (the raw data's too)."""
    from mnist_dense.tracking.provenance import dvc_lock_outputs
    from tooling.processes import sh

    sh("dvc", "repro", "--force", "--no-run-cache", "--single-item", *STAGES, cwd=folder, env=env)
    return dvc_lock_outputs(folder / "dvc.lock")


def scratch_copy(root: Path, scratch: Path) -> None:
    """The project's files (tracked or not ignored), its raw data, and a link to its cache."""
    copy_project(root, scratch)
    sh("git", "init", "-q", cwd=scratch)
    sh("dvc", "cache", "dir", "--local", str(root / ".dvc" / "cache"), cwd=scratch)
    sh("dvc", "checkout", "--quiet", "download", cwd=scratch)
