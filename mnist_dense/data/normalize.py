"""Normalization of digits before the network sees them: deskewing and pen width.

Applied by preprocess to every array (train, val, test) and by predict to every image
(mnist_dense/serving/digit_image.py, the end of `to_mnist`), through `normalize` alone, so a model
sees the same kind of digit in training, evaluation, predict and the served model; the model
file records which normalization it was trained with (`read_normalization`).

- Deskewing by image moments, as MNIST's classic preprocessing does it: from the digit's
  second moments, shear each row sideways so that the principal axis is vertical (the
  covariance of row and column becomes 0), about the centre of mass's row, so the centre
  of mass stays where it was. Slanted writers' digits then look like upright ones.
- Pen width: the stroke's width is estimated as twice the ink's area over its edge length
  (the sum of the absolute differences between neighbouring pixels: twice a stroke's
  length); the image is then blended towards its 3x3 dilation or erosion (one pixel more
  or less on each side) by the share of the way to the target width.

Why only elementwise arithmetic: the result must be the same bit for bit on every x86-64
CPU. The moments and lengths are sums of integers (pixels as 0-255), exact in any order;
the rest is elementwise +, -, *, /, floor, comparisons and gathers, which IEEE rounds the
same everywhere (no library functions such as exp or sin, no matrix products, no SciPy).
"""

import json
import zipfile
from functools import reduce
from pathlib import Path

import numpy as np

from mnist_dense.config import SIDE, Normalization

METADATA_KEY = "mnist_dense_normalization"  # in the .keras file's metadata.json


def scale(images: np.ndarray) -> np.ndarray:
    """uint8 (n, 28, 28) -> float32 (n, 784) in [0, 1]: MNIST's pixels as every model reads them."""
    return images.reshape(len(images), -1).astype(np.float32) / np.float32(255)


def normalize(images: np.ndarray, how: Normalization) -> np.ndarray:
    """(n, 784) float32 digits in [0, 1] -> the same, normalized as `how` says."""
    if how.deskew:
        images = deskew(images)
    if how.stroke_width > 0:
        images = set_stroke_width(images, how.stroke_width)
    return images


def _levels(images: np.ndarray) -> np.ndarray:
    """(n, 784) in [0, 1] -> (n, 28, 28) int32 in 0-255 (exact for the pixels of MNIST)."""
    return np.floor(images.reshape(-1, SIDE, SIDE) * 255 + 0.5).astype(np.int32)


def deskew(images: np.ndarray) -> np.ndarray:
    """Shear each (n, 784) digit horizontally so its principal axis is vertical."""
    ink = _levels(images)
    line = np.arange(SIDE, dtype=np.int64)
    row_mass = ink.sum(axis=2, dtype=np.int64)  # (n, rows)
    row_x = (ink * line.astype(np.int32)).sum(axis=2, dtype=np.int64)  # sum of column x ink
    mass, sum_x = row_mass.sum(axis=1), row_x.sum(axis=1)
    sum_y, sum_xy = (row_mass * line).sum(axis=1), (row_x * line).sum(axis=1)
    sum_yy = (row_mass * line * line).sum(axis=1)
    covariance = (mass * sum_xy - sum_y * sum_x).astype(np.float64)  # both times mass**2
    variance = (mass * sum_yy - sum_y * sum_y).astype(np.float64)
    slope = np.divide(covariance, variance, out=np.zeros_like(variance), where=variance > 0)
    centre_y = np.divide(sum_y, mass, out=np.zeros_like(variance), where=mass > 0)
    # output pixel (y, x) is read from (y, x + slope * (y - centre_y)), linearly between columns
    offset = slope[:, None] * (line[None, :] - centre_y[:, None])  # (n, rows)
    whole = np.floor(offset)
    weight = (offset - whole).astype(np.float32)[:, :, None]
    # each row padded with `pad` black pixels on either side: a source further out reads black
    pad = SIDE + 1
    padded = np.pad(images.reshape(-1, SIDE, SIDE), ((0, 0), (0, 0), (pad, pad)))
    shift = np.clip(whole, -pad, SIDE).astype(np.int64)[:, :, None]
    start = line[:, None] * (SIDE + 2 * pad) + pad + shift
    index = (start + line).reshape(len(ink), -1)  # (n, 784): the left neighbour of each source
    flat = padded.reshape(len(ink), -1)
    left = np.take_along_axis(flat, index, axis=1).reshape(len(ink), SIDE, SIDE)
    right = np.take_along_axis(flat, index + 1, axis=1).reshape(left.shape)
    return (left + weight * (right - left)).reshape(-1, SIDE * SIDE)


def stroke_widths(images: np.ndarray) -> np.ndarray:
    """Each (n, 784) digit's pen width in pixels: 2 x ink area / edge length."""
    ink = np.pad(_levels(images), ((0, 0), (1, 1), (1, 1)))
    area = ink.sum(axis=(1, 2))
    edges = np.abs(np.diff(ink, axis=1)).sum(axis=(1, 2)) + np.abs(np.diff(ink, axis=2)).sum(
        axis=(1, 2)
    )
    return np.divide(2.0 * area, edges, out=np.zeros(len(ink)), where=edges > 0)


def set_stroke_width(images: np.ndarray, width: float) -> np.ndarray:
    """Bring each (n, 784) digit's pen width towards `width` pixels, by at most one pixel
    on each side (3x3 grayscale dilation or erosion, blended)."""
    measured = stroke_widths(images)
    share = np.clip((width - measured) / 2, -1, 1)
    share = np.where(measured > 0, share, 0).astype(np.float32)[:, None]
    padded = np.pad(images.reshape(-1, SIDE, SIDE), ((0, 0), (1, 1), (1, 1)))
    neighbours = [
        padded[:, row : row + SIDE, col : col + SIDE].reshape(len(images), -1)
        for row in range(3)
        for col in range(3)
    ]
    dilated, eroded = reduce(np.maximum, neighbours), reduce(np.minimum, neighbours)
    thicker = images + share * (dilated - images)
    thinner = images + share * (images - eroded)
    return np.where(share > 0, thicker, thinner).astype(np.float32)


def read_normalization(keras_file: Path) -> Normalization:
    """The normalization a model file was trained with (none for files saved before)."""
    with zipfile.ZipFile(keras_file) as archive:
        metadata = json.loads(archive.read("metadata.json"))
    return Normalization(**metadata.get(METADATA_KEY, {}))
