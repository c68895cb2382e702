"""Deskewing and pen-width normalization (mnist_dense/data/normalize.py), in preprocess and
predict."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mnist_dense.config import AS_DRAWN, Normalization, PreprocessParams, TrainParams
from mnist_dense.data.normalize import (
    deskew,
    normalize,
    read_normalization,
    set_stroke_width,
    stroke_widths,
)
from mnist_dense.model.network import build_model, save_model
from mnist_dense.serving.digit_image import centre_of_mass, load_digit, to_mnist
from mnist_dense.serving.served_model import read_rows
from stages.preprocess import preprocess
from tests.conftest import TINY_PARAMS
from tooling.synthetic_mnist import synthetic_digits, write_idx

BOTH = Normalization(deskew=True, stroke_width=2.5)


def bar(slope: float, width: int = 3, top: int = 4, height: int = 20) -> np.ndarray:
    """A (28, 28) float32 bar `height` rows tall, leaning `slope` columns per row."""
    image = np.zeros((28, 28), np.float32)
    for row in range(top, top + height):
        left = round(13 + slope * (row - (top + height / 2)))
        image[row, left : left + width] = 1.0
    return image


def slope_of(image: np.ndarray) -> float:
    """Covariance of column and row over the variance of row: 0 for an upright digit."""
    rows, cols = np.indices(image.shape)
    cy, cx = centre_of_mass(image)
    weights = image / image.sum()
    return float((weights * (rows - cy) * (cols - cx)).sum() / (weights * (rows - cy) ** 2).sum())


@pytest.mark.parametrize("slope", [0.5, -0.3])
def test_deskew_straightens_a_slanted_bar_and_keeps_its_centre_of_mass(slope):
    slanted = bar(slope)
    straight = deskew(slanted.reshape(1, -1)).reshape(28, 28)
    assert abs(slope_of(slanted) - slope) < 0.05
    assert abs(slope_of(straight)) < 0.01
    assert np.allclose(centre_of_mass(straight), centre_of_mass(slanted), atol=1e-4)
    assert straight.sum() == pytest.approx(slanted.sum(), rel=1e-5)  # no ink lost or made

    def row_centres(image: np.ndarray) -> list[float]:
        return [centre_of_mass(image[row : row + 1])[1] for row in range(4, 24)]

    # every row's ink now in the same place, up to the bar's own staircase of whole pixels
    assert np.std(row_centres(slanted)) > 1.5 and np.std(row_centres(straight)) < 0.4


def test_deskew_leaves_an_upright_digit_as_it_is():
    upright = bar(0.0).reshape(1, -1)
    assert np.array_equal(deskew(upright), upright)


def test_a_thin_pen_gets_thicker_and_a_thick_one_thinner():
    thin, thick = bar(0.2, width=1), bar(0.2, width=5)
    images = np.stack([thin, thick]).reshape(2, -1)
    before = stroke_widths(images)
    after = stroke_widths(set_stroke_width(images, 3.0))
    assert before[0] < after[0] < 3.0 + 0.5 and 3.0 - 0.5 < after[1] < before[1]
    assert np.array_equal(set_stroke_width(images[:1], float(before[0])), images[:1])


def test_all_images_at_once_give_what_each_image_alone_gives():
    images, _ = synthetic_digits(40, seed=3)
    pixels = images.reshape(40, -1).astype(np.float32) / np.float32(255)
    pixels[:20] = np.stack([bar(s).ravel() for s in np.linspace(-0.6, 0.6, 20)])
    together = normalize(pixels, BOTH)
    one_by_one = np.concatenate([normalize(pixels[i : i + 1], BOTH) for i in range(40)])
    assert together.dtype == np.float32 and together.shape == (40, 784)
    assert np.array_equal(together, one_by_one)
    assert normalize(pixels, AS_DRAWN) is pixels


def mnist_style_bar() -> np.ndarray:
    """A binary slanted bar placed as MNIST (and predict) place a digit: 20 pixels tall,
    centre of mass at the field's centre; so predict's preparation redraws it exactly."""
    local = bar(0.4, width=3, top=0)[:20]
    local = local[:, local.any(axis=0)]
    cy, cx = centre_of_mass(local)
    field = np.zeros((28, 28), np.float32)
    top, left = round(14 - cy), round(14 - cx)
    field[top : top + 20, left : left + local.shape[1]] = local
    return field


def test_predict_and_preprocess_normalize_a_digit_identically(workdir, tmp_path):
    field = mnist_style_bar()
    digit = np.round(field * 255).astype(np.uint8)
    assert np.array_equal(to_mnist(field), field)  # predict's preparation alone keeps it
    test_images, test_labels = synthetic_digits(100, seed=4)
    test_images[0] = digit
    write_idx(workdir / "data" / "raw" / "t10k-images-idx3-ubyte.gz", test_images)
    write_idx(workdir / "data" / "raw" / "t10k-labels-idx1-ubyte.gz", test_labels)
    params = TINY_PARAMS["preprocess"] | {"deskew": True, "stroke_width": 2.5}
    preprocessed = preprocess(PreprocessParams(**params))["x_test"][0]
    png = tmp_path / "digit.png"
    Image.fromarray(255 - digit).save(png)  # dark ink on white paper, as a user has it
    predicted = load_digit(png, how=BOTH).ravel()
    served, errors = read_rows(pd.DataFrame({"pixels": [field.ravel().tolist()]}), BOTH)
    assert not np.array_equal(preprocessed, field.ravel())  # the normalization did something
    assert np.array_equal(predicted, preprocessed)
    assert errors == [None] and np.array_equal(served[0], preprocessed)


def test_the_model_file_records_its_normalization(tmp_path):
    model = build_model(TrainParams(**TINY_PARAMS["train"]))
    save_model(model, tmp_path / "deskewed.keras", BOTH)
    save_model(model, tmp_path / "as-drawn.keras")
    model.save(tmp_path / "older.keras")  # saved before models recorded it: as drawn
    assert read_normalization(tmp_path / "deskewed.keras") == BOTH
    for name in ("as-drawn.keras", "older.keras"):
        assert read_normalization(tmp_path / name) == AS_DRAWN
