"""The digits the champion rule compares models on, and a model's accuracy on them measured
from its own weights.

The rule (tracking/registry.py) names its digits by `validation.digest` (the raw training
files' sha256 and the validation images' indices: tracking/runs.py, validation_set).
Here they are read from the raw files by those indices and scaled exactly as preprocess scales
them; each model then sees them normalized as it was trained (the normalization its .keras
file records), as preprocess gave them to it and as predict would. So the accuracy of a
candidate is the one its training measured, and a champion's is measured again from its
weights, whatever a tag on it says.
"""

from collections.abc import Callable
from pathlib import Path

import numpy as np

from mnist_dense.config import PROCESSED_DIR, RAW_DIR, SIDE, VAL_INDEX
from mnist_dense.data.idx import read_idx
from mnist_dense.data.normalize import normalize, read_normalization, scale


def validation_digits() -> tuple[np.ndarray, np.ndarray]:
    """The validation images as (n, 784) float32 in [0, 1], as drawn, and their labels."""
    images = read_idx(RAW_DIR / "train-images-idx3-ubyte.gz", (None, SIDE, SIDE))
    labels = read_idx(RAW_DIR / "train-labels-idx1-ubyte.gz", (None,))
    index = np.load(PROCESSED_DIR / f"{VAL_INDEX}.npy", allow_pickle=False)
    return scale(images[index]), labels[index]


def accuracy_scorer(kernel_mode: str) -> Callable[[Path], float]:
    """A function: a .keras file -> its accuracy on the validation digits, computed on
    `kernel_mode`'s path (train.kernels) when TensorFlow has not loaded yet."""
    from mnist_dense.runtime import kernels

    kernels.select(kernel_mode, strict=False)
    from mnist_dense.model.network import load_model, predict

    digits, labels = validation_digits()

    def accuracy(keras_file: Path) -> float:
        pixels = normalize(digits, read_normalization(keras_file))
        predicted = predict(load_model(keras_file), pixels).argmax(axis=1)
        return float(np.mean(predicted == labels))

    return accuracy
