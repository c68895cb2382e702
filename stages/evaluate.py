"""Stage 4, evaluate: the trained model on the 10,000 test images, touched only here.

Writes metrics/evaluate.json (test accuracy, loss, macro F1), metrics/per_class.csv
(precision, recall, F1, support and errors per digit) and metrics/predictions.csv (actual and
predicted digit per test image, read by DVC's confusion-matrix plot), and logs them to the
MLflow run that trained the model; then publishes the model: the served model (with its image
preparation) logged into that run, its test metrics on it, registered, the champion rule
applied (mnist_dense/tracking/publish.py).
"""

import json
from pathlib import Path

import keras
import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, classification_report, f1_score, log_loss

from mnist_dense import figures
from mnist_dense.config import (
    CLASSES,
    CONFUSION_PNG,
    MISCLASSIFIED_PNG,
    MODEL,
    PER_CLASS,
    PREDICTIONS,
    PROCESSED_DIR,
    RUN_INFO,
    TEST_METRICS,
    Params,
    load_params,
)
from mnist_dense.errors import PipelineError
from mnist_dense.files import load_arrays, write_bytes, write_json, write_text
from mnist_dense.model.network import configure_threads, load_model, predict
from mnist_dense.runtime import kernels
from mnist_dense.runtime.cli import run
from mnist_dense.tracking import publish, runs


def score(labels: np.ndarray, probabilities: np.ndarray) -> tuple[dict, pd.DataFrame]:
    """Test metrics and the per-class table from true labels and predicted probabilities."""
    predicted = probabilities.argmax(axis=1)
    digits = list(range(CLASSES))
    metrics = {
        "test_accuracy": float(accuracy_score(labels, predicted)),
        "test_loss": float(log_loss(labels, probabilities, labels=digits)),
        "test_macro_f1": float(f1_score(labels, predicted, average="macro")),
    }
    report = classification_report(
        labels, predicted, labels=digits, output_dict=True, zero_division=0
    )
    per_class = pd.DataFrame([report[str(d)] for d in digits]).rename(columns={"f1-score": "f1"})
    per_class.insert(0, "digit", digits)
    per_class["support"] = per_class["support"].astype(int)
    per_class["errors"] = np.bincount(labels[predicted != labels], minlength=CLASSES)
    return metrics, per_class


def _training_run_id() -> str | None:
    """The MLflow run of the training (None: trained with tracking off)."""
    try:
        return json.loads(RUN_INFO.read_text())["mlflow_run_id"]
    except (OSError, ValueError, KeyError):
        raise PipelineError(f"{RUN_INFO}: missing or unreadable; run `dvc repro train`") from None


def _load(path: Path) -> keras.Model:
    if not path.is_file():
        raise PipelineError(f"{path}: missing; run `dvc repro train` to build it")
    try:
        return load_model(path)
    except Exception as error:  # Keras raises many kinds for a damaged file
        raise PipelineError(f"{path}: not a loadable Keras model ({error})") from None


def evaluate(params: Params) -> dict:
    kernels.require(params.train.kernels)  # the model computes here too
    configure_threads(params.train.threads)  # and splits its sums by the thread count
    with runs.existing_run(_training_run_id()) as (log, recorded):
        model = _load(MODEL)
        arrays = load_arrays(PROCESSED_DIR, ["x_test", "y_test"])
        labels = arrays["y_test"]
        probabilities = predict(model, arrays["x_test"])
        metrics, per_class = score(labels, probabilities)
        predictions = pd.DataFrame({"actual": labels, "predicted": probabilities.argmax(axis=1)})

        write_json(TEST_METRICS, metrics)
        write_text(PER_CLASS, per_class.to_csv(index=False))
        write_text(PREDICTIONS, predictions.to_csv(index=False))
        pictures = {
            CONFUSION_PNG: figures.confusion_matrix(labels, predictions["predicted"].values),
            MISCLASSIFIED_PNG: figures.misclassified(arrays["x_test"], labels, probabilities),
        }
        for path, picture in pictures.items():
            write_bytes(path, figures.png_bytes(picture))
        (test_set,) = runs.dataset_records(["mnist-test"], {"test": len(labels)})
        log.datasets([test_set])
        log.metrics(metrics)
        for path in (TEST_METRICS, PER_CLASS):
            log.file(path.read_bytes(), f"evaluation/{path.name}")
        for path in pictures:
            log.file(path.read_bytes(), f"figures/{path.name}")
    if recorded is not None:  # after the run's records, in the foreground
        publish.publish(
            log.uri,
            log.run_id,
            MODEL,
            {
                "example": arrays["x_test"][0].tolist(),
                "kernels": params.train.kernels,
                "metrics": metrics,
                "tags": runs.version_tags(recorded, metrics),
                "dataset": {"name": test_set["name"], "digest": test_set["digest"]},
            },
        )
    print(
        f"evaluate: test_accuracy {metrics['test_accuracy']:.4f}, "
        f"test_loss {metrics['test_loss']:.4f}"
    )
    return metrics


def main() -> None:
    evaluate(load_params())


if __name__ == "__main__":
    run(main)
