"""Stage 3, train: fit the dense network on data/processed, deterministically.

Writes models/model.keras, the per-epoch history (metrics/history.csv, a DVC plot), the
final training figures (metrics/train.json) and, apart from those reproducible outputs,
metrics/run.json: the MLflow run id and wall time, which differ from run to run.
"""

import math
import time

import keras
import pandas as pd
import tensorflow as tf

from stages import tracking
from stages.cli import raise_if_interrupted, run
from stages.figures import training_curves
from stages.files import load_arrays, write_json, write_text
from stages.model import build_model, make_optimizer, save_model
from stages.params import Params, load_params
from stages.paths import HISTORY, MODEL, PROCESSED_DIR, RUN_INFO, TRAIN_METRICS

HISTORY_COLUMNS = ["loss", "accuracy", "val_loss", "val_accuracy"]
STEPS_PER_EXECUTION = 50  # fewer Python round trips per epoch; the same arithmetic


class StopOnSignal(keras.callbacks.Callback):
    """Stop training on Ctrl-C or SIGTERM even if TensorFlow swallowed the interrupt."""

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        raise_if_interrupted()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        raise_if_interrupted()


def make_deterministic(seed: int) -> None:
    """Same params and data -> same weights, bit for bit (on the same machine and libraries)."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def fit(params: Params, arrays: dict, callbacks: list) -> tuple[keras.Model, pd.DataFrame]:
    """Build, compile and fit the model; return it with its per-epoch history."""
    p = params.train
    make_deterministic(p.seed)
    model = build_model(p)
    steps_per_epoch = math.ceil(len(arrays["x_train"]) / p.batch_size)
    model.compile(
        optimizer=make_optimizer(p, steps_per_epoch),
        loss=p.loss,
        metrics=["accuracy"],
        steps_per_execution=STEPS_PER_EXECUTION,
    )
    result = model.fit(
        arrays["x_train"],
        arrays["y_train"],
        validation_data=(arrays["x_val"], arrays["y_val"]),
        batch_size=p.batch_size,
        epochs=p.epochs,
        shuffle=True,
        callbacks=callbacks,
        verbose=2,
    )
    history = pd.DataFrame(result.history)[HISTORY_COLUMNS]
    history.insert(0, "epoch", range(1, len(history) + 1))
    return model, history


def train(params: Params) -> keras.Model:
    arrays = load_arrays(PROCESSED_DIR, ["x_train", "y_train", "x_val", "y_val"])
    with tracking.training_run(params) as run_id:
        started = time.perf_counter()
        callbacks = [StopOnSignal(), *([tracking.EpochLogger()] if run_id else [])]
        model, history = fit(params, arrays, callbacks)
        seconds = time.perf_counter() - started
        save_model(model, MODEL)
        write_text(HISTORY, history.to_csv(index=False))
        final = history.iloc[-1]
        write_json(
            TRAIN_METRICS,
            {name: float(final[name]) for name in HISTORY_COLUMNS}
            | {"epochs": int(final["epoch"])},
        )
        if run_id:
            tracking.log_training(model, MODEL, arrays["x_val"][:2], seconds)
            tracking.log_figures({"training_curves": training_curves(history)})
        write_json(RUN_INFO, {"mlflow_run_id": run_id, "train_seconds": round(seconds, 2)})
    print(
        f"train: {len(history)} epochs in {seconds:.1f} s, "
        f"val_accuracy {final['val_accuracy']:.4f}, run {run_id}"
    )
    return model


def main() -> None:
    train(load_params())


if __name__ == "__main__":
    run(main)
