"""End to end: the real dvc.yaml on tiny data in a throwaway copy of the project."""

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient

from stages.model import load_model
from tests.conftest import ROOT, write_params

BIN = Path(sys.executable).parent


def sh(*args: str, cwd: Path, env: dict) -> str:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_mirror) -> tuple[Path, dict]:
    """A git + DVC copy of this project whose download stage points at tiny data."""
    mirror, checksums = tiny_mirror
    project = tmp_path_factory.mktemp("project")
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for name in filter(None, listed):
        if (ROOT / name).is_file() and not name.startswith(("metrics/", "dvc.lock")):
            (project / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, project / name)
    (project / "stages" / "mnist.sha256").write_text(
        "".join(f"{digest}  {name}\n" for name, digest in checksums.items())
    )
    write_params(project, tracking={"enabled": True, "experiment": "e2e"})
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "MLFLOW_"))}
    env |= {"PATH": f"{BIN}{os.pathsep}{env['PATH']}", "MNIST_MIRROR": str(mirror)}
    env |= {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    sh("git", "init", "-q", "-b", "main", cwd=project, env=env)
    sh("git", "add", "-A", cwd=project, env=env)
    sh("git", "commit", "-q", "-m", "copy", cwd=project, env=env)
    sh(str(BIN / "dvc"), "repro", cwd=project, env=env)
    return project, env


def runs(project: Path) -> list:
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("e2e")
    return client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])


def test_repro_writes_metrics_and_lock(project):
    project, _ = project
    metrics = json.loads((project / "metrics" / "evaluate.json").read_text())
    assert 0.5 < metrics["test_accuracy"] <= 1.0
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert list(lock["stages"]) == ["download", "preprocess", "train", "evaluate"]
    train_outs = {out["path"]: out for out in lock["stages"]["train"]["outs"]}
    assert set(train_outs) == {
        "models/model.keras",
        "metrics/train.json",
        "metrics/run.json",
        "metrics/history.csv",
    }
    assert all(len(out["md5"]) == 32 for out in train_outs.values())
    assert lock["stages"]["train"]["params"]["params.yaml"]["train"]["epochs"] == 3
    raw = lock["stages"]["download"]["outs"][0]
    assert raw["path"] == "data/raw" and raw["nfiles"] == 4


def test_mlflow_run_holds_params_curves_test_metrics_and_model(project, monkeypatch):
    project, _ = project
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'mlflow.db'}")
    (run,) = runs(project)[:1]
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    assert run.data.params["train.epochs"] == "3"
    assert run.data.params["train.hidden_units"] == "[32]"
    assert run.data.params["preprocess.split"] == "stratified"
    history = client.get_metric_history(run.info.run_id, "val_accuracy")
    assert [m.step for m in history] == [1, 2, 3]
    evaluate = json.loads((project / "metrics" / "evaluate.json").read_text())
    assert run.data.metrics["test_accuracy"] == pytest.approx(evaluate["test_accuracy"])
    assert run.data.metrics["test_loss"] == pytest.approx(evaluate["test_loss"])
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True
    ).stdout.strip()
    assert run.data.tags["git.commit"] == head
    assert run.info.artifact_uri.startswith((project / "mlartifacts").as_uri())
    figures = {a.path for a in client.list_artifacts(run.info.run_id, "figures")}
    assert figures == {
        "figures/training_curves.png",
        "figures/confusion_matrix.png",
        "figures/misclassified.png",
    }
    model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    assert model.metadata.signature is not None
    run_info = json.loads((project / "metrics" / "run.json").read_text())
    assert run_info["mlflow_run_id"] == run.info.run_id


def test_mlflow_run_records_what_reproduces_it(project):
    project, _ = project
    (run,) = runs(project)[:1]
    tags = run.data.tags
    assert tags["git.dirty"] in ("true", "false")
    for name in ("python", "tensorflow", "keras", "numpy", "platform", "cpu"):
        assert tags[f"env.{name}"]
    assert tags["env.keras"] == keras_version()
    lock = lock_outputs(project)
    for path in ("data/raw", "data/processed", "models/model.keras"):
        assert tags[f"dvc.md5.{path}"] == lock[path]
    command = shlex.split(tags["reproduce.command"])
    assert command[:3] == ["dvc", "exp", "run"]
    overrides = dict(arg.split("=", 1) for arg in command[4::2])
    assert overrides["train.epochs"] == "3" and overrides["train.hidden_units"] == "[32]"
    assert overrides["preprocess.split"] == "stratified"
    assert overrides["tracking.enabled"] == "true"
    assert len(overrides) == len(run.data.params)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_the_logged_model_is_served_over_http(project):
    """`mlflow models serve` on the run's model answers predictions for two test digits."""
    project, env = project
    (run,) = runs(project)[:1]
    x_test = np.load(project / "data" / "processed" / "x_test.npy", allow_pickle=False)[:2]
    y_test = np.load(project / "data" / "processed" / "y_test.npy", allow_pickle=False)[:2]
    port = free_port()
    env = env | {"MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"}
    command = [str(BIN / "mlflow"), "models", "serve", "-m", f"runs:/{run.info.run_id}/model"]
    command += ["--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    server = subprocess.Popen(
        command,
        cwd=project,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: stopping it stops its workers too
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, "mlflow models serve exited"
            try:
                urllib.request.urlopen(f"{url}/ping", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline, "the server did not answer /ping in 120 s"
                time.sleep(0.5)
        request = urllib.request.Request(
            f"{url}/invocations",
            data=json.dumps({"inputs": x_test.tolist()}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            served = np.array(json.load(response)["predictions"])
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    local = load_model(project / "models" / "model.keras").predict(x_test, verbose=0)
    assert served.shape == (2, 10)
    np.testing.assert_allclose(served, local, rtol=1e-5, atol=1e-6)
    assert list(served.argmax(axis=1)) == list(y_test)


def keras_version() -> str:
    import keras

    return keras.__version__


def test_second_repro_is_a_no_op(project):
    project, env = project
    out = sh(str(BIN / "dvc"), "repro", cwd=project, env=env)
    assert "Data and pipelines are up to date." in out


def lock_outputs(project: Path) -> dict[str, str]:
    stages = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    return {out["path"]: out["md5"] for stage in stages.values() for out in stage.get("outs", [])}


def test_forced_rerun_reproduces_every_output_bit_for_bit(project):
    project, env = project
    before, runs_before = lock_outputs(project), len(runs(project))
    sh(str(BIN / "dvc"), "repro", "--force", "--no-run-cache", cwd=project, env=env)
    after = lock_outputs(project)
    assert len(after) == 9
    assert after.pop("metrics/run.json") != before.pop("metrics/run.json")  # a new MLflow run
    assert after == before
    assert len(runs(project)) == runs_before + 1


def test_verify_repro_reports_identical_outputs(project):
    project, env = project
    out = sh(str(BIN / "python"), "-m", "scripts.verify_repro", cwd=project, env=env)
    assert "OK: all 7 outputs bit-identical to dvc.lock" in out
    assert out.count("identical") == 8  # 7 rows and the summary line


def test_verify_repro_flags_a_difference():
    from scripts.verify_repro import compare

    recorded = {"models/model.keras": "a" * 32, "metrics/run.json": "b" * 32}
    report, mismatches, compared = compare(recorded, {"models/model.keras": "c" * 32})
    assert (mismatches, compared) == (1, 1)
    assert "DIFFERENT" in report and "differs by nature" in report


def test_interrupted_repro_leaves_no_partial_output_and_the_next_repro_recovers(project):
    project, env = project
    before = lock_outputs(project)
    write_params(project, tracking={"enabled": True, "experiment": "e2e"}, train={"epochs": 10**5})
    process = subprocess.Popen(
        [str(BIN / "dvc"), "repro"],
        cwd=project,
        env={**env, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    for line in process.stdout:
        if line.startswith("epoch 3/"):
            break
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    output = process.communicate(timeout=120)[0]
    assert process.returncode != 0, output
    assert not (project / "models" / "model.keras").exists()
    assert not list(project.glob("**/.tmp-*"))
    write_params(project, tracking={"enabled": True, "experiment": "e2e"})
    sh(str(BIN / "dvc"), "repro", cwd=project, env=env)
    after = lock_outputs(project)
    after.pop("metrics/run.json"), before.pop("metrics/run.json")
    assert after == before
    assert "up to date" in sh(str(BIN / "dvc"), "status", cwd=project, env=env)


def experiments(project: Path, env: dict) -> dict[str, dict]:
    """{name: data} of every experiment `dvc exp show` lists."""
    shown = json.loads(sh(str(BIN / "dvc"), "exp", "show", "--json", cwd=project, env=env))
    return {
        exp["name"]: exp["revs"][0]["data"]
        for rev in shown
        for exp in (rev.get("experiments") or [])
    }


def test_exp_run_adds_an_experiment_and_a_tagged_mlflow_run(project):
    project, env = project
    runs_before = len(runs(project))
    sh(
        str(BIN / "dvc"),
        "exp",
        "run",
        "-S",
        "train.epochs=1",
        "-n",
        "one-epoch",
        cwd=project,
        env=env,
    )
    data = experiments(project, env)["one-epoch"]
    assert data["params"]["params.yaml"]["data"]["train"]["epochs"] == 1
    accuracy = data["metrics"]["metrics/evaluate.json"]["data"]["test_accuracy"]
    all_runs = runs(project)
    assert len(all_runs) == runs_before + 1
    latest = all_runs[-1]
    assert latest.data.tags["dvc.exp_name"] == "one-epoch"
    assert latest.info.run_name == "one-epoch"
    assert latest.data.metrics["test_accuracy"] == pytest.approx(accuracy)
    assert latest.data.params["train.epochs"] == "1"


def test_run_cache_restores_a_training_without_a_new_mlflow_run(project):
    """Back to a configuration already trained: DVC restores it, and it still points at the
    MLflow run that produced its model."""
    project, env = project
    dvc = str(BIN / "dvc")
    sh(dvc, "exp", "run", "-S", "train.epochs=2", "-n", "two-epochs", cwd=project, env=env)
    runs_before = len(runs(project))
    out = sh(dvc, "exp", "run", "-S", "train.epochs=1", "-n", "one-again", cwd=project, env=env)
    assert "Stage 'train' is cached - skipping run" in out
    assert len(runs(project)) == runs_before
    shown = experiments(project, env)
    run_id = shown["one-again"]["metrics"]["metrics/run.json"]["data"]["mlflow_run_id"]
    assert run_id == shown["one-epoch"]["metrics"]["metrics/run.json"]["data"]["mlflow_run_id"]
    assert {r.info.run_id: r.info.run_name for r in runs(project)}[run_id] == "one-epoch"


def test_queued_sweep_with_two_workers_loses_nothing(project):
    project, env = project
    dvc = str(BIN / "dvc")
    runs_before = {run.info.run_id for run in runs(project)}
    sh(
        dvc,
        "exp",
        "run",
        "--queue",
        "-S",
        "train.learning_rate=0.002,0.02",
        "-S",
        "train.batch_size=16,64",
        "-S",
        "train.epochs=1",
        cwd=project,
        env=env,
    )
    sh(dvc, "queue", "start", "-j", "2", cwd=project, env=env)
    deadline = time.monotonic() + 600
    while re.search(r"\b(Queued|Running)\b", sh(dvc, "queue", "status", cwd=project, env=env)):
        assert time.monotonic() < deadline, "the queue did not finish in 10 minutes"
        time.sleep(2)
    status = sh(dvc, "queue", "status", cwd=project, env=env)
    assert "Failed" not in status, status
    baseline = sh("git", "rev-parse", "HEAD", cwd=project, env=env).strip()
    new_runs = [run for run in runs(project) if run.info.run_id not in runs_before]
    assert len(new_runs) == 4
    assert all(run.data.tags["dvc.baseline_rev"] == baseline for run in new_runs)
    shown = experiments(project, env)
    for run in new_runs:
        name = run.data.tags["dvc.exp_name"]
        assert run.info.run_name == name
        data = shown[name]
        assert data["metrics"]["metrics/run.json"]["data"]["mlflow_run_id"] == run.info.run_id
        accuracy = data["metrics"]["metrics/evaluate.json"]["data"]["test_accuracy"]
        assert run.data.metrics["test_accuracy"] == pytest.approx(accuracy)
    swept = {
        (float(run.data.params["train.learning_rate"]), int(run.data.params["train.batch_size"]))
        for run in new_runs
    }
    assert swept == {(0.002, 16), (0.002, 64), (0.02, 16), (0.02, 64)}
