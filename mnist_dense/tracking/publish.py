"""The evaluated model, published: logged into its run as the served model, its test metrics
recorded on it (MLflow's Models tab), registered, and the champion rule applied.

The evaluate stage calls `publish` itself, after the run's other records went out. Each step
first looks for what an earlier attempt left (the run's logged model, the run's version, its
decision), so publishing twice, as `make sync-runs` does after a timeout, adds nothing twice.
The whole step is kept in .mlflow-pending/ (one record, with the model file, fsynced) before
it is sent, and removed once the store took it: when the store does not take it, or the
process is killed while publishing, `make sync-runs` publishes it once the store is back (it
leaves the record alone while this process still runs).
"""

import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import mlflow
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from mnist_dense.errors import first_line
from mnist_dense.serving.served_model import WEIGHTS_TAG, log_served_model, sha256_of
from mnist_dense.tracking import registry
from mnist_dense.tracking.journal import SYNC_COMMAND, release, save_pending, this_process
from mnist_dense.tracking.records import Kind, WithFile, register
from mnist_dense.tracking.store import masked, scrubbed
from mnist_dense.tracking.validation_digits import accuracy_scorer

MODEL_KEY = "0-model.keras"


@dataclass(frozen=True)
class PublishRecord(WithFile):
    """The whole step, as one record: `key` names the model file's bytes."""

    kind: ClassVar[str] = "publish"
    example: list[float]  # the input example logged with the model
    kernels: str  # the kernel path its numbers were computed on
    metrics: dict[str, float]  # its test metrics
    tags: dict[str, str]  # the version's tags
    dataset: dict[str, str]  # the test data set: {"name", "digest"}


def publish(uri: str, run_id: str, keras_file: Path, details: dict[str, Any]) -> None:
    """Publish the model of run `run_id`; `details` holds the input example, the kernel mode,
    the test metrics, the version's tags and the test data set (PublishRecord's fields)."""
    files = {MODEL_KEY: Path(keras_file).read_bytes()}
    record = PublishRecord(key=MODEL_KEY, **details)
    try:
        kept = save_pending(uri, run_id, [record], files, writer=this_process())
    except OSError as error:  # a full disk: publishing may still work
        kept = None
        print(
            f"warning: the model of run {run_id} could not be kept before publishing "
            f"({first_line(error)}); a kill while publishing loses it",
            file=sys.stderr,
            flush=True,
        )
    try:
        send(MlflowClient(uri), run_id, record, files)
    except Exception as error:  # the store is down or refused: kept for make sync-runs
        folder = kept or save_pending(uri, run_id, [record], files)
        release(folder)
        print(
            f"warning: MLflow store {masked(uri)} did not take the model of run {run_id} "
            f"({scrubbed(first_line(error), uri)}); kept in {folder}; run `{SYNC_COMMAND}` "
            "when it is back",
            file=sys.stderr,
            flush=True,
        )
        return
    if kept is not None:
        shutil.rmtree(kept, ignore_errors=True)


def send(
    client: MlflowClient,
    run_id: str,
    record: PublishRecord,
    files: dict[str, bytes],
) -> None:
    """Log, record and register one run's model: the publish kind's sender."""
    mlflow.set_tracking_uri(client.tracking_uri)  # MLflow resolves a version's source through it
    with tempfile.TemporaryDirectory() as folder:
        local = Path(folder) / "model.keras"
        local.write_bytes(files[record.key])
        model_id = _logged_model(client, run_id)
        if model_id is None:
            model_id = log_served_model(
                client.tracking_uri, run_id, local, record.example, record.kernels
            )
        dataset = record.dataset
        now = int(time.time() * 1000)
        metrics = [
            Metric(name, float(value), now, 0, model_id=model_id, dataset_name=dataset["name"],
                   dataset_digest=dataset["digest"])
            for name, value in record.metrics.items()
        ]  # fmt: skip
        client.log_batch(run_id, metrics=metrics)  # the same values again: harmless
        tags = record.tags | {WEIGHTS_TAG: sha256_of(local)}
        score = accuracy_scorer(record.kernels)
        decision = registry.register_and_gate(client, run_id, model_id, tags, local, score)
    print(f"registry: {decision}", flush=True)


def _logged_model(client: MlflowClient, run_id: str) -> str | None:
    """The id of the model an earlier attempt logged into the run, if any."""
    experiment = client.get_run(run_id).info.experiment_id
    found = client.search_logged_models(
        [experiment], filter_string=f"source_run_id = '{run_id}' AND name = 'model'"
    )
    ready = [model for model in found if str(model.status).endswith("READY")]
    return ready[0].model_id if ready else None


register(Kind(PublishRecord, send))  # so that make sync-runs sends kept publish records
