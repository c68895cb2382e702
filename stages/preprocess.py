"""Stage 2, preprocess: IDX files -> validated, scaled, split NumPy arrays in data/processed.

Pixels become float32 in [0, 1], flattened to 784. A validation set is split off the
60,000 training images, either stratified by class (seeded) or, to mirror Keras'
`validation_split`, as the last images in file order. Labels stay integers 0-9 (uint8);
the train stage encodes them as its loss needs. Optionally a share of the training 7s is
drawn crossed, as much of the world writes them (mnist_dense/data/glyphs.py), and every image is
deskewed and its pen width normalized (mnist_dense/data/normalize.py, the same function predict
applies).
"""

import numpy as np

from mnist_dense.config import (
    PROCESSED_DIR,
    RAW_DIR,
    VAL_INDEX,
    PreprocessParams,
    load_params,
)
from mnist_dense.data.glyphs import cross_sevens
from mnist_dense.data.mnist import load_images_and_labels, split_indices
from mnist_dense.data.normalize import normalize, scale
from mnist_dense.files import save_arrays
from mnist_dense.runtime.cli import run


def preprocess(params: PreprocessParams) -> dict[str, np.ndarray]:
    """Build and write the six arrays x/y_{train,val,test}, and the validation images'
    indices (what the registry compares models on: mnist_dense/tracking/runs.py); return the six."""
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
