"""Reading the gzipped IDX files MNIST is published in, trusting nothing in them.

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of
dimensions), one big-endian uint32 per dimension, then the values. MNIST uses unsigned
bytes: images are (count, 28, 28), labels (count,).
"""

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from mnist_dense.errors import PipelineError

UBYTE = 0x08
CHUNK = 1 << 20
DEFLATE_MAX_RATIO = 1032  # deflate cannot expand data by more than this


class IdxError(PipelineError):
    """A file that is not the IDX data we expect; the message names the file and the problem."""


def _read_exactly(stream, size: int) -> bytes:
    """Read `size` bytes in chunks, so memory grows only as real data arrives."""
    chunks, remaining = [], size
    while remaining:
        chunk = stream.read(min(CHUNK, remaining))
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def parse_idx(
    stream, name: str, shape: tuple[int | None, ...], max_values: int | None = None
) -> np.ndarray:
    """Parse an uncompressed IDX stream whose dimensions must match `shape` (None: any).

    A header promising more than `max_values` values is rejected before anything is read.
    """
    header = _read_exactly(stream, 4)
    if len(header) == 0:
        raise IdxError(f"{name}: empty file")
    if len(header) < 4:
        raise IdxError(f"{name}: truncated header ({len(header)} bytes)")
    zero, dtype, ndim = struct.unpack(">HBB", header)
    expected_magic = (UBYTE << 8) | len(shape)
    if zero != 0 or dtype != UBYTE or ndim != len(shape):
        raise IdxError(
            f"{name}: wrong magic number 0x{header.hex()}, expected 0x{expected_magic:08x} "
            f"(unsigned bytes, {len(shape)} dimension{'s' if len(shape) > 1 else ''})"
        )
    dims_bytes = _read_exactly(stream, 4 * ndim)
    if len(dims_bytes) < 4 * ndim:
        raise IdxError(f"{name}: truncated header (dimensions missing)")
    dims = struct.unpack(f">{ndim}I", dims_bytes)
    for axis, (got, want) in enumerate(zip(dims, shape, strict=True)):
        if want is not None and got != want:
            raise IdxError(f"{name}: dimension {axis} is {got}, expected {want}")
    size = math.prod(dims)
    if max_values is not None and size > max_values:
        raise IdxError(
            f"{name}: header promises {size} values for shape {dims}, "
            f"more than a file of this size can hold (at most {max_values})"
        )
    data = _read_exactly(stream, size)
    if len(data) < size:
        raise IdxError(
            f"{name}: truncated, header promises {size} values for shape {dims} "
            f"but the file holds {len(data)}"
        )
    if stream.read(1):
        raise IdxError(f"{name}: unexpected data after the {size} values of shape {dims}")
    try:
        return np.frombuffer(data, dtype=np.uint8).reshape(dims)
    except ValueError:  # a zero beside dimensions whose product no array can have
        raise IdxError(f"{name}: shape {dims} is too large for an array") from None


def read_idx(path: Path, shape: tuple[int | None, ...]) -> np.ndarray:
    """Read a gzipped IDX file; any problem becomes an IdxError naming `path`."""
    try:
        max_values = Path(path).stat().st_size * DEFLATE_MAX_RATIO
        with gzip.open(path, "rb") as stream:
            return parse_idx(stream, str(path), shape, max_values)
    except FileNotFoundError:
        raise IdxError(f"{path}: missing; run the download stage (`dvc repro download`)") from None
    except (gzip.BadGzipFile, EOFError, zlib.error, OSError) as error:
        reason = str(error) or type(error).__name__
        raise IdxError(f"{path}: not a valid gzip file ({reason})") from None
