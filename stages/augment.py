"""Training-time distortions of the digits, computed in the graph, reproducible under the seed.

Each training image is redrawn with a random affine map (rotation, scaling, shift) and,
optionally, an elastic distortion (Simard et al. 2003: a random displacement field smoothed
by a Gaussian), resampled once, bilinearly, with black outside the frame. Dense networks
do not know that a digit moved by a pixel is the same digit; seeing such variants is what
takes them from ~98.5 % towards 99.5 %. The random numbers come from stateless generators
keyed by (seed, epoch, step), so a training run is the same bit for bit every time.
"""

import math

import numpy as np
import tensorflow as tf

from stages.params import AugmentParams

SIDE = 28
CENTRE = (SIDE - 1) / 2


def _gaussian(sigma: float) -> np.ndarray:
    radius = max(1, math.ceil(3 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    return (taps / taps.sum()).astype(np.float32)


class Distort:
    """Callable (images (n, 784), seed (2,) int64) -> distorted images (n, 784)."""

    def __init__(self, params: AugmentParams) -> None:
        self.params = params
        rows, cols = np.indices((SIDE, SIDE), dtype=np.float32)
        self.rows = tf.constant(rows.ravel() - CENTRE)
        self.cols = tf.constant(cols.ravel() - CENTRE)
        if params.elastic_alpha > 0:
            taps = _gaussian(params.elastic_sigma)
            self.smooth_rows = tf.constant(np.tile(taps[:, None, None, None], (1, 1, 2, 1)))
            self.smooth_cols = tf.constant(np.tile(taps[None, :, None, None], (1, 1, 2, 1)))

    def __call__(self, images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        p = self.params
        count = tf.shape(images)[0]
        seeds = tf.random.experimental.stateless_split(seed, 4)

        def uniform(shape: list, index: int, limit: float) -> tf.Tensor:
            return tf.random.stateless_uniform(shape, seeds[index], -limit, limit)

        angle = uniform([count, 1], 0, p.rotation * math.pi / 180)
        scale = 1 + uniform([count, 1], 1, p.scale)
        shift = uniform([count, 2, 1], 2, p.shift)
        # where each output pixel comes from: the inverse of rotate-scale-shift about the centre
        y, x = self.rows[None] - shift[:, 0], self.cols[None] - shift[:, 1]
        cos, sin = tf.cos(angle), tf.sin(angle)
        source_y = (cos * y + sin * x) / scale + CENTRE
        source_x = (cos * x - sin * y) / scale + CENTRE
        if p.elastic_alpha > 0:
            field = uniform([count, SIDE, SIDE, 2], 3, 1.0)
            for kernel in (self.smooth_rows, self.smooth_cols):
                field = tf.nn.depthwise_conv2d(field, kernel, [1, 1, 1, 1], "SAME")
            field = tf.reshape(p.elastic_alpha * field, [count, SIDE * SIDE, 2])
            source_y += field[..., 0]
            source_x += field[..., 1]
        return _bilinear(images, source_y, source_x)


def _bilinear(images: tf.Tensor, source_y: tf.Tensor, source_x: tf.Tensor) -> tf.Tensor:
    """Sample each (n, 784) image at (source_y, source_x) per output pixel; 0 outside."""
    top, left = tf.floor(source_y), tf.floor(source_x)
    weight_y, weight_x = source_y - top, source_x - left
    top, left = tf.cast(top, tf.int32), tf.cast(left, tf.int32)

    def pixel(row: tf.Tensor, col: tf.Tensor) -> tf.Tensor:
        inside = (row >= 0) & (row < SIDE) & (col >= 0) & (col < SIDE)
        index = tf.clip_by_value(row, 0, SIDE - 1) * SIDE + tf.clip_by_value(col, 0, SIDE - 1)
        return tf.gather(images, index, batch_dims=1) * tf.cast(inside, images.dtype)

    upper = pixel(top, left) * (1 - weight_x) + pixel(top, left + 1) * weight_x
    lower = pixel(top + 1, left) * (1 - weight_x) + pixel(top + 1, left + 1) * weight_x
    return upper * (1 - weight_y) + lower * weight_y
