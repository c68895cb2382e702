"""Stage 3, train: fit the dense network on data/processed, deterministically.

Writes models/model.keras, the per-epoch history (metrics/history.csv, a DVC plot, rewritten
after every epoch so `dvc plots show` follows a long training), the final validation figures
(metrics/train.json) and, apart from those reproducible outputs, metrics/run.json: the MLflow
run id, the wall time, the kernel path and the CPU's caches, which differ from run to run or
machine to machine.
"""

import math
import time
from collections.abc import Callable

import keras
import pandas as pd
import tensorflow as tf

from mnist_dense import kernels, tracking
from mnist_dense.augment import Distort
from mnist_dense.cli import PipelineError, first_line, raise_if_interrupted, run
from mnist_dense.figures import png_bytes, training_curves
from mnist_dense.files import load_arrays, write_bytes, write_json, write_text
from mnist_dense.fit import EpochTrainer, run_epochs
from mnist_dense.model import (
    build_model,
    configure_threads,
    make_loss,
    make_optimizer,
    precision_policy,
    save_model,
)
from mnist_dense.params import Params, load_params
from mnist_dense.paths import CURVES_PNG, HISTORY, MODEL, PROCESSED_DIR, RUN_INFO, TRAIN_METRICS
from mnist_dense.provenance import file_md5, machine_record

HISTORY_COLUMNS = ["loss", "accuracy", "val_loss", "val_accuracy"]
VALIDATION = ["val_accuracy", "val_loss"]  # metrics/train.json: what `dvc exp show` compares
EpochCallback = Callable[[int, dict[str, float]], None]  # (epoch, its scores)


def make_deterministic(seed: int) -> None:
    """Same params and data -> same weights, bit for bit (on the same kernel path)."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def fit(
    params: Params, arrays: dict, on_epoch_end: EpochCallback, precision: str = "float32"
) -> tuple[keras.Model, pd.DataFrame]:
    """Build the model and train it; return it with its per-epoch history.

    `on_epoch_end(epoch, scores)` gets each epoch's loss, accuracy, val_loss, val_accuracy.
    """
    keras.mixed_precision.set_global_policy(precision)
    try:
        return _fit(params, arrays, on_epoch_end, precision)
    except (tf.errors.ResourceExhaustedError, MemoryError) as error:
        raise PipelineError(
            f"out of memory training {params.train.hidden_units} hidden units at batch "
            f"{params.train.batch_size} ({first_line(error, limit=160)}); "
            "lower train.hidden_units or train.batch_size"
        ) from None
    finally:
        keras.mixed_precision.set_global_policy("float32")


def _fit(
    params: Params, arrays: dict, on_epoch_end: EpochCallback, precision: str
) -> tuple[keras.Model, pd.DataFrame]:
    p = params.train
    configure_threads(p.threads)
    make_deterministic(p.seed)
    model = build_model(p, precision)
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

    def after_epoch(epoch: int, scores: dict[str, float]) -> None:
        raise_if_interrupted()  # in case TensorFlow swallowed a Ctrl-C mid-epoch
        on_epoch_end(epoch, scores)

    history = history_table(
        run_epochs(trainer, (arrays["x_val"], arrays["y_val"]), p.epochs, after_epoch)
    )
    return model, history


def history_table(epochs: list[dict[str, float]]) -> pd.DataFrame:
    """The per-epoch scores as metrics/history.csv holds them."""
    history = pd.DataFrame(epochs, columns=HISTORY_COLUMNS)
    history.insert(0, "epoch", range(1, len(history) + 1))
    return history


def train(params: Params) -> keras.Model:
    """Train, write the outputs and log the run. On a failure or an interruption the live
    history goes back to what it was before (DVC removes it before a stage runs)."""
    previous = HISTORY.read_bytes() if HISTORY.is_file() else None
    try:
        return _train(params)
    except BaseException:
        if previous is None:
            HISTORY.unlink(missing_ok=True)
        else:
            write_bytes(HISTORY, previous)
        raise


def _train(params: Params) -> keras.Model:
    kernels.require(params.train.kernels)
    arrays = load_arrays(PROCESSED_DIR, ["x_train", "y_train", "x_val", "y_val"])
    precision = precision_policy(params.train.precision)
    epochs: list[dict[str, float]] = []
    with tracking.training_run(params) as log:
        log.tags({"env.precision": precision})

        def on_epoch_end(epoch: int, scores: dict[str, float]) -> None:
            log.metrics(scores, step=epoch)
            epochs.append(scores)
            write_text(HISTORY, history_table(epochs).to_csv(index=False))  # live curves

        started = time.perf_counter()
        model, history = fit(params, arrays, on_epoch_end, precision)
        seconds = time.perf_counter() - started
        save_model(model, MODEL, params.preprocess.normalization)
        write_bytes(CURVES_PNG, png_bytes(training_curves(history)))
        final = history.iloc[-1]  # the training set's figures stay in history.csv and MLflow
        write_json(TRAIN_METRICS, {name: float(final[name]) for name in VALIDATION})
        sizes = {"train": len(arrays["y_train"]), "val": len(arrays["y_val"])}
        log.datasets(tracking.dataset_records(["mnist-train", "mnist-validation"], sizes))
        log.metrics({"train_seconds": seconds})
        log.tags({f"dvc.md5.{MODEL}": file_md5(MODEL)})
        log.file(CURVES_PNG.read_bytes(), f"figures/{CURVES_PNG.name}")
        write_json(
            RUN_INFO,
            {"mlflow_run_id": log.run_id, "train_seconds": round(seconds, 2)} | machine_record(),
        )
    print(
        f"train: {len(history)} epochs in {seconds:.1f} s, "
        f"val_accuracy {final['val_accuracy']:.4f}, run {log.run_id}"
    )
    return model


def main() -> None:
    train(load_params())


if __name__ == "__main__":
    run(main)
