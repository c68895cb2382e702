import io

import numpy as np
import pandas as pd
from PIL import Image

from mnist_dense.figures import confusion_matrix, misclassified, training_curves


def png_size(figure) -> tuple[int, int]:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return Image.open(buffer).size


def test_training_curves_have_labelled_axes_and_both_series():
    history = pd.DataFrame(
        {
            "epoch": [1, 2, 3],
            "loss": [0.5, 0.3, 0.2],
            "val_loss": [0.4, 0.35, 0.3],
            "accuracy": [0.8, 0.9, 0.95],
            "val_accuracy": [0.85, 0.88, 0.9],
        }
    )
    figure = training_curves(history)
    loss, accuracy = figure.axes
    assert (loss.get_xlabel(), loss.get_ylabel()) == ("epoch", "cross-entropy loss")
    assert (accuracy.get_xlabel(), accuracy.get_ylabel()) == ("epoch", "accuracy")
    assert [line.get_label() for line in accuracy.get_lines()] == ["training", "validation"]
    assert list(accuracy.get_lines()[1].get_ydata()) == [0.85, 0.88, 0.9]
    assert png_size(figure)[0] > 800


def test_confusion_matrix_counts():
    labels = np.array([0, 1, 1, 2])
    figure = confusion_matrix(labels, np.array([0, 1, 2, 2]))
    axes = figure.axes[0]
    assert (axes.get_xlabel(), axes.get_ylabel()) == ("predicted digit", "true digit")
    assert "accuracy 75.00%" in axes.get_title()
    image = axes.get_images()[0].get_array()
    assert image.shape == (10, 10) and image[1, 2] == 1 and image[1, 1] == 1


def test_misclassified_grid_shows_only_wrong_digits():
    images = np.zeros((5, 784), np.float32)
    labels = np.array([0, 1, 2, 3, 4])
    probabilities = np.eye(10, dtype=np.float32)[[0, 7, 2, 8, 4]]
    figure = misclassified(images, labels, probabilities)
    titles = [axes.get_title() for axes in figure.axes if axes.get_title()]
    assert titles == ["#1: true 1\npred 7 (100%)", "#3: true 3\npred 8 (100%)"]
    assert "first 2 of 2" in figure._suptitle.get_text()
