"""Stage 2, preprocess: IDX files -> validated, scaled, split NumPy arrays in data/processed.

Pixels become float32 in [0, 1], flattened to 784. A validation set is split off the
60,000 training images, either stratified by class (seeded) or, to mirror Keras'
`validation_split`, as the last images in file order. Labels stay integers 0-9 (uint8);
the train stage encodes them as its loss needs. Optionally a share of the training 7s is
drawn crossed, as much of the world writes them (mnist_dense/glyphs.py), and every image is
deskewed and its pen width normalized (mnist_dense/normalize.py, the same function predict
applies).
"""

import math
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from mnist_dense.cli import PipelineError, run
from mnist_dense.files import save_arrays
from mnist_dense.glyphs import cross_sevens
from mnist_dense.idx import read_idx
from mnist_dense.normalize import normalize, scale
from mnist_dense.params import PreprocessParams, load_params
from mnist_dense.paths import PROCESSED_DIR, RAW_DIR, VAL_INDEX
from mnist_dense.shape import CLASSES, SIDE


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


def preprocess(params: PreprocessParams) -> dict[str, np.ndarray]:
    """Build and write the six arrays x/y_{train,val,test}, and the validation images'
    indices (what the registry compares models on: mnist_dense/tracking.py); return the six."""
    images, labels = load_images_and_labels(RAW_DIR, "train")
    test_images, test_labels = load_images_and_labels(RAW_DIR, "t10k")
    train_idx, val_idx = split_indices(labels, params)
    how = params.normalization
    train_images = cross_sevens(
        images[train_idx], labels[train_idx], params.crossed_sevens, params.seed
    )  # before normalizing: predict normalizes a crossed 7 with its bar
    arrays = {
        "x_train": normalize(scale(train_images), how),
        "y_train": labels[train_idx],
        "x_val": normalize(scale(images[val_idx]), how),
        "y_val": labels[val_idx],
        "x_test": normalize(scale(test_images), how),
        "y_test": test_labels,
    }
    save_arrays(PROCESSED_DIR, arrays | {VAL_INDEX: val_idx.astype(np.int64)})
    return arrays


def main() -> None:
    arrays = preprocess(load_params().preprocess)
    sizes = ", ".join(f"{name} {array.shape}" for name, array in arrays.items())
    print(f"preprocess: wrote {PROCESSED_DIR}: {sizes}")


if __name__ == "__main__":
    run(main)
