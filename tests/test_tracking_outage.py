"""No fault loses a training: a real `mlflow server` stopped in the middle of one.

The training runs as `dvc repro` runs it (`python -m stages.train`), long enough per epoch
(about a second) for the server to be stopped at epoch 2 and started again epochs later.
"""

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from mnist_dense.paths import HISTORY, MODEL, RUN_INFO, TRAIN_METRICS
from tests.conftest import ROOT, write_mnist, write_params
from tests.servers import MlflowServer, gaps, train_with_outage

EPOCHS = 40


@pytest.fixture
def slow_training(tmp_path, monkeypatch) -> Path:
    """A project folder whose training takes about a second per epoch, on synthetic data."""
    write_mnist(tmp_path / "data" / "raw", train_count=10000, test_count=200)
    write_params(
        tmp_path,
        train={"hidden_units": [512, 512], "epochs": EPOCHS, "batch_size": 32},
        tracking={"enabled": True},
    )
    monkeypatch.chdir(tmp_path)
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "stages.preprocess"], env=env, check=True)
    return tmp_path


@pytest.fixture
def server(tmp_path) -> MlflowServer:
    folder = tmp_path / "server"
    folder.mkdir()
    with MlflowServer(
        folder, f"sqlite:///{folder / 'store.db'}", str(folder / "artifacts")
    ) as running:
        yield running


def test_a_server_restart_mid_training_loses_nothing_and_holds_up_no_epoch(slow_training, server):
    process, stderr, epochs = train_with_outage(slow_training, server, restart_after=6, wait_s="60")
    assert process.returncode == 0, stderr
    assert [epoch for epoch, _ in epochs] == list(range(1, EPOCHS + 1))
    between = gaps(epochs)
    median = statistics.median(between)
    # no epoch waited for the server: a restart costs seconds of wall time, an epoch ~1 s
    assert max(between) < 2.5 * median + 0.5, f"gaps {between}, median {median:.2f} s"
    run_id = json.loads(RUN_INFO.read_text())["mlflow_run_id"]
    client = MlflowClient(server.uri)
    for name in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert [m.step for m in client.get_metric_history(run_id, name)] == list(
            range(1, EPOCHS + 1)
        )
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert "train_seconds" in run.data.metrics
    assert [a.path for a in client.list_artifacts(run_id, "figures")] == [
        "figures/training_curves.png"
    ]
    assert [m.name for m in client.search_logged_models([run.info.experiment_id])] == ["model"]
    assert not (slow_training / ".mlflow-pending").exists()


def test_an_outage_outlasting_the_training_keeps_the_log_for_later(slow_training, server):
    process, stderr, _ = train_with_outage(slow_training, server, restart_after=None, wait_s="2")
    assert process.returncode == 0, stderr  # the model is trained: DVC records it
    for output in (MODEL, HISTORY, TRAIN_METRICS, RUN_INFO):
        assert output.is_file(), output
    run_id = json.loads(RUN_INFO.read_text())["mlflow_run_id"]
    warning = next(line for line in stderr.splitlines() if "kept in" in line)
    assert warning.startswith(f"warning: MLflow store {server.uri} is unreachable;")
    assert f"of run {run_id} kept in {slow_training / '.mlflow-pending'}/" in warning
    assert warning.endswith("run `make sync-runs` when it is back")
    assert "Traceback" not in stderr

    server.start()
    synced = subprocess.run(
        [sys.executable, "-m", "commands.sync_runs"],
        cwd=slow_training,
        env=os.environ | {"PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert synced.returncode == 0, synced.stderr
    client = MlflowClient(server.uri)
    history = client.get_metric_history(run_id, "val_accuracy")
    assert [m.step for m in history] == list(range(1, EPOCHS + 1))
    assert client.get_run(run_id).info.status == "FINISHED"
    assert [
        m.name for m in client.search_logged_models([client.get_run(run_id).info.experiment_id])
    ] == ["model"]
    assert list((slow_training / ".mlflow-pending").iterdir()) == []
