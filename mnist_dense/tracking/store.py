"""The MLflow store a run logs to: which one, and whether it is usable, checked before any work.

The store is `sqlite:///<project root>/mlflow.db` with artifacts in `<project root>/mlartifacts`,
unless MLFLOW_TRACKING_URI says otherwise; the experiment is MLFLOW_EXPERIMENT_NAME, else
`mnist-dense`. Neither changes a model, so neither is a param that would retrain it. An
unreachable server, a corrupt or locked SQLite file is one line, before any training.
"""

import os
import sqlite3
import urllib.error
import urllib.request
from contextlib import closing, suppress
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import mlflow
from filelock import FileLock
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mnist_dense.errors import PipelineError
from mnist_dense.tracking.provenance import project_root

DEFAULT_EXPERIMENT = "mnist-dense"
PROBE_TIMEOUT_S = 5
SQLITE_TIMEOUT_S = 60
# One request at a time, failing in seconds: RunLog retries on its own, without blocking anyone.
HTTP_SETTINGS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, or the project's SQLite store.

    Queued experiments write to that store from several processes at once; a writer waits
    up to SQLITE_TIMEOUT_S for another's lock instead of failing with "database is locked".
    """
    default = f"sqlite:///{project_root() / 'mlflow.db'}?timeout={SQLITE_TIMEOUT_S}"
    return os.environ.get("MLFLOW_TRACKING_URI") or default


def experiment_name() -> str:
    return os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT


def _sqlite_file(uri: str) -> tuple[Path, float] | None:
    """The database file of a sqlite:/// URI and its lock timeout; None for other stores."""
    if not uri.startswith("sqlite:///"):
        return None
    parsed = urlparse(uri)
    timeout = float(parse_qs(parsed.query).get("timeout", [SQLITE_TIMEOUT_S])[0])
    return Path(uri.removeprefix("sqlite:///").split("?", 1)[0]), timeout


def _check_sqlite(database: Path, timeout: float) -> None:
    """Fail with one line if the store is not a readable database or stays locked."""
    if not database.exists():
        return
    try:
        with closing(sqlite3.connect(database, timeout=timeout)) as connection:
            connection.execute("PRAGMA quick_check").fetchall()
            connection.execute("BEGIN IMMEDIATE")  # waits up to `timeout` for another writer
            connection.rollback()
    except sqlite3.OperationalError as error:
        if "locked" in str(error):
            raise PipelineError(
                f"{database}: locked by another process for over {timeout:g} s ({error}); "
                "let it finish or stop it, or set tracking.enabled: false in params.yaml"
            ) from None
        raise _unreadable(database, error) from None
    except sqlite3.DatabaseError as error:
        raise _unreadable(database, error) from None


def _unreadable(database: Path, error: Exception) -> PipelineError:
    return PipelineError(
        f"{database}: not a readable MLflow store ({error}); move it aside "
        f"(mv {database} {database}.broken) to start a new one, or set tracking.enabled: false "
        "in params.yaml"
    )


def connect() -> str:
    """Point MLflow at the store, creating it if needed; fail in seconds if it is unusable."""
    for variable, value in HTTP_SETTINGS.items():
        os.environ.setdefault(variable, value)
    uri = tracking_uri()
    if uri.startswith(("http://", "https://")):
        try:
            urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=PROBE_TIMEOUT_S)
        except urllib.error.HTTPError:
            pass  # it answered: reachable
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise PipelineError(
                f"MLflow tracking server {masked(uri)} is unreachable ({reason}); start it, fix "
                "MLFLOW_TRACKING_URI, or set tracking.enabled: false in params.yaml"
            ) from None
    mlflow.set_tracking_uri(uri)
    sqlite = _sqlite_file(uri)
    try:
        if sqlite:
            _check_sqlite(*sqlite)
            # Creating the tables is not safe to run twice at once (queue workers starting
            # together); one process does it while the others wait.
            with FileLock(f"{sqlite[0]}.lock"):
                mlflow.search_experiments(max_results=1)
        else:
            mlflow.search_experiments(max_results=1)
    except MlflowException as error:
        raise store_error(uri, error) from None
    return uri


def masked(uri: str) -> str:
    """A store URI as it may be printed or saved: any password in it replaced by ***."""
    parsed = urlparse(uri)
    if parsed.password is None:
        return uri
    return uri.replace(f":{parsed.password}@", ":***@", 1)


def scrubbed(text: str, uri: str) -> str:
    """`text` (an error message, which may quote `uri` with a path after it) with the password
    of `uri` replaced by *** wherever it appears."""
    password = urlparse(uri).password
    return text.replace(f":{password}@", ":***@") if password else text


def store_error(uri: str, error: Exception) -> PipelineError:
    """An MLflow or database error as one line naming the store."""
    message = (getattr(error, "message", None) or str(error)).strip().splitlines()[0]
    return PipelineError(f"MLflow store {masked(uri)}: {scrubbed(message, uri)}")


def is_local(uri: str) -> bool:
    """Whether the store is a file on this machine (SQLite), not a server."""
    return uri.startswith(("sqlite:", "file:")) or "://" not in uri


EXPERIMENT_TAGS = {
    # MLflow's own record of what the experiment holds (its UI otherwise assumes GenAI traces)
    "mlflow.experimentKind": "custom_model_development",
    "mlflow.note.content": (
        "Training runs of the dense MNIST pipeline (DVC stages download -> preprocess -> train "
        "-> evaluate). One run per training, named after its DVC experiment; params under the "
        "keys `dvc exp run -S` takes (train.epochs, ...), per-epoch loss, accuracy, val_loss and "
        "val_accuracy, test metrics, figures (learning curves, confusion matrix, misclassified "
        "digits), the data it saw (Dataset column: DVC digests) and the model.\n\n"
        "To compare: sort by test_accuracy; tick two or more runs and press Compare (params side "
        "by side, val_accuracy curves overlaid). The model to use is the registered model "
        "`mnist-dense`, alias `champion`."
    ),
}


def experiment_id(client: MlflowClient, name: str, artifact_location: str | None = None) -> str:
    """Find or create the experiment, with EXPERIMENT_TAGS; a local store keeps its artifacts
    in the project."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        if artifact_location is None and is_local(client.tracking_uri):
            artifact_location = (project_root() / "mlartifacts").as_uri()
        with suppress(MlflowException):  # created meanwhile by a concurrent run
            client.create_experiment(
                name, artifact_location=artifact_location, tags=EXPERIMENT_TAGS
            )
        experiment = client.get_experiment_by_name(name)
    for key, value in EXPERIMENT_TAGS.items():
        if experiment.tags.get(key) != value:
            client.set_experiment_tag(experiment.experiment_id, key, value)
    return experiment.experiment_id


def ui_url(base: str, experiment: str) -> str:
    """The address that opens an experiment on its runs table: MLflow 3's UI opens on its GenAI
    view unless the URL asks for the machine-learning one."""
    return f"{base.rstrip('/')}/#/experiments/{experiment}?workflowType=machine_learning"
