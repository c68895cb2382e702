"""Tiny MNIST-format data for the tests and the emulated runs: real gzipped IDX files whose
"digits" are a bright 7x7 block at a class-specific place, jittered and noisy, easy enough for a
small dense network to learn in a few epochs, so accuracy far above chance proves the path works.
"""

import gzip
import struct
from pathlib import Path

import numpy as np

from mnist_dense.data.normalize import scale
from mnist_dense.tracking.provenance import file_sha256 as sha256

FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "t10k": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
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


def sevens_and_ones(count: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` uint8 7s (a top bar and a slanted stem, 3 pixels wide) and as many 1s."""
    seven = np.zeros((28, 28), np.uint8)
    seven[4:7, 7:21] = 255
    for row in range(7, 25):
        col = round(19 - (row - 7) * 0.4)
        seven[row, col - 1 : col + 2] = 255
    one = np.zeros((28, 28), np.uint8)
    one[4:25, 13:16] = 255
    images = np.stack([seven] * count + [one] * count)
    return images, np.array([7] * count + [1] * count, np.uint8)


def write_mnist(folder: Path, train_count: int = 300, test_count: int = 100) -> dict[str, str]:
    """Write the four MNIST files into `folder`; return their sha256 sums."""
    folder.mkdir(parents=True, exist_ok=True)
    counts = {"train": train_count, "t10k": test_count}
    for prefix, (images_name, labels_name) in FILES.items():
        images, labels = synthetic_digits(counts[prefix], seed=len(prefix))
        write_idx(folder / images_name, images)
        write_idx(folder / labels_name, labels)
    return {name: sha256(folder / name) for names in FILES.values() for name in names}


def write_processed(folder: Path, sizes: dict[str, int]) -> Path:
    """Synthetic digits as preprocess leaves them, in `folder`: x_<part>.npy (float32, scaled
    as every model reads them) and y_<part>.npy for each part of `sizes` ({"train": 512, ...}),
    each part seeded by its name's length. The small trainings of bench/emulated_cpus.py read
    them."""
    folder.mkdir(parents=True, exist_ok=True)
    for part, count in sizes.items():
        images, labels = synthetic_digits(count, seed=len(part))
        np.save(folder / f"x_{part}.npy", scale(images), allow_pickle=False)
        np.save(folder / f"y_{part}.npy", labels, allow_pickle=False)
    return folder
