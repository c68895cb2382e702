"""Training-time distortions: reproducible under the seed, and geometrically right."""

import numpy as np
import pytest
import tensorflow as tf

from stages.augment import Distort, _bilinear
from stages.params import AugmentParams

STRONG = AugmentParams(rotation=15, scale=0.15, shift=3, elastic_alpha=34, elastic_sigma=4)


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
    still = AugmentParams(rotation=0, scale=0, shift=0, elastic_alpha=0, elastic_sigma=4)
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
    params = AugmentParams(
        rotation=rotation, scale=scale, shift=shift, elastic_alpha=0, elastic_sigma=4
    )
    images = digits()
    moved = Distort(params)(images, tf.constant([5, 5]))
    assert not np.array_equal(moved, images)
    ink_ratio = tf.reduce_sum(moved, axis=1) / tf.reduce_sum(images, axis=1)
    assert np.all((ink_ratio > 0.7) & (ink_ratio < 1.4))  # scaled by at most 15 % each way
