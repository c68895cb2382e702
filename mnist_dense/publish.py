"""The evaluated model, published: logged into its run as the served model, its test metrics
recorded on it (MLflow's Models tab), registered, and the champion rule applied.

The evaluate stage calls `publish` itself, after the run's other records went out. Each step
first looks for what an earlier attempt left (the run's logged model, the run's version, its
decision), so publishing twice, as `make sync-runs` does after a timeout, adds nothing twice.
When the store does not take it, the whole step is kept in .mlflow-pending/ (one record, with
the model file) and `make sync-runs` publishes it once the store is back.
"""

import sys
import tempfile
import time
from pathlib import Path

import mlflow
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from mnist_dense import registry
from mnist_dense.cli import first_line
from mnist_dense.run_log import SYNC_COMMAND, save_pending
from mnist_dense.served_model import log_served_model
from mnist_dense.store import masked

MODEL_KEY = "0-model.keras"


def publish(uri: str, run_id: str, keras_file: Path, record: dict) -> None:
    """Publish the model of run `run_id`; `record` holds the input example, the kernel mode,
    the test metrics, the version's tags and the test data set ({"name", "digest"})."""
    files = {MODEL_KEY: Path(keras_file).read_bytes()}
    record = {"kind": "publish", "key": MODEL_KEY} | record
    try:
        send(MlflowClient(uri), run_id, record, files)
    except Exception as error:  # the store is down or refused: kept for make sync-runs
        folder = save_pending(uri, run_id, [record], files)
        print(
            f"warning: MLflow store {masked(uri)} did not take the model of run {run_id} "
            f"({first_line(error)}); kept in {folder}; run `{SYNC_COMMAND}` when it is back",
            file=sys.stderr,
            flush=True,
        )


def send(client: MlflowClient, run_id: str, record: dict, files: dict[str, bytes]) -> None:
    """Log, record and register one run's model (a pending record's sender, too)."""
    mlflow.set_tracking_uri(client.tracking_uri)  # MLflow resolves a version's source through it
    model_id = _logged_model(client, run_id)
    if model_id is None:
        with tempfile.TemporaryDirectory() as folder:
            local = Path(folder) / "model.keras"
            local.write_bytes(files[record["key"]])
            model_id = log_served_model(
                client.tracking_uri, run_id, local, record["example"], record["kernels"]
            )
    dataset = record["dataset"]
    now = int(time.time() * 1000)
    metrics = [
        Metric(name, float(value), now, 0, model_id=model_id, dataset_name=dataset["name"],
               dataset_digest=dataset["digest"])
        for name, value in record["metrics"].items()
    ]  # fmt: skip
    client.log_batch(run_id, metrics=metrics)  # the same values again: harmless
    decision = registry.register_and_gate(client, run_id, model_id, record["tags"])
    print(f"registry: {decision}", flush=True)


def _logged_model(client: MlflowClient, run_id: str) -> str | None:
    """The id of the model an earlier attempt logged into the run, if any."""
    experiment = client.get_run(run_id).info.experiment_id
    found = client.search_logged_models(
        [experiment], filter_string=f"source_run_id = '{run_id}' AND name = 'model'"
    )
    ready = [model for model in found if str(model.status).endswith("READY")]
    return ready[0].model_id if ready else None


SENDERS = {"publish": send}  # what make sync-runs sends of this module's pending records
