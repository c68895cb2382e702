"""Stages run as commands: one-line errors, exit codes, tracking faults and interruptions."""

import json
import os
import signal
import sqlite3
import subprocess
import sys

import pytest

from mnist_dense.cli import Interrupted, PipelineError, run
from mnist_dense.paths import HISTORY, MODEL, PROCESSED_DIR, RUN_INFO, TEST_METRICS, TRAIN_METRICS
from tests.conftest import ROOT, free_port, write_params


def stage(name: str, env_extra: dict | None = None, timeout: float = 120):
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", f"stages.{name}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_bad_params_give_one_line_and_exit_1(workdir):
    write_params(workdir, train={"optimizer": "adamw2"})
    result = stage("preprocess")
    assert result.returncode == 1
    assert error_lines(result.stderr) == [
        "error: params.yaml: train.optimizer: input should be 'adam', 'adamw', 'sgd' or "
        "'rmsprop', got 'adamw2'"
    ]
    assert "Traceback" not in result.stderr
    assert not PROCESSED_DIR.exists()


def test_verbose_switch_shows_the_traceback(workdir):
    write_params(workdir, train={"epochs": -1})
    result = stage("preprocess", {"MNIST_VERBOSE": "1"})
    assert result.returncode == 1 and "Traceback" in result.stderr
    assert error_lines(result.stderr) == [
        "error: params.yaml: train.epochs: input should be greater than 0, got -1"
    ]


def test_os_errors_are_one_line_too(capsys):
    def full_disk():
        raise OSError(28, "No space left on device", "models/.tmp-1-model.keras")

    with pytest.raises(SystemExit) as exit_info:
        run(full_disk)
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == (
        "error: [Errno 28] No space left on device: 'models/.tmp-1-model.keras'\n"
    )


def test_pipeline_error_exit_code(capsys):
    def broken():
        raise PipelineError("data/raw/x.gz: empty file")

    with pytest.raises(SystemExit) as exit_info:
        run(broken)
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == "error: data/raw/x.gz: empty file\n"


def test_unreachable_tracking_server_fails_fast_before_training(workdir):
    uri = f"http://127.0.0.1:{free_port()}"
    write_params(workdir, tracking={"enabled": True})
    assert stage("preprocess").returncode == 0
    result = stage("train", {"MLFLOW_TRACKING_URI": uri}, timeout=60)
    assert result.returncode == 1
    (line,) = error_lines(result.stderr)
    assert f"MLflow tracking server {uri} is unreachable" in line
    assert "tracking.enabled: false" in line
    assert "epoch 1/" not in result.stdout
    assert not MODEL.exists() and not RUN_INFO.exists()


def test_the_unreachable_server_test_would_see_a_training(workdir):
    """The check above looks for the training loop's epoch lines: here they are."""
    assert stage("preprocess").returncode == 0
    assert "epoch 1/" in stage("train").stdout


def test_a_corrupt_mlflow_db_is_one_line_before_training(workdir):
    write_params(workdir, tracking={"enabled": True})
    assert stage("preprocess").returncode == 0
    (workdir / "mlflow.db").write_bytes(b"this is not an SQLite database" * 100)
    result = stage("train")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    (line,) = error_lines(result.stderr)
    assert f"{workdir / 'mlflow.db'}: not a readable MLflow store" in line
    assert "move it aside" in line and "tracking.enabled: false" in line
    assert "epoch 1/" not in result.stdout and not MODEL.exists()


def test_a_locked_mlflow_db_is_one_line_before_training(workdir):
    write_params(workdir, tracking={"enabled": True})
    assert stage("preprocess").returncode == 0
    database = workdir / "mlflow.db"
    uri = f"sqlite:///{database}?timeout=1"
    assert stage("train", {"MLFLOW_TRACKING_URI": uri}).returncode == 0  # creates the store
    holder = sqlite3.connect(database)
    holder.execute("BEGIN EXCLUSIVE")  # another process writing, and not letting go
    try:
        result = stage("train", {"MLFLOW_TRACKING_URI": uri})
    finally:
        holder.rollback()
        holder.close()
    assert result.returncode == 1 and "Traceback" not in result.stderr
    (line,) = error_lines(result.stderr)
    assert f"{database}: locked by another process for over 1 s" in line
    assert "epoch 1/" not in result.stdout


def test_evaluate_warns_when_the_training_run_is_not_in_the_store(workdir):
    write_params(workdir, tracking={"enabled": True})
    assert stage("preprocess").returncode == 0
    assert stage("train").returncode == 0
    RUN_INFO.write_text(json.dumps({"mlflow_run_id": "0" * 32, "train_seconds": 1.0}))
    result = stage("evaluate")
    assert result.returncode == 0, result.stderr
    assert f"warning: MLflow run {'0' * 32} is not in sqlite:///" in result.stderr
    assert "test metrics not logged there" in result.stderr
    assert TEST_METRICS.is_file()


def test_out_of_memory_is_one_line(workdir):
    assert stage("preprocess").returncode == 0
    write_params(workdir, train={"hidden_units": [2**31 - 1, 2**31 - 1]})
    result = stage("train")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    (line,) = error_lines(result.stderr)
    assert line.startswith("error: out of memory training [2147483647, 2147483647] hidden units")
    assert "lower train.hidden_units or train.batch_size" in line


def test_tracking_off_trains_without_a_server(workdir):
    uri = f"http://127.0.0.1:{free_port()}"
    assert stage("preprocess").returncode == 0
    result = stage("train", {"MLFLOW_TRACKING_URI": uri})
    assert result.returncode == 0, result.stderr
    assert json.loads(RUN_INFO.read_text())["mlflow_run_id"] is None
    assert stage("evaluate", {"MLFLOW_TRACKING_URI": uri}).returncode == 0


def test_damaged_model_file_is_a_clear_error(workdir):
    assert stage("preprocess").returncode == 0
    assert stage("train").returncode == 0
    MODEL.write_bytes(MODEL.read_bytes()[:1000])
    result = stage("evaluate")
    assert result.returncode == 1
    (line,) = error_lines(result.stderr)
    assert line.startswith(f"error: {MODEL}: not a loadable Keras model")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_interrupted_training_leaves_no_partial_output(workdir, signum):
    assert stage("preprocess").returncode == 0
    write_params(workdir, train={"epochs": 100000})
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "stages.train"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in process.stdout:
        if line.startswith("epoch 3/"):
            break
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode in (128 + signum, -signum)
    if signum != signal.SIGKILL:
        assert process.returncode == 128 + signum
        assert error_lines(stderr) == [
            f"error: interrupted ({signal.Signals(signum).name}); no partial output was left, "
            "run `dvc repro` to start again"
        ]
    for output in (MODEL, HISTORY, TRAIN_METRICS, RUN_INFO):
        assert not output.exists()
    leftovers = [p for folder in ("models", "metrics") for p in workdir.glob(f"{folder}/.tmp-*")]
    assert leftovers == []


def test_interrupted_is_a_keyboard_interrupt_with_its_signal():
    interrupt = Interrupted(signal.SIGTERM)
    assert isinstance(interrupt, KeyboardInterrupt) and interrupt.signum == signal.SIGTERM
