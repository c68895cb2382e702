"""Turn an image file of one handwritten digit into the 28x28 input an MNIST model expects.

MNIST was made by scaling each digit to fit a 20x20 box (keeping its aspect ratio) and
pasting it into a 28x28 field with its centre of mass at the centre, light ink on black.
A model trained on MNIST has only ever seen digits like that, so every image gets the
same treatment here: grayscale; ink measured as the distance from the background's level
(which inverts dark ink on light paper and copes with coloured paper); crop to the digit's
bounding box; longer side scaled to 20 pixels; centred by centre of mass; values in [0, 1];
then the normalization the model was trained with (mnist_dense/data/normalize.py), if any.
"""

import io
import math
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFilter, UnidentifiedImageError

from mnist_dense.config import AS_DRAWN, Normalization
from mnist_dense.config import SIDE as FIELD
from mnist_dense.data.normalize import normalize

FORMATS = ["PNG", "JPEG", "BMP", "GIF"]
MAX_PIXELS = 40_000_000  # larger images are refused before decoding (decompression bombs)
# a larger image is reduced (box average, by a whole factor) before it becomes float: its digit
# ends as 20x20 pixels anyway, and a 40-megapixel image as float32 takes 160 MB per copy
MAX_SIDE = 2048
MIN_CONTRAST = 0.1  # the ink must differ from the background by this much (of full scale)
INK_THRESHOLD = 0.25  # share of the ink's strength that counts as part of the digit
BOX = 20  # MNIST: digit scaled into a 20x20 box, centred in the 28x28 field
RESAMPLE = Image.Resampling.LANCZOS


class DigitImageError(Exception):
    """A file that cannot be turned into a digit; the message names the file."""


def read_grayscale(path: Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """The image file's first frame as float grayscale in [0, 1].

    On a transparent background the ink is what is opaque, whatever its colour.
    """
    if not path.exists():
        raise DigitImageError(f"{path}: no such file")
    if path.is_file() and path.stat().st_size == 0:
        raise DigitImageError(f"{path}: empty file")
    return decode_grayscale(path, str(path), max_pixels)


def decode_grayscale(
    source: Path | BinaryIO, name: str, max_pixels: int = MAX_PIXELS
) -> np.ndarray:
    """read_grayscale for a file or a stream of its bytes; errors name the image `name`."""
    try:
        with Image.open(source, formats=FORMATS) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise DigitImageError(
                    f"{name}: {width}x{height} pixels is over the limit of {max_pixels:,} "
                    "pixels; refused (a decompression bomb?)"
                )
            if image.format == "JPEG":  # JPEG decodes at 1/2, 1/4 or 1/8 of its size directly
                image.draft(
                    image.mode, (width // _factor(image.size), height // _factor(image.size))
                )
            image.load()
            sixteen_bit = image.mode.startswith("I;16")
            return _grayscale(_reduced(image), sixteen_bit)
    except UnidentifiedImageError:
        raise DigitImageError(f"{name}: not an image ({'/'.join(FORMATS)} expected)") from None
    except Image.DecompressionBombError:  # Pillow's own guard, at twice its larger limit
        raise DigitImageError(
            f"{name}: over the limit of {max_pixels:,} pixels; refused (a decompression bomb?)"
        ) from None
    except (OSError, SyntaxError, ValueError) as error:
        raise DigitImageError(f"{name}: unreadable image ({error})") from None


def _factor(size: tuple[int, int]) -> int:
    return math.ceil(max(size) / MAX_SIDE)


def _reduced(image: Image.Image) -> Image.Image:
    """The image with no side over MAX_SIDE, each pixel the mean of a block of them, in the
    image's own integer mode (Image.reduce takes no palette, bilevel or 16-bit image)."""
    factor = _factor(image.size)
    if factor <= 1:
        return image
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif image.mode == "1":
        image = image.convert("L")
    elif image.mode.startswith("I;16"):
        image = image.convert("I")
    return image.reduce(factor)


def _grayscale(image: Image.Image, sixteen_bit: bool = False) -> np.ndarray:
    if sixteen_bit:
        return np.asarray(image, dtype=np.float32) / 65535
    if image.mode in ("I", "F"):
        values = np.asarray(image, dtype=np.float32)
        return values / max(float(values.max()), 1.0)
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        alpha = np.asarray(rgba.getchannel("A"), dtype=np.float32) / 255
        if np.median(_border(alpha)) < 0.5:
            return alpha
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
    return np.asarray(image.convert("L"), dtype=np.float32) / 255


def _border(values: np.ndarray) -> np.ndarray:
    """The pixels of a frame about 5 % wide around the image: the background, mostly."""
    m = max(1, min(values.shape) // 20)
    return np.concatenate(
        [values[:m].ravel(), values[-m:].ravel(), values[:, :m].ravel(), values[:, -m:].ravel()]
    )


def _median3(values: np.ndarray) -> np.ndarray:
    """A 3x3 median filter: removes speckle noise before the digit's extent is measured."""
    image = Image.fromarray(np.round(values * 255).astype(np.uint8))
    return np.asarray(image.filter(ImageFilter.MedianFilter(3)), dtype=np.float32) / 255


def centre_of_mass(values: np.ndarray) -> tuple[float, float]:
    """(row, column) of the intensity-weighted centre of a 2-D image, in pixel indices."""
    rows, cols = np.indices(values.shape)
    return float((rows * values).sum() / values.sum()), float((cols * values).sum() / values.sum())


def to_mnist(gray: np.ndarray, name: str = "image", how: Normalization = AS_DRAWN) -> np.ndarray:
    """A grayscale image in [0, 1] -> the 28x28 float32 MNIST-style digit, normalized."""
    border = _border(gray)
    background = float(np.median(border))
    ink = np.abs(gray - background)
    # about 3 sigma of the background's noise, from the median deviation: robust to a digit
    # that touches the border
    noise = 4.5 * float(np.median(np.abs(border - background)))
    smooth = _median3(ink) if min(gray.shape) >= 3 * FIELD else ink
    peak = float(smooth.max())
    if peak - noise < MIN_CONTRAST:
        raise DigitImageError(f"{name}: no digit found (blank image)")
    ink = np.clip((ink - noise) / (peak - noise), 0, 1)
    digit_mask = smooth - noise > INK_THRESHOLD * (peak - noise)
    rows, cols = np.flatnonzero(digit_mask.any(axis=1)), np.flatnonzero(digit_mask.any(axis=0))
    digit = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]

    height, width = digit.shape
    scale = BOX / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = np.asarray(
        Image.fromarray(np.ascontiguousarray(digit, np.float32)).resize(size, RESAMPLE),
        dtype=np.float32,
    )
    small = np.clip(small, 0, None)
    if small.max() <= 0:
        raise DigitImageError(f"{name}: no digit found (blank image)")
    small /= small.max()

    field = np.zeros((FIELD, FIELD), np.float32)
    h, w = small.shape
    centre_y, centre_x = centre_of_mass(small)
    middle = FIELD / 2  # where MNIST's own digits have their centre of mass: pixel (14, 14)
    top = min(max(round(middle - centre_y), 0), FIELD - h)
    left = min(max(round(middle - centre_x), 0), FIELD - w)
    field[top : top + h, left : left + w] = small
    return normalize(field.reshape(1, -1), how).reshape(FIELD, FIELD)


def load_digit(
    path: Path, max_pixels: int = MAX_PIXELS, how: Normalization = AS_DRAWN
) -> np.ndarray:
    """An image file -> its 28x28 float32 MNIST-style digit, or DigitImageError."""
    return to_mnist(read_grayscale(path, max_pixels), str(path), how)


def digit_from_bytes(
    data: bytes, name: str, max_pixels: int = MAX_PIXELS, how: Normalization = AS_DRAWN
) -> np.ndarray:
    """An image file's bytes -> its 28x28 float32 MNIST-style digit, or DigitImageError."""
    if not data:
        raise DigitImageError(f"{name}: empty file")
    return to_mnist(decode_grayscale(io.BytesIO(data), name, max_pixels), name, how)
