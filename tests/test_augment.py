"""Training-time distortions: reproducible under the seed, and geometrically right."""

import numpy as np
import pytest
import tensorflow as tf

from mnist_dense.config import AugmentParams
from mnist_dense.model.augment import Distort, _bilinear

NONE = {"rotation": 0, "scale": 0, "shift": 0, "elastic_alpha": 0, "elastic_sigma": 4}
NONE |= {"shear": 0, "stroke": 0, "low_res": 0}
STRONG = AugmentParams(**NONE | {"rotation": 15, "scale": 0.15, "shift": 3, "elastic_alpha": 34})


def digits(count: int = 6) -> tf.Tensor:
    rng = np.random.default_rng(0)
    images = np.zeros((count, 28, 28), np.float32)
    for image in images:  # a bright bar somewhere in the middle of each
        top, left = rng.integers(8, 14, size=2)
        image[top : top + 10, left : left + 4] = 1.0
    return tf.constant(images.reshape(count, 784))


def test_the_same_seed_gives_the_same_distortions_and_another_seed_others():
    distort, images = Distort(STRONG), digits()
    first = distort(images, tf.constant([7, 3]))
    np.testing.assert_array_equal(first, Distort(STRONG)(images, tf.constant([7, 3])))
    assert not np.array_equal(first, distort(images, tf.constant([7, 4])))
    assert first.shape == (6, 784)
    assert float(tf.reduce_min(first)) >= 0 and float(tf.reduce_max(first)) <= 1


def test_no_distortion_leaves_the_images_as_they_are():
    still = AugmentParams(**NONE)
    assert not still.enabled and STRONG.enabled
    images = digits()
    np.testing.assert_array_equal(Distort(still)(images, tf.constant([1, 2])), images)


def test_bilinear_sampling_moves_pixels_and_fills_black_outside():
    images = digits(1)
    rows, cols = np.indices((28, 28), dtype=np.float32)
    # sampling each output pixel one row further down moves the picture up by one row
    up = _bilinear(images, tf.constant(rows.reshape(1, -1) + 1), tf.constant(cols.reshape(1, -1)))
    expected = np.vstack([images.numpy().reshape(28, 28)[1:], np.zeros((1, 28))])
    np.testing.assert_array_equal(up.numpy().reshape(28, 28), expected)
    # half a pixel across: the average of two neighbours
    half = _bilinear(
        images, tf.constant(rows.reshape(1, -1)), tf.constant(cols.reshape(1, -1) + 0.5)
    )
    image = images.numpy().reshape(28, 28)
    np.testing.assert_allclose(
        half.numpy().reshape(28, 28)[:, :27], (image[:, :27] + image[:, 1:]) / 2
    )


@pytest.mark.parametrize("rotation, scale, shift", [(15, 0, 0), (0, 0.15, 0), (0, 0, 3)])
def test_each_affine_part_keeps_the_digit_mostly_in_frame(rotation, scale, shift):
    params = AugmentParams(**NONE | {"rotation": rotation, "scale": scale, "shift": shift})
    images = digits()
    moved = Distort(params)(images, tf.constant([5, 5]))
    assert not np.array_equal(moved, images)
    ink_ratio = tf.reduce_sum(moved, axis=1) / tf.reduce_sum(images, axis=1)
    assert np.all((ink_ratio > 0.7) & (ink_ratio < 1.4))  # scaled by at most 15 % each way


def test_shear_slants_rows_in_proportion_to_their_height():
    images = digits(50)  # upright bars
    sheared = Distort(AugmentParams(**NONE | {"shear": 20}))(images, tf.constant([3, 1]))
    square, before = (np.asarray(t).reshape(-1, 28, 28) for t in (sheared, images))
    columns = np.arange(28)

    def lean(image: np.ndarray) -> float:
        """How far the ink of the top half sits right of the bottom half's."""
        top, bottom = image[:14].sum(axis=0), image[14:].sum(axis=0)
        return (top * columns).sum() / top.sum() - (bottom * columns).sum() / bottom.sum()

    leans = np.array([lean(a) - lean(b) for a, b in zip(square, before, strict=True)])
    assert np.abs(leans).max() > 1.0 and (leans > 0.2).any() and (leans < -0.2).any()
    assert np.allclose(square.sum(axis=(1, 2)), before.sum(axis=(1, 2)), rtol=0.1)  # ink kept


def test_a_pen_thicker_or_thinner_adds_or_removes_ink_and_repeats_under_the_seed():
    images = digits(50)
    pen = Distort(AugmentParams(**NONE | {"stroke": 1.0}))
    drawn = pen(images, tf.constant([5, 5]))
    np.testing.assert_array_equal(drawn, pen(images, tf.constant([5, 5])))
    ink_before, ink_after = np.asarray(images).sum(axis=1), np.asarray(drawn).sum(axis=1)
    assert (ink_after > ink_before * 1.05).any() and (ink_after < ink_before * 0.95).any()
    assert float(tf.reduce_min(drawn)) >= 0 and float(tf.reduce_max(drawn)) <= 1


def test_low_resolution_blurs_some_images_and_leaves_the_rest():
    images = digits(200)
    blurred = np.asarray(
        Distort(AugmentParams(**NONE | {"low_res": 0.5}))(images, tf.constant([2, 9]))
    )
    changed = ~np.all(np.isclose(blurred, np.asarray(images)), axis=1)
    assert 0.3 < changed.mean() < 0.7  # about half

    def gray(values: np.ndarray) -> np.ndarray:  # pixels neither ink nor paper: soft edges
        return ((values > 0.05) & (values < 0.95)).sum(axis=1)

    sharp, soft = gray(np.asarray(images)), gray(blurred)
    assert (soft[changed] > sharp[changed]).all()  # edges softened where it acted
