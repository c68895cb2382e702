"""`make reproduce RUN=<id>`: a run re-made from its MLflow record, end to end on tiny data."""

import json
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import sh


def reproduce(project, env, run_id: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "commands.reproduce", run_id],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def recorded(project):
    """The project, its environment, the run that made its model, and a client on its store."""
    project, env = project
    run_id = json.loads((project / "metrics" / "run.json").read_text())["mlflow_run_id"]
    return project, env, run_id, MlflowClient(f"sqlite:///{project / 'mlflow.db'}")


def test_a_run_reproduces_from_its_record(recorded):
    project, env, run_id, client = recorded
    lock, workspace_files = (
        (project / "dvc.lock").read_bytes(),
        sh("git", "status", "--porcelain", cwd=project),
    )
    runs_before = len(client.search_runs([client.get_run(run_id).info.experiment_id]))
    result = reproduce(project, env, run_id)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {
        line.split()[0]: line.split()[-1]
        for line in result.stdout.splitlines()[1:]
        if line[:1] in "dmt"
    }
    assert rows["models/model.keras"] == rows["test_accuracy"] == "identical", result.stdout
    assert set(rows) >= {"data/raw", "data/processed", "models/model.keras", "test_accuracy"}
    assert f"OK: run {run_id} reproduced" in result.stdout
    tags = client.get_run(run_id).data.tags
    assert tags["reproduced.result"] == "identical" and tags["reproduced.at"]
    # nothing of the user's changed, and no run was added
    assert (project / "dvc.lock").read_bytes() == lock
    assert sh("git", "status", "--porcelain", cwd=project) == workspace_files
    assert "worktree" not in sh("git", "worktree", "list", cwd=project).split("\n", 1)[-1]
    assert len(client.search_runs([client.get_run(run_id).info.experiment_id])) == runs_before


def test_a_run_whose_model_hash_was_changed_is_reported_as_differing(recorded):
    project, env, run_id, client = recorded
    key = "dvc.md5.models/model.keras"
    original = client.get_run(run_id).data.tags[key]
    client.set_tag(run_id, key, "0" * 32)
    try:
        result = reproduce(project, env, run_id)
    finally:
        client.set_tag(run_id, key, original)
    assert result.returncode == 1
    model_row = next(
        line for line in result.stdout.splitlines() if line.startswith("models/model.keras")
    )
    assert model_row.split()[1:] == ["0" * 32, original, "DIFFERENT"]
    assert "likely reasons:" in result.stdout
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: run {run_id} did not reproduce (differs: models/model.keras)"
    )
    assert client.get_run(run_id).data.tags["reproduced.result"] == "differs: models/model.keras"


def test_an_unknown_run_is_one_line(recorded):
    project, env, _, _ = recorded
    result = reproduce(project, env, "f" * 32)
    assert result.returncode == 1
    store = f"sqlite:///{project / 'mlflow.db'}?timeout=60"
    assert result.stderr.strip().splitlines() == [
        f"error: run {'f' * 32}: not in the MLflow store {store}"
    ]


def test_a_run_without_a_record_is_one_line(recorded):
    project, env, run_id, client = recorded
    bare = client.create_run(client.get_run(run_id).info.experiment_id).info.run_id
    result = reproduce(project, env, bare)
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: run {bare}: no record to reproduce it from (missing git.commit")


def test_a_commit_the_repository_lacks_is_one_line(recorded):
    project, env, run_id, client = recorded
    original = client.get_run(run_id).data.tags["git.commit"]
    client.set_tag(run_id, "git.commit", "1" * 40)
    try:
        result = reproduce(project, env, run_id)
    finally:
        client.set_tag(run_id, "git.commit", original)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: run {run_id} was made at commit {'1' * 40}, which this repository does not "
        "hold (`git fetch` the branch it was made on)"
    ]
