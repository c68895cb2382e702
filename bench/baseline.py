"""The baseline: the seed notebook as a plain Keras script, nothing tuned.

Flatten(28x28) -> Dense hidden layers (ReLU) -> Dense(10, softmax), Adam, sparse categorical
cross-entropy, `model.fit` on NumPy arrays with the training and validation images of a
data/processed made with split=tail (the notebook's validation_split=0.2). The shape and the
schedule come from the command line, which bench/bench.py fills from presets.yaml.

    python bench/baseline.py DIR --hidden 128 32 --epochs 25 --batch-size 32 --learning-rate 0.001

Prints one JSON line: fit seconds and test accuracy.
"""

import argparse
import json
import time
from pathlib import Path

import keras
import numpy as np

# A plain script: nothing of the project's is imported (mnist_dense would set the kernel path,
# and the baseline runs as Keras does by default, on the CPU's own kernels)
SIDE, CLASSES = 28, 10

parser = argparse.ArgumentParser()
parser.add_argument("data", type=Path)
parser.add_argument("--hidden", type=int, nargs="+", required=True)
parser.add_argument("--epochs", type=int, required=True)
parser.add_argument("--batch-size", type=int, required=True)
parser.add_argument("--learning-rate", type=float, required=True)
args = parser.parse_args()


def load(name: str) -> np.ndarray:
    return np.load(args.data / f"{name}.npy", allow_pickle=False)


x_train, y_train = load("x_train").reshape(-1, SIDE, SIDE), load("y_train")
x_val, y_val = load("x_val").reshape(-1, SIDE, SIDE), load("y_val")
x_test, y_test = load("x_test").reshape(-1, SIDE, SIDE), load("y_test")

model = keras.Sequential(
    [
        keras.Input(shape=(SIDE, SIDE)),
        keras.layers.Flatten(),
        *(keras.layers.Dense(units, activation="relu") for units in args.hidden),
        keras.layers.Dense(CLASSES, activation="softmax"),
    ]
)
model.compile(
    optimizer=keras.optimizers.Adam(args.learning_rate),
    loss="sparse_categorical_crossentropy",
    metrics=["accuracy"],
)
started = time.perf_counter()
model.fit(
    x_train,
    y_train,
    validation_data=(x_val, y_val),
    batch_size=args.batch_size,
    epochs=args.epochs,
    verbose=0,
)
fit_seconds = time.perf_counter() - started
_, test_accuracy = model.evaluate(x_test, y_test, verbose=0)
print(json.dumps({"fit_seconds": fit_seconds, "test_accuracy": float(test_accuracy)}))
