"""Secrets and reports: no password printed, saved in the clear or readable by others; no usage
report leaving the machine unless asked; requests of any size refused where they should be."""

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from commands import tune
from mnist_dense.files import private_folder, write_private
from mnist_dense.serving import served_model
from mnist_dense.tracking.journal import PendingError, pending_root, send_pending, unmasked
from mnist_dense.tracking.run_log import RunLog
from mnist_dense.tracking.store import HTTP_SETTINGS, masked
from tooling import browser
from tooling.processes import free_port


def test_a_password_in_a_store_uri_is_masked_wherever_it_is_shown():
    assert masked("postgresql://mlflow:s3cret@db:5432/mlflow") == (
        "postgresql://mlflow:***@db:5432/mlflow"
    )
    assert masked("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert masked("sqlite:////tmp/mlflow.db?timeout=60") == "sqlite:////tmp/mlflow.db?timeout=60"


def test_a_secret_file_is_its_owners_alone_from_the_start(tmp_path):
    previous = os.umask(0o022)
    try:
        folder = private_folder(tmp_path / "stack")
        write_private(folder / "stack.json", "{}")
    finally:
        os.umask(previous)
    assert folder.stat().st_mode & 0o777 == 0o700
    assert (folder / "stack.json").stat().st_mode & 0o777 == 0o600
    assert [p.name for p in folder.iterdir()] == ["stack.json"]  # no temporary left


def test_a_kept_log_holds_no_password_and_is_sent_only_to_the_same_store(
    workdir, monkeypatch, capsys
):
    for variable, value in HTTP_SETTINGS.items():  # as store.connect sets them for a stage
        monkeypatch.setenv(variable, value)
    uri = f"http://mlflow:s3cret@127.0.0.1:{free_port()}"  # nothing listens: the store is down
    log = RunLog(uri, "0" * 32)
    log.metrics({"val_accuracy": 0.5}, step=1)
    assert log.close(wait_s=0.5) is False
    warnings = capsys.readouterr().err
    assert "s3cret" not in warnings and "http://mlflow:***@127.0.0.1:" in warnings
    (kept,) = pending_root().iterdir()
    saved = json.loads((kept / "records.json").read_text())
    assert saved["uri"] == masked(uri) and "s3cret" not in (kept / "records.json").read_text()
    for path in (pending_root(), kept, kept / "files"):
        assert path.stat().st_mode & 0o777 == 0o700
    assert (kept / "records.json").stat().st_mode & 0o777 == 0o600
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:other@127.0.0.1:1")
    with pytest.raises(PendingError, match="set MLFLOW_TRACKING_URI to that store"):
        send_pending(kept)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert unmasked(saved["uri"]) == uri  # the password again, from the environment


def test_the_tuner_refuses_a_password_on_its_command_line(workdir, call_main):
    (workdir / "space.yaml").write_text("train.dropout: {low: 0.1, high: 0.2}\n")
    storage = "postgresql://mlflow:s3cret@127.0.0.1:5432/optuna"
    result = call_main(tune.main, "--space", "space.yaml", "--storage", storage)
    assert result.code == 1
    assert result.errors() == [
        "error: --storage: a URL with a password would be readable by any user of this machine "
        "(ps); put it in MNIST_TUNE_STORAGE instead (make -s team-env sets it)"
    ]


def test_the_served_model_refuses_an_image_over_its_size_limit():
    too_big = "A" * (served_model.MAX_IMAGE_CHARACTERS + 4)
    digits, errors = served_model.read_rows(pd.DataFrame({"image": [too_big]}))
    assert digits == [None]
    assert errors[0].startswith("row 0: image is 8,388,612 characters of base64, over the limit")


def test_chromium_keeps_its_sandbox_unless_run_as_root():
    assert ("--no-sandbox" in browser.FLAGS) == (os.geteuid() == 0)


@pytest.mark.parametrize(("switch", "disabled"), [({}, "true"), ({"MNIST_TELEMETRY": "1"}, None)])
def test_telemetry_is_off_in_every_process_unless_allowed(tmp_path, switch, disabled):
    """The entry point turns MLflow's usage reports off, for itself and what it starts."""
    probe = "import os, stages; print(os.environ.get('MLFLOW_DISABLE_TELEMETRY'))"
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_DISABLE_TELEMETRY",)}
    env.pop("DO_NOT_TRACK", None)
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env=env | switch,
        capture_output=True,
        text=True,
    )
    assert result.stdout.strip() == str(disabled), result.stderr
