"""Stage 3, train: fit the dense network on data/processed, deterministically.

Writes models/model.keras, the per-epoch history (metrics/history.csv, a DVC plot, rewritten
after every epoch so `dvc plots show` follows a long training), the final validation figures
(metrics/train.json) and, apart from those reproducible outputs, metrics/run.json: the MLflow
run id, the wall time, the kernel path and the CPU's caches, which differ from run to run or
machine to machine.
"""

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mnist_dense.config import (
    CURVES_PNG,
    HISTORY,
    MODEL,
    PROCESSED_DIR,
    RUN_INFO,
    TRAIN_METRICS,
    load_params,
)
from mnist_dense.figures import png_bytes, training_curves
from mnist_dense.files import load_arrays, write_bytes, write_json, write_text
from mnist_dense.model import training
from mnist_dense.model.network import save_model
from mnist_dense.runtime import kernels
from mnist_dense.runtime.cli import run
from mnist_dense.tracking import runs
from mnist_dense.tracking.provenance import file_md5, machine_record

VALIDATION = ["val_accuracy", "val_loss"]  # metrics/train.json: what `dvc exp show` compares


def main() -> None:
    params = load_params()
    kernels.require(params.train.kernels)
    arrays = load_arrays(PROCESSED_DIR, ["x_train", "y_train", "x_val", "y_val"])
    epochs: list[dict[str, float]] = []
    with restored_on_failure(HISTORY), runs.training_run(params) as log:

        def on_epoch_end(epoch: int, scores: dict[str, float]) -> None:
            log.metrics(scores, step=epoch)
            epochs.append(scores)
            write_text(HISTORY, training.history_table(epochs).to_csv(index=False))  # live

        started = time.perf_counter()
        model, history, precision = training.train(params, arrays, on_epoch_end)
        seconds = time.perf_counter() - started

        save_model(model, MODEL, params.preprocess.normalization)
        write_bytes(CURVES_PNG, png_bytes(training_curves(history)))
        final = history.iloc[-1]  # the training set's figures stay in history.csv and MLflow
        write_json(TRAIN_METRICS, {name: float(final[name]) for name in VALIDATION})
        write_json(
            RUN_INFO,
            {"mlflow_run_id": log.run_id, "train_seconds": round(seconds, 2)} | machine_record(),
        )

        sizes = {"train": len(arrays["y_train"]), "val": len(arrays["y_val"])}
        log.datasets(runs.dataset_records(["mnist-train", "mnist-validation"], sizes))
        log.metrics({"train_seconds": seconds})
        log.tags({"env.precision": precision, f"dvc.md5.{MODEL}": file_md5(MODEL)})
        log.file(CURVES_PNG.read_bytes(), f"figures/{CURVES_PNG.name}")
    print(
        f"train: {len(history)} epochs in {seconds:.1f} s, "
        f"val_accuracy {final['val_accuracy']:.4f}, run {log.run_id}"
    )


@contextmanager
def restored_on_failure(path: Path) -> Iterator[None]:
    """On a failure or an interruption, put `path` back as it was (DVC removes a stage's
    outputs before it runs, but a run by hand would leave a half-written live history)."""
    previous = path.read_bytes() if path.is_file() else None
    try:
        yield
    except BaseException:
        if previous is None:
            path.unlink(missing_ok=True)
        else:
            write_bytes(path, previous)
        raise


if __name__ == "__main__":
    run(main)
