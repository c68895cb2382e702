"""Training-time distortions of the digits, computed in the graph, reproducible under the seed.

Each training image is redrawn with a random affine map (rotation, scaling, shear, shift) and,
optionally, an elastic distortion (Simard et al. 2003: a random displacement field smoothed
by a Gaussian), resampled once, bilinearly, with black outside the frame. Then, optionally,
other people's pens and scanners: a thicker or thinner stroke (grayscale dilation or erosion
by up to a pixel) and a low-resolution round trip (the digit drawn 8-12 pixels tall, as a
small photo holds it, and scaled back up: blurred). Dense networks
do not know that a digit moved by a pixel is the same digit; seeing such variants is what
takes them from ~98.5 % towards 99.5 %. The random numbers come from stateless generators
keyed by (seed, epoch, step), so a training run is the same bit for bit every time.
"""

import math

import numpy as np
import tensorflow as tf

from mnist_dense.config import SIDE, AugmentParams

CENTRE = (SIDE - 1) / 2
LOW_RES_SIZES = (11, 14, 17)  # the whole field for a digit 8, 10 or 12 pixels tall


def _gaussian_smoothing(sigma: float) -> np.ndarray:
    """The (784, 784) matrix of a Gaussian blur of a 28x28 field (zero outside the frame).

    The same linear map as two separable convolutions, as one matrix product: on a CPU the
    convolutions' 25-tap kernels cost more than the whole network's step; the product ~10 %.
    """
    radius = max(1, math.ceil(3 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    offsets = np.arange(SIDE)[None, :] - np.arange(SIDE)[:, None] + radius
    inside = (offsets >= 0) & (offsets <= 2 * radius)
    line = np.where(inside, taps[np.clip(offsets, 0, 2 * radius)], 0.0)  # one axis, (28, 28)
    return np.kron(line, line).astype(np.float32)


class Distort:
    """Callable (images (n, 784), seed (2,) int64) -> distorted images (n, 784)."""

    def __init__(self, params: AugmentParams) -> None:
        self.params = params
        rows, cols = np.indices((SIDE, SIDE), dtype=np.float32)
        self.rows = tf.constant(rows.ravel() - CENTRE)
        self.cols = tf.constant(cols.ravel() - CENTRE)
        if params.elastic_alpha > 0:
            self.smoothing = tf.constant(_gaussian_smoothing(params.elastic_sigma).T)

    def __call__(self, images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        p = self.params
        count = tf.shape(images)[0]
        if any((p.rotation, p.scale, p.shift, p.elastic_alpha, p.shear)):
            images = self._resample(images, seed)
        if p.stroke > 0:
            images = self._pen(images, self._uniform([count, 1], seed, 5, p.stroke))
        if p.low_res > 0:
            images = self._low_resolution(images, seed)
        return images

    def _resample(self, images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        """The geometric distortions: one bilinear resampling of each image."""
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
        if p.shear > 0:  # slant: rows slide sideways in proportion to their height
            slant = tf.tan(self._uniform([count, 1], seed, 4, p.shear * math.pi / 180))
            source_x += slant * (source_y - CENTRE)
        if p.elastic_alpha > 0:  # white noise, smoothed: one matrix product per direction
            noise = tf.reshape(uniform([count, 2, SIDE * SIDE], 3, 1.0), [-1, SIDE * SIDE])
            field = tf.reshape(noise @ self.smoothing, [count, 2, SIDE * SIDE])
            source_y += p.elastic_alpha * field[:, 0]
            source_x += p.elastic_alpha * field[:, 1]
        return _bilinear(images, source_y, source_x)

    @staticmethod
    def _uniform(shape: list, seed: tf.Tensor, key: int, limit: float) -> tf.Tensor:
        """Random numbers for the distortions added later, from their own stream (the first
        four streams, and so the older distortions' bits, stay as they were)."""
        stream = tf.random.experimental.stateless_fold_in(seed, key)
        return tf.random.stateless_uniform(shape, stream, -limit, limit)

    @staticmethod
    def _pen(images: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
        """A thicker (width > 0) or thinner (< 0) pen: blend towards the image's grayscale
        dilation or erosion by a 3x3 neighbourhood, by |width| (at most one pixel)."""
        padded = tf.pad(tf.reshape(images, [-1, SIDE, SIDE]), [[0, 0], [1, 1], [1, 1]])
        shifted = [
            tf.reshape(padded[:, row : row + SIDE, col : col + SIDE], [-1, SIDE * SIDE])
            for row in range(3)
            for col in range(3)
        ]  # the 3x3 neighbourhood, black outside the frame (cheaper than pooling one channel)
        dilated, eroded = tf.reduce_max(shifted, axis=0), tf.reduce_min(shifted, axis=0)
        thicker = images + width * (dilated - images)
        thinner = images + width * (images - eroded)  # width < 0: towards the erosion
        return tf.where(width > 0, thicker, thinner)

    def _low_resolution(self, images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        """With probability low_res, the image shrunk so its digit (20 of the 28 pixels) is
        8, 10 or 12 pixels tall, and scaled back up; else as it was."""
        count = tf.shape(images)[0]
        square = tf.reshape(images, [-1, SIDE, SIDE, 1])
        versions = [images]
        for size in LOW_RES_SIZES:
            small = tf.image.resize(square, [size, size], method="area")
            back = tf.image.resize(small, [SIDE, SIDE], method="bilinear")
            versions.append(tf.reshape(back, [-1, SIDE * SIDE]))
        draw = 0.5 + 0.5 * self._uniform([count], seed, 6, 1.0)  # in [0, 1)
        which = tf.where(
            draw < self.params.low_res,
            1 + tf.cast(draw / self.params.low_res * len(LOW_RES_SIZES), tf.int32),
            0,
        )
        which = tf.minimum(which, len(LOW_RES_SIZES))
        return tf.gather(tf.stack(versions, axis=1), which, batch_dims=1)


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
