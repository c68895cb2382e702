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
from pathlib import Path

import mlflow
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from mnist_dense import registry
from mnist_dense.cli import first_line
from mnist_dense.run_log import SYNC_COMMAND, release, save_pending, this_process
from mnist_dense.served_model import WEIGHTS_TAG, log_served_model, sha256_of
from mnist_dense.store import masked
from mnist_dense.validation_digits import accuracy_scorer

MODEL_KEY = "0-model.keras"


def publish(uri: str, run_id: str, keras_file: Path, record: dict) -> None:
    """Publish the model of run `run_id`; `record` holds the input example, the kernel mode,
    the test metrics, the version's tags and the test data set ({"name", "digest"})."""
    files = {MODEL_KEY: Path(keras_file).read_bytes()}
    record = {"kind": "publish", "key": MODEL_KEY} | record
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
            f"({first_line(error)}); kept in {folder}; run `{SYNC_COMMAND}` when it is back",
            file=sys.stderr,
            flush=True,
        )
        return
    if kept is not None:
        shutil.rmtree(kept, ignore_errors=True)


def send(client: MlflowClient, run_id: str, record: dict, files: dict[str, bytes]) -> None:
    """Log, record and register one run's model (a pending record's sender, too)."""
    mlflow.set_tracking_uri(client.tracking_uri)  # MLflow resolves a version's source through it
    with tempfile.TemporaryDirectory() as folder:
        local = Path(folder) / "model.keras"
        local.write_bytes(files[record["key"]])
        model_id = _logged_model(client, run_id)
        if model_id is None:
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
        tags = record["tags"] | {WEIGHTS_TAG: sha256_of(local)}
        score = accuracy_scorer(record["kernels"])
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


SENDERS = {"publish": send}  # what make sync-runs sends of this module's pending records
