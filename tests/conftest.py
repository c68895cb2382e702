"""Fixtures: tiny synthetic MNIST-format data, written as real gzipped IDX files.

Each "digit" is a bright 7x7 block at a class-specific place, jittered and noisy: easy
enough for a small dense net to learn in a few epochs, so accuracy far above chance
proves the whole path works.
"""

import gzip
import hashlib
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SHARED_MIRROR = ROOT.parent / "shared" / "data" / "mnist"  # the real MNIST, beside the checkout
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "t10k": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
TINY_PARAMS = {
    "preprocess": {"val_fraction": 0.2, "split": "stratified", "seed": 0, "labels": "integer"},
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
    },
    "augment": {
        "rotation": 0.0,
        "scale": 0.0,
        "shift": 0.0,
        "elastic_alpha": 0.0,
        "elastic_sigma": 4.0,
    },
    "tracking": {"enabled": False, "experiment": "tests"},
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
    for variable in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"):
        monkeypatch.delenv(variable, raising=False)
    return tmp_path
