"""MLflow: one run per training, in the project's own store, tied to git and DVC.

The store is `sqlite:///<project root>/mlflow.db` with artifacts in `<project root>/mlartifacts`,
unless MLFLOW_TRACKING_URI says otherwise. The project root is DVC_ROOT when DVC sets it, so
experiments that DVC runs in a temporary copy still land in the real project's store.
"""

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import keras
import mlflow
import mlflow.tensorflow
import numpy as np
import tensorflow as tf
from mlflow.exceptions import MlflowException

from stages.params import Params, flatten


def project_root() -> Path:
    return Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / 'mlflow.db'}"


def _is_local_store(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:")) or "://" not in uri


def _experiment_id(name: str) -> str:
    """Find or create the experiment; a local store keeps its artifacts in the project."""
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if _is_local_store(mlflow.get_tracking_uri()):
        location = (project_root() / "mlartifacts").as_uri()
    try:
        return mlflow.create_experiment(name, artifact_location=location)
    except MlflowException:  # created meanwhile by a concurrent run
        return mlflow.get_experiment_by_name(name).experiment_id


def _git(*args: str) -> str | None:
    try:
        result = subprocess.run(["git", *args], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return result.stdout.strip()


def run_tags() -> dict[str, str]:
    """Tags that tie a run to the code and the DVC experiment that produced it."""
    tags = {}
    commit = _git("rev-parse", "HEAD")
    if commit:
        tags["mlflow.source.git.commit"] = commit
        tags["git.commit"] = commit
        tags["git.dirty"] = str(bool(_git("status", "--porcelain"))).lower()
    for variable, tag in (
        ("DVC_EXP_NAME", "dvc.exp_name"),
        ("DVC_EXP_BASELINE_REV", "dvc.baseline_rev"),
    ):
        if os.environ.get(variable):
            tags[tag] = os.environ[variable]
    return tags


@contextmanager
def training_run(params: Params) -> Iterator[str | None]:
    """Open the MLflow run of one training and log its params; yield its id (None: off)."""
    if not params.tracking.enabled:
        yield None
        return
    mlflow.set_tracking_uri(tracking_uri())
    experiment_id = _experiment_id(params.tracking.experiment)
    with mlflow.start_run(
        experiment_id=experiment_id,
        run_name=os.environ.get("DVC_EXP_NAME") or None,
        tags=run_tags(),
    ) as run:
        mlflow.log_params(flatten(params))
        yield run.info.run_id


class EpochLogger(keras.callbacks.Callback):
    """Log Keras' per-epoch figures to the active MLflow run, with step = epoch (from 1)."""

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if mlflow.active_run() is not None and logs:
            mlflow.log_metrics({name: float(value) for name, value in logs.items()}, step=epoch + 1)


def log_training(model: keras.Model, example: np.ndarray, seconds: float) -> None:
    """Log the wall time and the model, with a signature and input example for serving."""
    from mlflow.models import infer_signature

    mlflow.log_metric("train_seconds", seconds)
    signature = infer_signature(example, model.predict(example, verbose=0))
    keras.config.disable_interactive_logging()  # MLflow's own predict() would draw progress bars
    # mlflow.tensorflow handles Keras 3 models; mlflow.keras fails with an input example
    # (https://github.com/mlflow/mlflow/issues/16183)
    mlflow.tensorflow.log_model(
        model,
        name="model",
        signature=signature,
        input_example=example,
        pip_requirements=[f"keras=={keras.__version__}", f"tensorflow-cpu=={tf.__version__}"],
    )


def log_evaluation(run_id: str | None, metrics: dict[str, float], artifacts: list[Path]) -> None:
    """Add the test figures to the training's run; warn (not fail) if that run is gone."""
    if run_id is None:
        return
    mlflow.set_tracking_uri(tracking_uri())
    try:
        mlflow.get_run(run_id)
    except MlflowException:
        print(
            f"warning: MLflow run {run_id} is not in {tracking_uri()}; test metrics not "
            "logged there (`dvc repro -f train` starts a new run)"
        )
        return
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics(metrics)
        for path in artifacts:
            mlflow.log_artifact(str(path), artifact_path="evaluation")
