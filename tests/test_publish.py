"""Evaluate publishes the model itself: logged into the training's run as the served model, its
test metrics on it, registered once however often it is sent, and kept for `make sync-runs`
when the store does not take it."""

import json
import os
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from commands import sync_runs
from mnist_dense.config import MODEL, TEST_METRICS, load_params
from mnist_dense.tracking import publish
from mnist_dense.tracking.journal import RECORDS, pending_busy, pending_root
from mnist_dense.tracking.registry import MODEL_NAME
from stages import evaluate


def models_and_versions(client: MlflowClient, run_id: str) -> tuple[list, list]:
    experiment = client.get_run(run_id).info.experiment_id
    models = client.search_logged_models([experiment])
    return models, client.search_model_versions(f"name = '{MODEL_NAME}'")


def test_the_training_run_holds_no_model_until_evaluate_publishes_it(trained, capsys):
    run_id, client = trained
    assert models_and_versions(client, run_id) == ([], [])  # train logs no model
    evaluate.evaluate(load_params())
    models, versions = models_and_versions(client, run_id)
    assert [m.name for m in models] == ["model"] and models[0].source_run_id == run_id
    (version,) = versions
    assert version.run_id == run_id and version.source == f"models:/{models[0].model_id}"
    assert "registry: promoted: the first version" in capsys.readouterr().out
    # the test metrics on the logged model, against the test data set (MLflow's Models tab)
    metrics = {m.key: m for m in client.get_logged_model(models[0].model_id).metrics}
    test_metrics = json.loads(TEST_METRICS.read_text())
    assert {key: metrics[key].value for key in test_metrics} == test_metrics
    assert {metrics[key].dataset_name for key in test_metrics} == {"mnist-test"}
    stored = f"{models[0].artifact_location}/artifacts/kernels.txt"
    kernels_file = Path(mlflow.artifacts.download_artifacts(artifact_uri=stored))
    assert kernels_file.read_text() == "portable\n"  # the kernel path it computes on


def test_publishing_twice_adds_no_second_model_or_version(trained):
    run_id, client = trained
    evaluate.evaluate(load_params())
    record = publish.PublishRecord(key=publish.MODEL_KEY, **publish_record())
    files = {publish.MODEL_KEY: MODEL.read_bytes()}
    publish.send(client, run_id, record, files)  # a re-send, as make sync-runs after a timeout
    models, versions = models_and_versions(client, run_id)
    assert len(models) == 1 and len(versions) == 1


def publish_record() -> dict:
    return {
        "example": [0.0] * 784,
        "kernels": "portable",
        "metrics": {"test_accuracy": 0.5},
        "tags": {"val_accuracy": "0.5", "validation.digest": "x"},
        "dataset": {"name": "mnist-test", "digest": "x"},
    }


def test_a_store_that_refuses_the_model_keeps_it_for_sync_runs(
    trained, monkeypatch, capsys, call_main
):
    run_id, client = trained
    real_send = publish.send

    def store_down(*args):
        raise ConnectionError("Connection refused")

    monkeypatch.setattr(publish, "send", store_down)
    evaluate.evaluate(load_params())  # the stage itself succeeds: its outputs are written
    warning = capsys.readouterr().err
    assert f"did not take the model of run {run_id} (Connection refused); kept in" in warning
    assert warning.rstrip().endswith("run `make sync-runs` when it is back")
    (kept,) = pending_root().iterdir()
    saved = json.loads((kept / RECORDS).read_text())
    (record,) = saved["records"]
    assert record["kind"] == "publish" and (kept / "files" / publish.MODEL_KEY).is_file()
    assert pending_busy(kept) is None  # given up on: sync-runs may send it now
    assert models_and_versions(client, run_id) == ([], [])

    monkeypatch.setattr(publish, "send", real_send)  # the store is back
    result = call_main(sync_runs.main)
    assert result.code == 0, result.err
    assert "registry: promoted: the first version" in result.out
    models, versions = models_and_versions(client, run_id)
    assert len(models) == 1 and len(versions) == 1
    assert list(pending_root().iterdir()) == []


def test_the_model_is_on_disk_before_it_is_sent_and_gone_once_the_store_took_it(
    tmp_path, monkeypatch
):
    """A kill while publishing (minutes on a slow store) must not lose the model: it is kept
    for `make sync-runs` first, which leaves it alone while this process still runs."""
    monkeypatch.chdir(tmp_path)
    keras_file = tmp_path / "model.keras"
    keras_file.write_bytes(b"the model")
    seen = []

    def sending(client, run_id, record, files):
        (kept,) = pending_root().iterdir()
        saved = json.loads((kept / RECORDS).read_text())
        seen.append(saved)
        assert (kept / "files" / publish.MODEL_KEY).read_bytes() == b"the model"
        assert pending_busy(kept) == f"process {os.getpid()} is still writing it"

    monkeypatch.setattr(publish, "send", sending)
    publish.publish("http://127.0.0.1:9", "0" * 32, keras_file, publish_record())
    ((record,),) = [saved["records"] for saved in seen]
    assert record == {"kind": "publish", "key": publish.MODEL_KEY} | publish_record()
    assert list(pending_root().iterdir()) == []
