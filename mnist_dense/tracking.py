"""MLflow: one run per training, in the project's own store, tied to git and DVC.

The store is `sqlite:///<project root>/mlflow.db` with artifacts in `<project root>/mlartifacts`,
unless MLFLOW_TRACKING_URI says otherwise; the experiment is MLFLOW_EXPERIMENT_NAME, else
`mnist-dense`. Neither changes a model, so neither is a param that would retrain it.

The store is checked before any work: an unreachable server, a corrupt or locked SQLite file is
one line. After that, training never waits on the store: everything a run logs goes through a
RunLog, which sends from a background thread and keeps on disk what it could not send.
"""

import json
import os
import sqlite3
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import closing, contextmanager, suppress
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import mlflow
from filelock import FileLock
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mnist_dense import lineage
from mnist_dense.cli import PipelineError
from mnist_dense.params import Params, as_text, flatten
from mnist_dense.paths import PROCESSED_DIR, RAW_CHECKSUMS, RAW_DIR
from mnist_dense.run_log import RunLog

DEFAULT_EXPERIMENT = "mnist-dense"
PROBE_TIMEOUT_S = 5
SQLITE_TIMEOUT_S = 60
INTERRUPTED_WAIT_S = 5
PARENT_ENV = "MNIST_PARENT_RUN_ID"  # a search's run: the training's run becomes its child
TRIAL_ENV = "MNIST_TUNE_TRIAL"  # "<study>:<trial number>" of a search's trial
# One request at a time, failing in seconds: RunLog retries on its own, without blocking anyone.
HTTP_SETTINGS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, or the project's SQLite store.

    Queued experiments write to that store from several processes at once; a writer waits
    up to SQLITE_TIMEOUT_S for another's lock instead of failing with "database is locked".
    """
    default = f"sqlite:///{lineage.project_root() / 'mlflow.db'}?timeout={SQLITE_TIMEOUT_S}"
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
                f"MLflow tracking server {uri} is unreachable ({reason}); start it, fix "
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


def store_error(uri: str, error: Exception) -> PipelineError:
    """An MLflow or database error as one line naming the store."""
    message = getattr(error, "message", None) or str(error)
    return PipelineError(f"MLflow store {uri}: {message.strip().splitlines()[0]}")


def _is_local_store(uri: str) -> bool:
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
        if artifact_location is None and _is_local_store(client.tracking_uri):
            artifact_location = (lineage.project_root() / "mlartifacts").as_uri()
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


def run_tags(params: Params) -> dict[str, str]:
    """What a run needs to be reproduced: code, data, environment and the exact command."""
    tags = {"reproduce.command": lineage.reproduce_command(params)}
    tags |= lineage.environment(params.train.threads)
    git = lineage.git_state()
    tags |= git
    if "git.commit" in git:
        tags["mlflow.source.git.commit"] = git["git.commit"]
    for variable, tag in (
        ("DVC_EXP_NAME", "dvc.exp_name"),
        ("DVC_EXP_BASELINE_REV", "dvc.baseline_rev"),
    ):
        if os.environ.get(variable):
            tags[tag] = os.environ[variable]
    if os.environ.get(PARENT_ENV):
        tags["mlflow.parentRunId"] = os.environ[PARENT_ENV]
    if os.environ.get(TRIAL_ENV):
        study, _, number = os.environ[TRIAL_ENV].rpartition(":")
        tags |= {"optuna.study": study, "optuna.trial": number}
    for path, md5 in lineage.dvc_lock_outputs(stages=("download", "preprocess")).items():
        tags[f"dvc.md5.{path}"] = md5
    return tags


DATASETS = {  # name in MLflow -> (the processed arrays, the input's context)
    "mnist-train": ("train", "training"),
    "mnist-validation": ("val", "validation"),
    "mnist-test": ("test", "test"),
}


def dataset_records(names: list[str], sizes: dict[str, int]) -> list[dict]:
    """MLflow dataset inputs for the named data sets, in DVC's terms: the digest is the md5
    dvc.lock records for data/processed, the source names the arrays, that digest, and the
    raw files' pinned sha256, so two runs on different data differ at a glance in the UI."""
    processed = lineage.dvc_lock_outputs(stages=("preprocess",)).get(str(PROCESSED_DIR))
    raw = lineage.dvc_lock_outputs(stages=("download",)).get(str(RAW_DIR))
    sha256 = {}
    if RAW_CHECKSUMS.is_file():
        sha256 = dict(
            reversed(line.split())
            for line in RAW_CHECKSUMS.read_text().splitlines()
            if line.strip()
        )
    records = []
    for name in names:
        split, context = DATASETS[name]
        source = {
            "uri": f"{PROCESSED_DIR}/x_{split}.npy, {PROCESSED_DIR}/y_{split}.npy",
            "dvc_md5": {str(PROCESSED_DIR): processed, str(RAW_DIR): raw},
            "raw_sha256": sha256,
        }
        records.append(
            {
                "name": name,
                "digest": processed or "not in dvc.lock",
                "source": json.dumps(source),
                "context": context,
                "profile": json.dumps({"num_rows": sizes[split]}),
            }
        )
    return records


def logged_params(params: Params) -> dict[str, str]:
    """Every param under its dotted key, its value written as `dvc exp run -S` takes it."""
    return {key: as_text(value) for key, value in flatten(params).items()}


@contextmanager
def training_run(params: Params) -> Iterator[RunLog | None]:
    """Open the MLflow run of one training and log its params; yield its RunLog (None: off).

    The run is created before training, so an unusable store stops the stage first; the
    RunLog is closed (sent, or kept on disk) after the block, whatever happens in it.
    """
    if not params.tracking.enabled:
        yield None
        return
    uri = connect()
    client = MlflowClient(uri)
    tags = run_tags(params)
    try:
        run = client.create_run(
            experiment_id(client, experiment_name()),
            run_name=tags.get("dvc.exp_name") or f"repro-{tags.get('git.commit', 'nogit')[:7]}",
            tags=tags,
        )
        client.log_batch(
            run.info.run_id,
            params=[mlflow.entities.Param(k, v) for k, v in logged_params(params).items()],
        )
    except MlflowException as error:
        raise store_error(uri, error) from None
    log = RunLog(uri, run.info.run_id)
    try:
        yield log
    except KeyboardInterrupt:  # Ctrl-C, SIGTERM: leave promptly
        log.finish("KILLED")
        log.close(wait_s=INTERRUPTED_WAIT_S)
        raise
    except BaseException:
        log.finish("FAILED")
        log.close()
        raise
    log.finish("FINISHED")
    log.close()


@contextmanager
def existing_run(run_id: str) -> Iterator[RunLog | None]:
    """A RunLog into a run made earlier (the training's); None, with a warning, when the store
    does not hold that run. Connects first, so an unusable store stops the stage before work."""
    uri = connect()
    try:
        recorded = MlflowClient(uri).get_run(run_id)
    except MlflowException as error:
        if error.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise store_error(uri, error) from None
        print(
            f"warning: MLflow run {run_id} is not in {uri}; test metrics not logged there "
            "(`dvc repro -f train` starts a new run)",
            file=sys.stderr,
        )
        yield None
        return
    log = RunLog(uri, run_id)
    log.recorded = recorded
    try:
        yield log
    except KeyboardInterrupt:
        log.close(wait_s=INTERRUPTED_WAIT_S)
        raise
    log.close()


def version_tags(recorded: mlflow.entities.Run, test_metrics: dict[str, float]) -> dict[str, str]:
    """What a registered version carries: test metrics, the validation accuracy and data it can
    be compared on (mnist_dense/registry.py), and where it came from."""
    tags = {name: str(value) for name, value in test_metrics.items()}
    tags["val_accuracy"] = str(recorded.data.metrics.get("val_accuracy", "nan"))
    tags["validation.digest"] = dataset_records(["mnist-validation"], {"val": 0})[0]["digest"]
    for tag in ("git.commit", "dvc.exp_name"):
        if tag in recorded.data.tags:
            tags[tag] = recorded.data.tags[tag]
    tags["mlflow.run_name"] = recorded.info.run_name
    return tags
