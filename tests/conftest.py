"""Shared fixtures and helpers: tiny synthetic MNIST-format data, written as real gzipped IDX
files; a throwaway git + DVC copy of the project; commands, ports, and the CI rule on skips.

Each "digit" is a bright 7x7 block at a class-specific place, jittered and noisy: easy
enough for a small dense net to learn in a few epochs, so accuracy far above chance
proves the whole path works.
"""

import gzip
import hashlib
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import yaml

from mnist_dense.lineage import clean_environment, copy_project

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's bin: dvc, mlflow
DVC = str(BIN / "dvc")
SHARED_MIRROR = ROOT.parent / "shared" / "data" / "mnist"  # the real MNIST, beside the checkout
IN_CI = os.environ.get("CI", "") not in ("", "0", "false")
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@t",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@t",
}
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "t10k": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
TINY_PARAMS = {
    "preprocess": {"val_fraction": 0.2, "split": "stratified", "seed": 0},
    "train": {
        "hidden_units": [32],
        "activation": "relu",
        "dropout": 0.1,
        "optimizer": "adam",
        "fused_adam": True,
        "learning_rate": 0.01,
        "weight_decay": 0.0,
        "lr_schedule": "constant",
        "warmup_epochs": 0,
        "loss": "sparse_categorical_crossentropy",
        "label_smoothing": 0.0,
        "batch_norm": False,
        "batch_size": 32,
        "epochs": 3,
        "seed": 0,
        "threads": 1,
        "precision": "float32",
    },
    "augment": {
        "rotation": 0.0,
        "scale": 0.0,
        "shift": 0.0,
        "elastic_alpha": 0.0,
        "elastic_sigma": 4.0,
        "shear": 0.0,
        "stroke": 0.0,
        "low_res": 0.0,
    },
    "tracking": {"enabled": False},
}


def idx_bytes(array: np.ndarray) -> bytes:
    """Uncompressed IDX encoding of a uint8 array."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray) -> None:
    path.write_bytes(gzip.compress(idx_bytes(array), mtime=0))


def synthetic_digits(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = (np.arange(count) % 10).astype(np.uint8)
    rng.shuffle(labels)
    images = rng.integers(0, 60, size=(count, 28, 28)).astype(np.uint8)
    for image, label in zip(images, labels, strict=True):
        row = 3 + 11 * (label // 5) + rng.integers(-1, 2)
        col = 1 + 5 * (label % 5) + rng.integers(-1, 2)
        image[row : row + 7, max(col, 0) : col + 7] = 255
    return images, labels


def write_mnist(folder: Path, train_count: int = 300, test_count: int = 100) -> dict[str, str]:
    """Write the four MNIST files into `folder`; return their sha256 sums."""
    folder.mkdir(parents=True, exist_ok=True)
    counts = {"train": train_count, "t10k": test_count}
    for prefix, (images_name, labels_name) in FILES.items():
        images, labels = synthetic_digits(counts[prefix], seed=len(prefix))
        write_idx(folder / images_name, images)
        write_idx(folder / labels_name, labels)
    return {
        name: hashlib.sha256((folder / name).read_bytes()).hexdigest()
        for names in FILES.values()
        for name in names
    }


@pytest.fixture(scope="session")
def tiny_mirror(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A folder holding tiny MNIST files, and their checksums."""
    folder = tmp_path_factory.mktemp("mirror")
    return folder, write_mnist(folder)


def tiny_params(**overrides: dict) -> dict:
    """TINY_PARAMS with some keys changed, e.g. tiny_params(train={"epochs": 1})."""
    params = {section: dict(values) for section, values in TINY_PARAMS.items()}
    for section, values in overrides.items():
        params[section].update(values)
    return params


def write_params(folder: Path, **overrides: dict) -> dict:
    params = tiny_params(**overrides)
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return params


@pytest.fixture
def workdir(tmp_path, monkeypatch, tiny_mirror) -> Path:
    """A working folder set up like the project root: tiny raw data and tiny params.

    Stages read and write relative to the working folder, as under DVC.
    """
    mirror, _ = tiny_mirror
    shutil.copytree(mirror, tmp_path / "data" / "raw")
    write_params(tmp_path)
    monkeypatch.chdir(tmp_path)
    for variable in os.environ:
        if variable.startswith(("MLFLOW_", "DVC_")):
            monkeypatch.delenv(variable)
    return tmp_path


def sh(*args: str, cwd: Path, env: dict | None = None) -> str:
    """Run a command; fail the test with its output unless it succeeds. Its stdout + stderr."""
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


@contextmanager
def tracking_store(uri: str) -> Iterator[None]:
    """MLflow's global store set to `uri` for the block (models:/ and runs:/ URIs resolve
    through it), and set back after."""
    import mlflow

    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def make_project(folder: Path, mirror: Path, checksums: dict[str, str]) -> dict[str, str]:
    """A git + DVC copy of this project in `folder` whose download stage reads the tiny mirror,
    with tiny params (tracking on, MLflow experiment "e2e"); returns the environment to run it
    in. Nothing is run yet."""
    copy_project(ROOT, folder, skip=("metrics/", "dvc.lock"))
    (folder / "stages" / "mnist.sha256").write_text(
        "".join(f"{digest}  {name}\n" for name, digest in checksums.items())
    )
    write_params(folder, tracking={"enabled": True})
    env = clean_environment(
        PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}",
        MNIST_MIRROR=str(mirror),
        MLFLOW_EXPERIMENT_NAME="e2e",
        **GIT_IDENTITY,
    )
    sh("git", "init", "-q", "-b", "main", cwd=folder, env=env)
    sh("git", "add", "-A", cwd=folder, env=env)
    sh("git", "commit", "-q", "-m", "copy", cwd=folder, env=env)
    return env


def experiments(project: Path, env: dict) -> dict[str, dict]:
    """{name: data} of every experiment `dvc exp show` lists."""
    shown = json.loads(sh(DVC, "exp", "show", "--json", cwd=project, env=env))
    return {
        exp["name"]: exp["revs"][0]["data"]
        for rev in shown
        for exp in (rev.get("experiments") or [])
    }


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_mirror) -> tuple[Path, dict]:
    """make_project, committed and `dvc repro`'d: one per test module that asks for it."""
    folder = tmp_path_factory.mktemp("project")
    env = make_project(folder, *tiny_mirror)
    sh(DVC, "repro", cwd=folder, env=env)
    return folder, env


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In CI a skip is a failure: a green run must mean that every test ran."""
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where every test must run: {reason}"
