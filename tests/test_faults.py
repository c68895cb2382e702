"""Stages run as commands: one-line errors, exit codes, tracking faults and interruptions."""

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from stages.cli import Interrupted, PipelineError, run
from stages.paths import HISTORY, MODEL, PROCESSED_DIR, RUN_INFO, TRAIN_METRICS
from tests.conftest import ROOT, write_params


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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
    assert "Epoch 1" not in result.stdout
    assert not MODEL.exists() and not RUN_INFO.exists()


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
