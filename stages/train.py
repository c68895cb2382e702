"""Stage 3, train: fit the dense network on data/processed, deterministically.

Writes models/model.keras, the per-epoch history (metrics/history.csv, a DVC plot), the
final training figures (metrics/train.json) and, apart from those reproducible outputs,
metrics/run.json: the MLflow run id and wall time, which differ from run to run.
"""

import math
import time
from collections.abc import Callable

import keras
import pandas as pd
import tensorflow as tf

from stages import tracking
from stages.augment import Distort
from stages.cli import raise_if_interrupted, run
from stages.figures import training_curves
from stages.files import load_arrays, write_json, write_text
from stages.fit import EpochTrainer, configure_threads, run_epochs
from stages.model import build_model, make_loss, make_optimizer, save_model
from stages.params import Params, load_params
from stages.paths import HISTORY, MODEL, PROCESSED_DIR, RUN_INFO, TRAIN_METRICS

HISTORY_COLUMNS = ["loss", "accuracy", "val_loss", "val_accuracy"]


def make_deterministic(seed: int) -> None:
    """Same params and data -> same weights, bit for bit (on the same machine and libraries)."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def fit(
    params: Params, arrays: dict, on_epoch_end: Callable[[int, dict], None]
) -> tuple[keras.Model, pd.DataFrame]:
    """Build the model and train it; return it with its per-epoch history."""
    p = params.train
    configure_threads(p.threads)
    make_deterministic(p.seed)
    model = build_model(p)
    trainer = EpochTrainer(
        model,
        make_optimizer(p, steps_per_epoch=math.ceil(len(arrays["x_train"]) / p.batch_size)),
        make_loss(p),
        arrays["x_train"],
        arrays["y_train"],
        p.batch_size,
        p.seed,
        Distort(params.augment) if params.augment.enabled else None,
    )

    def after_epoch(epoch: int, figures: dict) -> None:
        raise_if_interrupted()  # in case TensorFlow swallowed a Ctrl-C mid-epoch
        on_epoch_end(epoch, figures)

    history = pd.DataFrame(
        run_epochs(trainer, (arrays["x_val"], arrays["y_val"]), p.epochs, after_epoch)
    )[HISTORY_COLUMNS]
    history.insert(0, "epoch", range(1, len(history) + 1))
    return model, history


def train(params: Params) -> keras.Model:
    arrays = load_arrays(PROCESSED_DIR, ["x_train", "y_train", "x_val", "y_val"])
    with tracking.training_run(params) as run_id:
        started = time.perf_counter()
        log_epoch = tracking.log_epoch if run_id else lambda epoch, figures: None
        model, history = fit(params, arrays, log_epoch)
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
