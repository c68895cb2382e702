"""Pictures of a run: training curves, confusion matrix, misclassified digits.

Written as PNG outputs (DVC image plots) and logged to the MLflow run. Built on matplotlib's
object API (no pyplot state, no display needed), and saved without metadata that changes from
run to run, so the same params give the same bytes and DVC sees no change.
"""

import io

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from mnist_dense.config import CLASSES, SIDE

TRAIN_COLOR, VAL_COLOR = "tab:blue", "tab:orange"
DPI = 80


def png_bytes(figure: Figure) -> bytes:
    """The figure as PNG, byte for byte the same for the same figure (no software or date tag)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def training_curves(history: pd.DataFrame) -> Figure:
    """Loss and accuracy per epoch, training against validation."""
    figure = Figure(figsize=(11, 4.2), layout="constrained")
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    for axes, metric, label in (
        (loss_axes, "loss", "cross-entropy loss"),
        (accuracy_axes, "accuracy", "accuracy"),
    ):
        axes.plot(
            history["epoch"], history[metric], marker="o", ms=3, color=TRAIN_COLOR, label="training"
        )
        axes.plot(
            history["epoch"],
            history[f"val_{metric}"],
            marker="o",
            ms=3,
            color=VAL_COLOR,
            label="validation",
        )
        axes.set_xlabel("epoch")
        axes.set_ylabel(label)
        axes.set_title(f"{label.capitalize()} per epoch")
        axes.grid(alpha=0.3)
        axes.legend()
    loss_axes.set_yscale("log")
    figure.suptitle(f"Training curves ({len(history)} epochs)")
    return figure


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray) -> Figure:
    """Counts of true digit against predicted digit on the test set."""
    # imported here: the train stage draws curves only, and scikit-learn costs a second to load
    from sklearn.metrics import ConfusionMatrixDisplay

    figure = Figure(figsize=(7.5, 6.5), layout="constrained")
    axes = figure.subplots()
    ConfusionMatrixDisplay.from_predictions(
        labels,
        predicted,
        labels=range(CLASSES),
        ax=axes,
        cmap="Blues",
        colorbar=True,
        text_kw={"fontsize": 8},
    )
    axes.set_xlabel("predicted digit")
    axes.set_ylabel("true digit")
    accuracy = float(np.mean(labels == predicted))
    axes.set_title(f"Confusion matrix, test set ({len(labels)} images, accuracy {accuracy:.2%})")
    return figure


def misclassified(
    images: np.ndarray, labels: np.ndarray, probabilities: np.ndarray, limit: int = 40
) -> Figure:
    """A grid of the first `limit` wrongly classified test digits with true and predicted labels."""
    predicted = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(predicted != labels)[:limit]
    columns = 8
    rows = max(1, -(-len(wrong) // columns))
    figure = Figure(figsize=(columns * 1.35, rows * 1.6 + 0.6), layout="constrained")
    grid = np.atleast_1d(figure.subplots(rows, columns)).ravel()
    for axes in grid:
        axes.set_axis_off()
    for axes, index in zip(grid, wrong, strict=False):
        axes.imshow(images[index].reshape(SIDE, SIDE), cmap="gray_r", vmin=0, vmax=1)
        confidence = probabilities[index, predicted[index]]
        axes.set_title(
            f"#{index}: true {labels[index]}\npred {predicted[index]} ({confidence:.0%})",
            fontsize=8,
            color="tab:red",
        )
    total = int(np.sum(predicted != labels))
    figure.suptitle(f"Misclassified test digits: first {len(wrong)} of {total}")
    return figure
