"""`make reproduce ARGS=<id>`: a run re-made from its MLflow record, end to end on tiny data.

One real reproduction runs per session (the slow part: a worktree, three stages); the other
cases are checked in process, the differing one against that reproduction's real hashes.
"""

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException

from commands import reproduce
from tests.conftest import client_of, copy_of, python_module, sh


def workspace_run_id(project: Path) -> str:
    return json.loads((project / "metrics" / "run.json").read_text())["mlflow_run_id"]


def run_count(project: Path, run_id: str) -> int:
    client = client_of(project)
    return len(client.search_runs([client.get_run(run_id).info.experiment_id]))


@dataclass
class Reproduction:
    project: Path
    run_id: str
    result: subprocess.CompletedProcess
    reproduced: dict  # what the re-run gave: hashes and test metrics
    lock_before: bytes
    status_before: str
    runs_before: int


@pytest.fixture(scope="session")
def reproduction(built_project, tmp_path_factory) -> Reproduction:
    """`python -m commands.reproduce RUN` on the run that made a copy's model, once."""
    source, env = built_project
    folder = copy_of(source, tmp_path_factory.mktemp("reproduce") / "project")
    run_id = workspace_run_id(folder)
    lock, status = (
        (folder / "dvc.lock").read_bytes(),
        sh("git", "status", "--porcelain", cwd=folder).stdout,
    )
    runs_before = run_count(folder, run_id)
    result = python_module("commands.reproduce", run_id, cwd=folder, env=env, timeout=600)
    values = {}  # the table's "reproduced" column: hashes as printed, metrics as numbers
    for line in result.stdout.splitlines()[1:]:
        name, _, reproduced, *_ = [*line.split(), "", "", ""]
        if name in reproduce.HASHED:
            values[name] = reproduced
        elif name in reproduce.METRICS:
            values[name] = float(reproduced)
    return Reproduction(folder, run_id, result, values, lock, status, runs_before)


def test_a_run_reproduces_from_its_record(reproduction):
    project, run_id, result = reproduction.project, reproduction.run_id, reproduction.result
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {
        line.split()[0]: line.split()[-1]
        for line in result.stdout.splitlines()[1:]
        if line[:1] in "dmt"
    }
    assert rows["models/model.keras"] == rows["test_accuracy"] == "identical", result.stdout
    assert set(rows) >= {"data/raw", "data/processed", "models/model.keras", "test_accuracy"}
    assert f"OK: run {run_id} reproduced" in result.stdout
    tags = client_of(project).get_run(run_id).data.tags
    assert tags["reproduced.result"] == "identical" and tags["reproduced.at"]
    # nothing of the user's changed, and no run was added
    assert (project / "dvc.lock").read_bytes() == reproduction.lock_before
    assert sh("git", "status", "--porcelain", cwd=project).stdout == reproduction.status_before
    worktrees = sh("git", "worktree", "list", cwd=project).stdout
    assert "worktree" not in worktrees.split("\n", 1)[-1]
    assert run_count(project, run_id) == reproduction.runs_before


@pytest.fixture
def recorded(project, monkeypatch):
    """The project copy as the working folder of this process; the run that made its model."""
    folder, env = project
    monkeypatch.chdir(folder)
    for key in [k for k in os.environ if k.startswith(("MLFLOW_", "DVC_"))]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("PATH", env["PATH"])
    return folder, workspace_run_id(folder), client_of(folder)


def test_a_run_whose_model_hash_was_changed_is_reported_as_differing(
    recorded, reproduction, monkeypatch, call_main
):
    _project, run_id, client = recorded
    key = "dvc.md5.models/model.keras"
    original = client.get_run(run_id).data.tags[key]
    client.set_tag(run_id, key, "0" * 32)
    # the re-run's real result (the session's reproduction of this same run)
    monkeypatch.setattr(reproduce, "rerun", lambda *args: dict(reproduction.reproduced))
    result = call_main(reproduce.main, run_id)
    assert result.code == 1
    model_row = next(line for line in result.out.splitlines() if line.startswith("models/"))
    assert model_row.split()[1:] == ["0" * 32, original, "DIFFERENT"]
    assert "likely reasons:" in result.out
    assert result.err.strip().splitlines()[-1] == (
        f"error: run {run_id} did not reproduce (differs: models/model.keras)"
    )
    assert client.get_run(run_id).data.tags["reproduced.result"] == "differs: models/model.keras"


def test_a_run_made_on_another_kernel_path_names_it_as_the_reason(
    recorded, reproduction, monkeypatch, call_main
):
    project, run_id, client = recorded
    then = "native (oneDNN rewrites on, oneDNN AVX512_CORE_AMX, NumPy and OpenBLAS: CPU's)"
    client.set_tag(run_id, "kernels.path", then)
    client.set_tag(run_id, "dvc.md5.models/model.keras", "0" * 32)  # its bits, not ours
    here = json.loads((project / "metrics" / "run.json").read_text())["kernel_path"]
    rerun = dict(reproduction.reproduced) | {"kernels.path": here}
    monkeypatch.setattr(reproduce, "rerun", lambda *args: rerun)
    result = call_main(reproduce.main, run_id)
    assert result.code == 1
    (reasons,) = [line for line in result.out.splitlines() if line.startswith("likely reasons:")]
    expected = f"another kernel path (mnist_dense/runtime/kernels.py): {then} then, {here} here"
    assert expected in reasons


def test_an_unknown_run_is_one_line(recorded, call_main):
    project, _, _ = recorded
    result = call_main(reproduce.main, "f" * 32)
    assert result.code == 1
    store = f"sqlite:///{project / 'mlflow.db'}?timeout=60"
    assert result.err.strip().splitlines() == [
        f"error: run {'f' * 32}: not in the MLflow store {store}"
    ]


def test_a_run_without_a_record_is_one_line(recorded, call_main):
    _, run_id, client = recorded
    bare = client.create_run(client.get_run(run_id).info.experiment_id).info.run_id
    result = call_main(reproduce.main, bare)
    assert result.code == 1
    (line,) = result.err.strip().splitlines()
    assert line.startswith(f"error: run {bare}: no record to reproduce it from (missing git.commit")


def test_a_commit_the_repository_lacks_is_one_line(recorded, call_main):
    _, run_id, client = recorded
    client.set_tag(run_id, "git.commit", "1" * 40)
    result = call_main(reproduce.main, run_id)
    assert result.code == 1
    assert result.err.strip().splitlines() == [
        f"error: run {run_id} was made at commit {'1' * 40}, which this repository does not "
        "hold (`git fetch` the branch it was made on)"
    ]


def test_an_unknown_run_names_a_store_with_a_password_masked(call_main, monkeypatch):
    """The team stack's store URI carries a password: the one line shows it as ***."""

    class NoRuns:
        def __init__(self, uri: str) -> None:
            self.uri = uri

        def get_run(self, run_id: str) -> None:
            raise MlflowException(f"Run '{run_id}' not found")

    uri = "postgresql://alice:s3cret@127.0.0.1:5432/mlflow"
    monkeypatch.setattr(reproduce.store, "connect", lambda: uri)
    monkeypatch.setattr(reproduce, "MlflowClient", NoRuns)
    result = call_main(reproduce.main, "f" * 32)
    assert result.code == 1
    assert "s3cret" not in result.err + result.out
    assert result.err.strip().splitlines() == [
        f"error: run {'f' * 32}: not in the MLflow store "
        "postgresql://alice:***@127.0.0.1:5432/mlflow"
    ]
