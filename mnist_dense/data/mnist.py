"""MNIST's images and labels as the raw files hold them, and the split of its training images
into training and validation."""

import math
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from mnist_dense.config import CLASSES, SIDE, PreprocessParams
from mnist_dense.data.idx import read_idx
from mnist_dense.errors import PipelineError


def load_images_and_labels(raw_dir: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """Read `<prefix>-images-idx3-ubyte.gz` and its labels; check they belong together."""
    images_path = raw_dir / f"{prefix}-images-idx3-ubyte.gz"
    labels_path = raw_dir / f"{prefix}-labels-idx1-ubyte.gz"
    images = read_idx(images_path, (None, SIDE, SIDE))
    labels = read_idx(labels_path, (None,))
    if len(images) != len(labels):
        raise PipelineError(
            f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels"
        )
    if len(labels) == 0:
        raise PipelineError(f"{labels_path}: holds no labels")
    if labels.max() >= CLASSES:
        raise PipelineError(f"{labels_path}: label {labels.max()} is not a digit 0-9")
    return images, labels


def split_indices(labels: np.ndarray, params: PreprocessParams) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the training and validation images."""
    count = len(labels)
    if params.split == "tail":  # exactly what keras' Model.fit(validation_split=...) holds out
        split_at = math.ceil(count * (1 - params.val_fraction))
        return np.arange(split_at), np.arange(split_at, count)
    try:
        return train_test_split(
            np.arange(count),
            test_size=params.val_fraction,
            stratify=labels,
            random_state=params.seed,
        )
    except ValueError as error:  # too few images of a class to stratify
        raise PipelineError(f"preprocess.val_fraction={params.val_fraction}: {error}") from None
