"""Stages run as commands: one-line errors, exit codes, tracking faults and interruptions.

The messages are checked in process (`call_main`: the stage's main as mnist_dense.runtime.cli.run
runs it); one test per stage also runs it as its own process, for the real exit code.
"""

import json
import signal
import sqlite3

import pandas as pd
import pytest

from mnist_dense.config import (
    HISTORY,
    MODEL,
    PROCESSED_DIR,
    RUN_INFO,
    TEST_METRICS,
    TRAIN_METRICS,
    load_params,
)
from mnist_dense.errors import PipelineError
from mnist_dense.files import remove_stale_temporaries
from mnist_dense.runtime.cli import Interrupted, run
from stages import download, evaluate, preprocess, train
from tests.conftest import write_params
from tooling.processes import free_port


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_bad_params_give_one_line_and_exit_1(workdir, run_stage):
    write_params(workdir, train={"optimizer": "adamw2"})
    result = run_stage("preprocess")
    assert result.returncode == 1
    assert error_lines(result.stderr) == [
        "error: params.yaml: train.optimizer: input should be 'adam', 'adamw', 'sgd' or "
        "'rmsprop', got 'adamw2'"
    ]
    assert "Traceback" not in result.stderr
    assert not PROCESSED_DIR.exists()


def test_a_refused_mirror_exits_1_with_one_line(workdir, run_stage):
    result = run_stage("download", {"MNIST_MIRROR": "http://example.org/mnist"})
    assert result.returncode == 1
    assert error_lines(result.stderr) == [
        "error: MNIST_MIRROR=http://example.org/mnist: expected a local folder or an https:// URL"
    ]
    assert "Traceback" not in result.stderr


def test_verbose_switch_shows_the_traceback(workdir, call_main, monkeypatch):
    write_params(workdir, train={"epochs": -1})
    monkeypatch.setenv("MNIST_VERBOSE", "1")
    result = call_main(preprocess.main)
    assert result.code == 1 and "Traceback" in result.err
    assert result.errors() == [
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


@pytest.fixture
def processed(workdir):
    preprocess.preprocess(load_params().preprocess)
    return workdir


def test_unreachable_tracking_server_fails_fast_before_training(processed, call_main, monkeypatch):
    uri = f"http://127.0.0.1:{free_port()}"
    write_params(processed, tracking={"enabled": True})
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    result = call_main(train.main)
    assert result.code == 1
    (line,) = result.errors()
    assert f"MLflow tracking server {uri} is unreachable" in line
    assert "tracking.enabled: false" in line
    assert "epoch 1/" not in result.out
    assert not MODEL.exists() and not RUN_INFO.exists()


def test_the_unreachable_server_test_would_see_a_training(processed, call_main):
    """The check above looks for the training loop's epoch lines: here they are."""
    assert "epoch 1/" in call_main(train.main).out


def test_a_corrupt_mlflow_db_is_one_line_before_training(processed, call_main):
    write_params(processed, tracking={"enabled": True})
    (processed / "mlflow.db").write_bytes(b"this is not an SQLite database" * 100)
    result = call_main(train.main)
    assert result.code == 1 and "Traceback" not in result.err
    (line,) = result.errors()
    assert f"{processed / 'mlflow.db'}: not a readable MLflow store" in line
    assert "move it aside" in line and "tracking.enabled: false" in line
    assert "epoch 1/" not in result.out and not MODEL.exists()


def test_a_locked_mlflow_db_is_one_line_before_training(processed, call_main, monkeypatch):
    write_params(processed, tracking={"enabled": True})
    database = processed / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{database}?timeout=1")
    assert call_main(train.main).code == 0  # creates the store
    holder = sqlite3.connect(database)
    holder.execute("BEGIN EXCLUSIVE")  # another process writing, and not letting go
    try:
        result = call_main(train.main)
    finally:
        holder.rollback()
        holder.close()
    assert result.code == 1 and "Traceback" not in result.err
    (line,) = result.errors()
    assert f"{database}: locked by another process for over 1 s" in line
    assert "epoch 1/" not in result.out


def test_evaluate_warns_when_the_training_run_is_not_in_the_store(processed, call_main):
    write_params(processed, tracking={"enabled": True})
    assert call_main(train.main).code == 0
    RUN_INFO.write_text(json.dumps({"mlflow_run_id": "0" * 32, "train_seconds": 1.0}))
    result = call_main(evaluate.main)
    assert result.code == 0, result.err
    assert f"warning: MLflow run {'0' * 32} is not in sqlite:///" in result.err
    assert "test metrics not logged there" in result.err
    assert TEST_METRICS.is_file()


def test_out_of_memory_is_one_line(processed, call_main, monkeypatch):
    valid = load_params()  # sizes this large are refused by params.yaml's bounds: set past them
    huge = valid.train.model_copy(update={"hidden_units": [2**31 - 1, 2**31 - 1]})
    monkeypatch.setattr(train, "load_params", lambda: valid.model_copy(update={"train": huge}))
    result = call_main(train.main)
    assert result.code == 1 and "Traceback" not in result.err
    (line,) = result.errors()
    assert line.startswith("error: out of memory training [2147483647, 2147483647] hidden units")
    assert "lower train.hidden_units or train.batch_size" in line


def test_tracking_off_trains_without_a_server(processed, call_main, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    result = call_main(train.main)
    assert result.code == 0, result.err
    assert json.loads(RUN_INFO.read_text())["mlflow_run_id"] is None
    assert call_main(evaluate.main).code == 0


def test_damaged_model_file_is_a_clear_error_and_exits_1(processed, call_main, run_stage):
    assert call_main(train.main).code == 0
    MODEL.write_bytes(MODEL.read_bytes()[:1000])
    result = run_stage("evaluate")
    assert result.returncode == 1
    (line,) = error_lines(result.stderr)
    assert line.startswith(f"error: {MODEL}: not a loadable Keras model")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_interrupted_training_leaves_no_partial_output(processed, signum, start_stage):
    write_params(processed, train={"epochs": 1000})
    process = start_stage("train")
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
    for output in (MODEL, TRAIN_METRICS, RUN_INFO):
        assert not output.exists()
    if signum == signal.SIGKILL and HISTORY.exists():  # no cleanup: the live curves so far
        assert pd.read_csv(HISTORY)["epoch"].tolist() == list(
            range(1, len(pd.read_csv(HISTORY)) + 1)
        )
    else:
        assert not HISTORY.exists()
    leftovers = [p for folder in ("models", "metrics") for p in processed.glob(f"{folder}/.tmp-*")]
    if signum == signal.SIGKILL:  # nothing runs after SIGKILL: a write it cut short stays
        assert all(p.name.startswith(f".tmp-{process.pid}-") for p in leftovers), leftovers
        for output in (MODEL, HISTORY, TRAIN_METRICS, RUN_INFO):
            remove_stale_temporaries(output)  # what the next write of each output does first
        leftovers = [p for p in leftovers if p.exists()]
    assert leftovers == []


def test_interrupted_is_a_keyboard_interrupt_with_its_signal():
    interrupt = Interrupted(signal.SIGTERM)
    assert isinstance(interrupt, KeyboardInterrupt) and interrupt.signum == signal.SIGTERM


def test_download_errors_name_the_file_in_process(workdir, call_main, monkeypatch, tmp_path):
    """The download stage's message for a mirror without the files, without a process."""
    monkeypatch.setenv("MNIST_MIRROR", str(tmp_path / "empty"))
    (tmp_path / "empty").mkdir()
    monkeypatch.setattr(download, "PUBLIC_MIRRORS", ())
    result = call_main(download.main)
    assert result.code == 1
    (line,) = result.errors()
    assert "could not fetch" in line and "not found in" in line
