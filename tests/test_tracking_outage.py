"""No fault loses a training: a real `mlflow server` stopped in the middle of one.

The training runs as `dvc repro` runs it (`python -m stages.train`), long enough per epoch
(about a second) for the server to be stopped at epoch 2 and started again an epoch later; no
epoch waits for it, and what could not be sent meanwhile reaches it once it answers again.
Killed outright (SIGKILL) while the server is down, it still loses no epoch: its journal is
sent by `make sync-runs`, which marks the run KILLED.
"""

import json
import os
import signal
import statistics
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from mnist_dense.config import HISTORY, MODEL, RUN_INFO, TRAIN_METRICS, load_params
from stages.preprocess import preprocess
from tests.conftest import python_module, write_params
from tests.servers import gaps, train_with_outage
from tooling.synthetic_mnist import write_mnist

EPOCHS = 20  # about 0.5-1 s each; the server comes back (10-30 s) before or after the last


def slow_training(folder: Path, epochs: int) -> Path:
    """A project folder whose training takes about a second per epoch, on synthetic data."""
    write_mnist(folder / "data" / "raw", train_count=10000, test_count=200)
    write_params(
        folder,
        train={"hidden_units": [512, 512], "epochs": epochs, "batch_size": 32},
        tracking={"enabled": True},
    )
    preprocess(load_params().preprocess)
    return folder


@pytest.fixture
def in_project(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_a_server_restart_mid_training_loses_nothing_and_holds_up_no_epoch(
    in_project, mlflow_server
):
    folder, server = slow_training(in_project, EPOCHS), mlflow_server
    process, stderr, epochs = train_with_outage(folder, server, restart_after=3, wait_s="60")
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
    assert list((folder / ".mlflow-pending").iterdir()) == []  # the journal went with the log


def test_an_outage_outlasting_the_training_keeps_the_log_for_later(in_project, mlflow_server):
    folder, server, epochs = slow_training(in_project, 5), mlflow_server, 5
    process, stderr, _ = train_with_outage(folder, server, restart_after=None, wait_s="2")
    assert process.returncode == 0, stderr  # the model is trained: DVC records it
    for output in (MODEL, HISTORY, TRAIN_METRICS, RUN_INFO):
        assert output.is_file(), output
    run_id = json.loads(RUN_INFO.read_text())["mlflow_run_id"]
    warning = next(line for line in stderr.splitlines() if "kept in" in line)
    assert warning.startswith(f"warning: MLflow store {server.uri} is unreachable;")
    assert f"of run {run_id} kept in {folder / '.mlflow-pending'}/" in warning
    assert warning.endswith("run `make sync-runs` when it is back")
    assert "Traceback" not in stderr

    server.start()
    synced = python_module("commands.sync_runs", cwd=folder)
    assert synced.returncode == 0, synced.stderr
    client = MlflowClient(server.uri)
    history = client.get_metric_history(run_id, "val_accuracy")
    assert [m.step for m in history] == list(range(1, epochs + 1))
    assert client.get_run(run_id).info.status == "FINISHED"
    figures = [a.path for a in client.list_artifacts(run_id, "figures")]
    assert figures == ["figures/training_curves.png"]
    assert list((folder / ".mlflow-pending").iterdir()) == []


def next_epoch(process: subprocess.Popen) -> int:
    """The number of the next epoch line the training prints (the stage's other lines skipped)."""
    for line in process.stdout:
        if line.startswith("epoch "):
            return int(line.split()[1].split("/")[0])
    raise AssertionError(f"the training ended: {process.stderr.read()}")


def test_a_training_killed_during_an_outage_loses_no_epoch_and_its_run_ends_killed(
    in_project, mlflow_server, start_stage
):
    """SIGKILL (as the out-of-memory killer sends) while the server is down: no `close()`
    runs, so only the journal can hold the epochs that were not sent."""
    started = time.monotonic()
    folder, server = in_project, mlflow_server
    write_mnist(folder / "data" / "raw", train_count=2000, test_count=50)  # ~0.05 s an epoch
    write_params(folder, train={"epochs": 1000}, tracking={"enabled": True})  # outlives the test
    preprocess(load_params().preprocess)
    process = start_stage(
        "train", {"MLFLOW_TRACKING_URI": server.uri, "MLFLOW_EXPERIMENT_NAME": "killed"}
    )
    while next_epoch(process) < 2:
        pass
    server.stop()  # the outage: the training goes on meanwhile
    for _ in range(2):  # two epochs ended while the server was down
        next_epoch(process)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL

    # every epoch the training reported (metrics/history.csv, written after each epoch's
    # metrics were logged) is in the journal, not sent yet
    history = pd.read_csv(HISTORY)
    assert len(history) >= 3
    (kept,) = (folder / ".mlflow-pending").iterdir()
    run_id = kept.name.split("-", 1)[1]
    server.start()
    client = MlflowClient(server.uri)
    before = [m.step for m in client.get_metric_history(run_id, "val_accuracy")]
    assert len(before) < len(history), "the outage held back no epoch: nothing was tested"
    assert client.get_run(run_id).info.status == "RUNNING"

    synced = python_module("commands.sync_runs", cwd=folder)
    assert synced.returncode == 0, synced.stderr
    assert f"then run {run_id} marked KILLED if still RUNNING" in synced.stdout
    logged = client.get_metric_history(run_id, "val_accuracy")
    # the journal may hold one epoch more than history.csv (killed between the two)
    assert [m.step for m in logged] == list(range(1, len(logged) + 1))
    assert len(logged) in (len(history), len(history) + 1)
    values = [m.value for m in logged[: len(history)]]
    assert values == pytest.approx(history["val_accuracy"].tolist())
    for name in ("loss", "accuracy", "val_loss"):
        assert len(client.get_metric_history(run_id, name)) == len(logged)
    assert client.get_run(run_id).info.status == "KILLED"
    assert list((folder / ".mlflow-pending").iterdir()) == []
    print(f"killed at epoch {len(history)}, {len(before)} epochs sent before the outage")
    print(f"test wall time {time.monotonic() - started:.1f} s")
