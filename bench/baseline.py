"""The baseline: the seed notebook as a plain Keras script, nothing tuned.

Flatten(28x28) -> Dense(128, relu) -> Dense(32, relu) -> Dense(10, softmax), Adam, sparse
categorical cross-entropy, batch 32, 25 epochs, `model.fit` on NumPy arrays with the 48,000
training and 12,000 validation images (the last 20 %, as the notebook's validation_split=0.2).

    python bench/baseline.py DATA_DIR      (DATA_DIR: a data/processed with split=tail)

Prints one JSON line: fit seconds and test accuracy.
"""

import json
import sys
import time
from pathlib import Path

import keras
import numpy as np

data = Path(sys.argv[1])


def load(name: str) -> np.ndarray:
    return np.load(data / f"{name}.npy", allow_pickle=False)


x_train, y_train = load("x_train").reshape(-1, 28, 28), load("y_train")
x_val, y_val = load("x_val").reshape(-1, 28, 28), load("y_val")
x_test, y_test = load("x_test").reshape(-1, 28, 28), load("y_test")

model = keras.Sequential(
    [
        keras.Input(shape=(28, 28)),
        keras.layers.Flatten(),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dense(32, activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ]
)
model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
started = time.perf_counter()
model.fit(x_train, y_train, validation_data=(x_val, y_val), batch_size=32, epochs=25, verbose=0)
fit_seconds = time.perf_counter() - started
_, test_accuracy = model.evaluate(x_test, y_test, verbose=0)
print(json.dumps({"fit_seconds": fit_seconds, "test_accuracy": float(test_accuracy)}))
