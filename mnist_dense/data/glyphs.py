"""Forms of digits that MNIST's writers rarely used, drawn onto its own training digits.

MNIST was written by American Census Bureau staff and high-school students. Much of the
world crosses its 7s (a short bar across the stem), and MNIST's 7s almost never have that
bar: a network trained on them reads a crossed 7 as a 9 or a 4 (docs/results.md). No
distortion of MNIST's own strokes draws the bar, so preprocess draws it onto a share of the
training 7s (`preprocess.crossed_sevens`): at a random height about the middle of the
digit, through its stem, of random length, slope and width (the digit's own pen to nearly
twice it: the wider bars read better on the validation digits, docs/default-trials.md).
Validation and test digits stay as MNIST has them.

Only elementwise arithmetic and sums of integers (no trigonometry, no library functions
other than the square root, which IEEE rounds the same everywhere), so the same bits come
out on every x86-64 CPU; the random numbers come from NumPy's seeded generator.
"""

import numpy as np

from mnist_dense.config import SIDE
from mnist_dense.data.normalize import stroke_widths

INK = 128  # a pixel at this level or above is ink, for finding the digit's extent and stem
HEIGHT = (0.4, 0.65)  # the bar's height, as a share of the digit's from its top
HALF_LENGTH = (0.15, 0.3)  # half the bar's length, as a share of the digit's height
SLOPE = 0.18  # up to about 10 degrees either way
HALF_WIDTH = (0.5, 0.9)  # half its width over the pen's: the digit's own pen to nearly twice it


def cross_sevens(images: np.ndarray, labels: np.ndarray, share: float, seed: int) -> np.ndarray:
    """A copy of uint8 (n, 28, 28) `images` with a bar drawn across the stem of `share` of
    the 7s (chosen with `seed`); every other image as it was."""
    crossed = images.copy()
    sevens = np.flatnonzero(labels == 7)
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(sevens, size=round(share * len(sevens)), replace=False))
    if len(chosen) == 0:
        return crossed
    digits = images[chosen]
    count = len(chosen)
    height, half_length, slope, half_width = (
        rng.uniform(*HEIGHT, count),
        rng.uniform(*HALF_LENGTH, count),
        rng.uniform(-SLOPE, SLOPE, count),
        rng.uniform(*HALF_WIDTH, count),
    )
    ink = digits >= INK
    rows = np.arange(SIDE)
    inked_rows = ink.any(axis=2)
    top = np.argmax(inked_rows, axis=1)
    bottom = SIDE - 1 - np.argmax(inked_rows[:, ::-1], axis=1)
    extent = (bottom - top).astype(np.float64)
    bar_row = top + height * extent
    # the stem: the mean column of the ink in the three rows about the bar's
    band = ink & (np.abs(rows[None, :, None] - np.round(bar_row)[:, None, None]) <= 1)
    band_ink = band.sum(axis=(1, 2))
    stem = np.divide(
        (band * rows[None, None, :]).sum(axis=(1, 2)),
        band_ink,
        out=np.zeros(count),
        where=band_ink > 0,
    )
    # distance of every pixel to the bar: the segment middle +- half_length along (1, slope)
    norm = np.sqrt(1 + slope * slope)
    along_x, along_y = 1 / norm, slope / norm
    length = half_length * extent
    y = rows[None, :, None] - bar_row[:, None, None]
    x = rows[None, None, :] - stem[:, None, None]
    step = np.clip(
        x * along_x[:, None, None] + y * along_y[:, None, None],
        -length[:, None, None],
        length[:, None, None],
    )
    dy, dx = y - step * along_y[:, None, None], x - step * along_x[:, None, None]
    distance = np.sqrt(dy * dy + dx * dx)
    pen = half_width * stroke_widths(digits.reshape(count, -1) / np.float32(255))
    bar = np.clip(pen[:, None, None] + 0.5 - distance, 0, 1)
    drawn = np.maximum(digits, np.floor(bar * 255 + 0.5).astype(np.uint8))
    keep = band_ink == 0  # no ink where the bar would go: leave the digit alone
    crossed[chosen] = np.where(keep[:, None, None], digits, drawn)
    return crossed
