import contextlib
import gzip
import io
import math
import struct
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mnist_dense.data.idx import CHUNK, DEFLATE_MAX_RATIO, IdxError, parse_idx, read_idx
from tooling.synthetic_mnist import idx_bytes, write_idx


def write_raw(path, payload: bytes):
    path.write_bytes(gzip.compress(payload, mtime=0))
    return path


def test_round_trip(tmp_path):
    images = np.arange(3 * 28 * 28, dtype=np.uint32).astype(np.uint8).reshape(3, 28, 28)
    write_idx(tmp_path / "images.gz", images)
    parsed = read_idx(tmp_path / "images.gz", (None, 28, 28))
    assert parsed.dtype == np.uint8 and parsed.shape == (3, 28, 28)
    assert np.array_equal(parsed, images)


def test_wrong_magic_number(tmp_path):
    path = write_raw(tmp_path / "x.gz", b"\x00\x00\x0d\x03" + struct.pack(">3I", 1, 28, 28))
    with pytest.raises(IdxError, match=r"x.gz: wrong magic number 0x00000d03, expected 0x00000803"):
        read_idx(path, (None, 28, 28))


def test_labels_file_where_images_are_expected(tmp_path):
    write_idx(tmp_path / "labels.gz", np.zeros(5, np.uint8))
    with pytest.raises(IdxError, match=r"wrong magic number"):
        read_idx(tmp_path / "labels.gz", (None, 28, 28))


def test_wrong_dimensions(tmp_path):
    write_idx(tmp_path / "x.gz", np.zeros((2, 32, 32), np.uint8))
    with pytest.raises(IdxError, match=r"x.gz: dimension 1 is 32, expected 28"):
        read_idx(tmp_path / "x.gz", (None, 28, 28))


def test_truncated_data(tmp_path):
    payload = idx_bytes(np.zeros((4, 28, 28), np.uint8))[:-100]
    path = write_raw(tmp_path / "x.gz", payload)
    with pytest.raises(IdxError, match=r"truncated, header promises 3136 values"):
        read_idx(path, (None, 28, 28))


def test_trailing_data(tmp_path):
    path = write_raw(tmp_path / "x.gz", idx_bytes(np.zeros(4, np.uint8)) + b"extra")
    with pytest.raises(IdxError, match=r"unexpected data after"):
        read_idx(path, (None,))


def test_truncated_gzip_stream(tmp_path):
    write_idx(tmp_path / "x.gz", np.full((50, 28, 28), 7, np.uint8))
    data = (tmp_path / "x.gz").read_bytes()
    (tmp_path / "x.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(IdxError, match=r"x.gz: not a valid gzip file"):
        read_idx(tmp_path / "x.gz", (None, 28, 28))


def test_not_gzip(tmp_path):
    (tmp_path / "x.gz").write_bytes(b"this is not gzip at all")
    with pytest.raises(IdxError, match=r"not a valid gzip file"):
        read_idx(tmp_path / "x.gz", (None,))


def test_empty_file(tmp_path):
    (tmp_path / "x.gz").write_bytes(b"")
    with pytest.raises(IdxError, match=r"x.gz: empty file"):
        read_idx(tmp_path / "x.gz", (None,))


def test_missing_file(tmp_path):
    with pytest.raises(IdxError, match=r"x.gz: missing"):
        read_idx(tmp_path / "x.gz", (None,))


def test_header_claiming_a_trillion_images_is_rejected_before_reading(tmp_path):
    path = write_raw(tmp_path / "x.gz", b"\x00\x00\x08\x03" + struct.pack(">3I", 10**9, 28, 28))
    with pytest.raises(IdxError, match=r"more than a file of this size can hold"):
        read_idx(path, (None, 28, 28))


# Fuzzing: whatever the bytes, the parser answers with data or an IdxError, and never
# allocates more than the file's size justifies.

SHAPES = [(None, 28, 28), (None,)]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=st.binary(max_size=4096), shape=st.sampled_from(SHAPES))
def test_fuzz_arbitrary_bytes_as_a_file(tmp_path_factory, payload, shape):
    path = tmp_path_factory.mktemp("fuzz") / "x.gz"
    path.write_bytes(payload)
    with contextlib.suppress(IdxError):
        read_idx(path, shape)


@settings(max_examples=300, deadline=None)
@given(
    dims=st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=3),
    body=st.binary(max_size=2048),
    type_code=st.sampled_from([0x08, 0x08, 0x09, 0x0D]),
)
def test_fuzz_headers_never_allocate_beyond_the_data(dims, body, type_code):
    header = struct.pack(">HBB", 0, type_code, len(dims)) + struct.pack(f">{len(dims)}I", *dims)
    compressed = gzip.compress(header + body, mtime=0)
    limit = len(compressed) * DEFLATE_MAX_RATIO
    shape = (None,) * len(dims)
    tracemalloc.start()
    try:
        array = parse_idx(gzip.GzipFile(fileobj=io.BytesIO(compressed)), "x", shape, limit)
        assert array.size == math.prod(dims) == len(body)
    except IdxError:
        pass
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < 4 * len(body) + 4 * CHUNK


def test_an_empty_shape_no_array_can_have_is_rejected(tmp_path):
    """Found by the fuzzer: 0 values, but the other dimensions overflow numpy's size."""
    path = tmp_path / "x.gz"
    header = struct.pack(">HBB3I", 0, 0x08, 3, 0, 3_036_988_439, 3_037_012_561)
    path.write_bytes(gzip.compress(header, mtime=0))
    with pytest.raises(IdxError, match=r"x.gz: shape \(0, 3036988439, 3037012561\) is too large"):
        read_idx(path, (None, None, None))


@given(payload=st.binary(max_size=2048), shape=st.sampled_from(SHAPES))
def test_fuzz_decompressed_content(payload, shape):
    try:
        array = parse_idx(io.BytesIO(payload), "x", shape)
        assert array.dtype == np.uint8 and array.ndim == len(shape)
    except IdxError:
        pass
