"""MLflow: one run per training, in the project's own store, tied to git and DVC.

The store is `sqlite:///<project root>/mlflow.db` with artifacts in `<project root>/mlartifacts`,
unless MLFLOW_TRACKING_URI says otherwise. The project root is DVC_ROOT when DVC sets it, so
experiments that DVC runs in a temporary copy still land in the real project's store.
"""

import hashlib
import os
import platform
import shlex
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import keras
import mlflow
import mlflow.tensorflow
import numpy as np
import tensorflow as tf
import yaml
from filelock import FileLock
from matplotlib.figure import Figure
from mlflow.exceptions import MlflowException

from stages.cli import PipelineError
from stages.params import Params, as_override, flatten

PROBE_TIMEOUT_S = 5
SQLITE_TIMEOUT_S = 60
LOCK_FILE = Path("dvc.lock")


def project_root() -> Path:
    return Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, or the project's SQLite store.

    Queued experiments write to that store from several processes at once; a writer waits
    up to SQLITE_TIMEOUT_S for another's lock instead of failing with "database is locked".
    """
    default = f"sqlite:///{project_root() / 'mlflow.db'}?timeout={SQLITE_TIMEOUT_S}"
    return os.environ.get("MLFLOW_TRACKING_URI") or default


def connect() -> str:
    """Point MLflow at the store, creating it if needed; fail in seconds if it is unreachable."""
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
    if uri.startswith("sqlite:///"):
        # Creating the tables is not safe to run twice at once (queue workers starting
        # together); one process does it while the others wait.
        database = uri.removeprefix("sqlite:///").split("?", 1)[0]
        with FileLock(f"{database}.lock"):
            mlflow.search_experiments(max_results=1)
    return uri


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


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def reproduce_command(params: Params) -> str:
    """`dvc exp run -S ...` setting every param to this run's value."""
    overrides = []
    for key, value in flatten(params).items():
        overrides += ["-S", as_override(key, value)]
    return shlex.join(["dvc", "exp", "run", *overrides])


def lock_hashes(stages: tuple[str, ...] = ("download", "preprocess")) -> dict[str, str]:
    """{output path: md5} of the given stages, as recorded in dvc.lock (empty without one)."""
    try:
        lock = yaml.safe_load(LOCK_FILE.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}
    stages_in_lock = lock.get("stages", {})
    return {
        out["path"]: out["md5"]
        for stage in stages
        for out in stages_in_lock.get(stage, {}).get("outs", [])
    }


def run_tags(params: Params) -> dict[str, str]:
    """What a run needs to be reproduced: code, data, environment and the exact command."""
    tags = {
        "reproduce.command": reproduce_command(params),
        "env.python": platform.python_version(),
        "env.tensorflow": tf.__version__,
        "env.keras": keras.__version__,
        "env.numpy": np.__version__,
        "env.platform": platform.platform(),
        "env.cpu": _cpu(),
        "env.cpu_count": str(os.cpu_count()),
    }
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
    for path, md5 in lock_hashes().items():
        tags[f"dvc.md5.{path}"] = md5
    return tags


@contextmanager
def training_run(params: Params) -> Iterator[str | None]:
    """Open the MLflow run of one training and log its params; yield its id (None: off)."""
    if not params.tracking.enabled:
        yield None
        return
    uri = connect()
    try:
        experiment_id = _experiment_id(params.tracking.experiment)
    except MlflowException as error:
        raise PipelineError(f"MLflow store {uri}: {error.message}") from None
    tags = run_tags(params)
    with mlflow.start_run(
        experiment_id=experiment_id,
        run_name=tags.get("dvc.exp_name") or f"repro-{tags.get('git.commit', 'nogit')[:7]}",
        tags=tags,
    ) as run:
        mlflow.log_params(flatten(params))
        yield run.info.run_id


def log_epoch(epoch: int, figures: dict[str, float]) -> None:
    """Log one epoch's loss, accuracy, val_loss and val_accuracy with step = epoch (from 1)."""
    mlflow.log_metrics(figures, step=epoch)


def file_md5(path: Path) -> str:
    """The md5 DVC records for a file."""
    digest = hashlib.md5()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def log_training(model: keras.Model, model_path: Path, example: np.ndarray, seconds: float) -> None:
    """Log the wall time, the model file's md5 and the model, with a signature and example."""
    from mlflow.models import infer_signature

    mlflow.log_metric("train_seconds", seconds)
    mlflow.set_tag(f"dvc.md5.{model_path}", file_md5(model_path))
    signature = infer_signature(example, keras.ops.convert_to_numpy(model(example)))
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


def log_figures(figures: dict[str, Figure]) -> None:
    """Log matplotlib figures as PNG files under `figures/` in the active run."""
    for name, figure in figures.items():
        mlflow.log_figure(figure, f"figures/{name}.png")


def log_evaluation(
    run_id: str | None, metrics: dict[str, float], artifacts: list[Path], figures: dict[str, Figure]
) -> None:
    """Add the test figures to the training's run; warn (not fail) if that run is gone.

    Call connect() first.
    """
    if run_id is None:
        return
    try:
        mlflow.get_run(run_id)
    except MlflowException:
        print(
            f"warning: MLflow run {run_id} is not in {mlflow.get_tracking_uri()}; test metrics "
            "not logged there (`dvc repro -f train` starts a new run)"
        )
        return
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics(metrics)
        for path in artifacts:
            mlflow.log_artifact(str(path), artifact_path="evaluation")
        log_figures(figures)
