"""The records of a run: one MLflow run per training, tied to git, DVC and the environment.

The run is opened before any work (in the store tracking/store.py checks), and after that
training never waits on the store: everything it logs goes through a RunLog, which sends from
a background thread and keeps on disk what it could not send. Tracking turned off
(`tracking.enabled: false`) gives a RunLog that records nothing, so the stages log
unconditionally.
"""

import hashlib
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import mlflow
import numpy as np
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mnist_dense.config import (
    PROCESSED_DIR,
    RAW_CHECKSUMS,
    RAW_DIR,
    VAL_INDEX,
    Params,
    as_text,
    flatten,
)
from mnist_dense.data.checksums import as_lines, read_checksums
from mnist_dense.runtime import kernels
from mnist_dense.tracking import provenance, store
from mnist_dense.tracking.run_log import NullRunLog, RunLog

INTERRUPTED_WAIT_S = 5
PARENT_ENV = "MNIST_PARENT_RUN_ID"  # a search's run: the training's run becomes its child
TRIAL_ENV = "MNIST_TUNE_TRIAL"  # "<study>:<trial number>" of a search's trial


def run_tags(params: Params) -> dict[str, str]:
    """What a run needs to be reproduced: code, data, environment and kernel path, and the
    exact command."""
    tags = {"reproduce.command": provenance.reproduce_command(params)}
    tags |= provenance.environment(params.train.threads) | kernels.tags()
    git = provenance.git_state()
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
    for path, md5 in provenance.dvc_lock_outputs(stages=("download", "preprocess")).items():
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
    processed = provenance.dvc_lock_outputs(stages=("preprocess",)).get(str(PROCESSED_DIR))
    raw = provenance.dvc_lock_outputs(stages=("download",)).get(str(RAW_DIR))
    sha256 = {}
    if RAW_CHECKSUMS.is_file():
        sha256 = read_checksums(RAW_CHECKSUMS)
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
def training_run(params: Params) -> Iterator[RunLog | NullRunLog]:
    """Open the MLflow run of one training and log its params; yield its RunLog (a NullRunLog
    with tracking off).

    The run is created before training, so an unusable store stops the stage first; the
    RunLog is closed (sent, or kept on disk) after the block, whatever happens in it.
    """
    if not params.tracking.enabled:
        yield NullRunLog()
        return
    uri = store.connect()
    client = MlflowClient(uri)
    tags = run_tags(params)
    try:
        run = client.create_run(
            store.experiment_id(client, store.experiment_name()),
            run_name=tags.get("dvc.exp_name") or f"repro-{tags.get('git.commit', 'nogit')[:7]}",
            tags=tags,
        )
        client.log_batch(
            run.info.run_id,
            params=[mlflow.entities.Param(k, v) for k, v in logged_params(params).items()],
        )
    except MlflowException as error:
        raise store.store_error(uri, error) from None
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
def existing_run(run_id: str | None) -> Iterator[tuple[RunLog | NullRunLog, Run | None]]:
    """A RunLog into a run made earlier (the training's) and that run as the store holds it; a
    NullRunLog and None without tracking, or with a warning when the store does not hold the
    run. Connects first, so an unusable store stops the stage before work."""
    if run_id is None:
        yield NullRunLog(), None
        return
    uri = store.connect()
    try:
        recorded = MlflowClient(uri).get_run(run_id)
    except MlflowException as error:
        if error.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise store.store_error(uri, error) from None
        print(
            f"warning: MLflow run {run_id} is not in {store.masked(uri)}; test metrics not "
            "logged there (`dvc repro -f train` starts a new run)",
            file=sys.stderr,
        )
        yield NullRunLog(), None
        return
    log = RunLog(uri, run_id)
    try:
        yield log, recorded
    except KeyboardInterrupt:
        log.close(wait_s=INTERRUPTED_WAIT_S)
        raise
    log.close()


def validation_set() -> str:
    """Which digits a model was validated on, whatever their normalization: the raw training
    files' pinned sha256 and the validation images' indices into them (data/processed). Two
    models with the same value were chosen on the same images, so the registry compares them."""
    digest = hashlib.sha256()
    if RAW_CHECKSUMS.is_file():
        train = {
            name: sha
            for name, sha in read_checksums(RAW_CHECKSUMS).items()
            if name.startswith("train-")
        }
        digest.update(as_lines(train).encode())
    digest.update(np.load(PROCESSED_DIR / f"{VAL_INDEX}.npy", allow_pickle=False).tobytes())
    return digest.hexdigest()[:32]


def version_tags(recorded: Run, test_metrics: dict[str, float]) -> dict[str, str]:
    """What a registered version carries: test metrics, the validation accuracy and data it can
    be compared on (mnist_dense/tracking/registry.py), and where it came from."""
    tags = {name: str(value) for name, value in test_metrics.items()}
    tags["val_accuracy"] = str(recorded.data.metrics.get("val_accuracy", "nan"))
    tags["validation.digest"] = validation_set()
    for tag in ("git.commit", "dvc.exp_name"):
        if tag in recorded.data.tags:
            tags[tag] = recorded.data.tags[tag]
    tags["mlflow.run_name"] = recorded.info.run_name
    return tags
