import pytest

from mnist_dense.errors import PipelineError
from stages import download as download_stage
from stages.download import PUBLIC_MIRRORS, download, read_checksums, sources
from tests.conftest import sha256


def test_fetches_and_verifies_every_file_from_a_local_mirror(tmp_path, tiny_mirror):
    mirror, checksums = tiny_mirror
    download(tmp_path / "raw", checksums, sources(str(mirror)))
    fetched = {path.name: sha256(path) for path in (tmp_path / "raw").iterdir()}
    assert fetched == checksums


def test_wrong_checksum_fails_and_writes_nothing(tmp_path, tiny_mirror):
    mirror, checksums = tiny_mirror
    bad = dict(checksums, **{"t10k-labels-idx1-ubyte.gz": "0" * 64})
    with pytest.raises(PipelineError) as caught:
        download(tmp_path / "raw", bad, sources(str(mirror))[:1])
    message = str(caught.value)
    assert "could not fetch t10k-labels-idx1-ubyte.gz" in message
    assert "sha256 mismatch" in message and "MNIST_MIRROR" in message
    assert not (tmp_path / "raw").exists()
    assert list(tmp_path.iterdir()) == []


def test_file_missing_from_the_mirror(tmp_path, tiny_mirror):
    mirror, checksums = tiny_mirror
    wanted = dict(checksums, **{"extra-file.gz": "0" * 64})
    with pytest.raises(PipelineError, match=r"could not fetch extra-file.gz.*not found in"):
        download(tmp_path / "raw", wanted, sources(str(mirror))[:1])
    assert list(tmp_path.iterdir()) == []


def test_missing_mirror_folder(tmp_path, tiny_mirror):
    _, checksums = tiny_mirror
    with pytest.raises(PipelineError, match=r"no such folder"):
        download(tmp_path / "raw", checksums, sources(str(tmp_path / "nowhere"))[:1])


def test_a_failed_download_keeps_the_previous_complete_output(tmp_path, tiny_mirror):
    mirror, checksums = tiny_mirror
    download(tmp_path / "raw", checksums, sources(str(mirror)))
    with pytest.raises(PipelineError):
        download(tmp_path / "raw", dict(checksums, extra="0" * 64), sources(str(mirror))[:1])
    assert {p.name: sha256(p) for p in (tmp_path / "raw").iterdir()} == checksums


def test_sources_try_the_mirror_first_then_the_public_https_mirrors(monkeypatch):
    monkeypatch.delenv("DVC_ROOT", raising=False)
    assert sources(None) == list(PUBLIC_MIRRORS)
    assert all(url.startswith("https://") for url in PUBLIC_MIRRORS)
    assert sources("https://example.org/mnist")[0] == "https://example.org/mnist/"
    assert sources("/data/mnist")[0] == "file:///data/mnist/"


def test_relative_mirror_is_taken_from_the_project_root(monkeypatch, tmp_path):
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert sources("../mirror")[0] == (tmp_path.parent / "mirror").as_uri() + "/"


def test_plain_http_mirror_is_refused():
    with pytest.raises(PipelineError, match=r"MNIST_MIRROR=http://example.org: expected"):
        sources("http://example.org")


def test_pinned_checksums_match_the_real_mnist_files(tmp_path, real_mnist):
    download(tmp_path / "raw", read_checksums(), sources(str(real_mnist))[:1])
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == sorted(read_checksums())


def test_a_file_larger_than_any_mnist_file_is_refused_before_its_checksum(tmp_path, monkeypatch):
    """Even with the right checksum pinned: a file over the cap is not MNIST's."""
    monkeypatch.setattr(download_stage, "MAX_BYTES", 1000)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "big.gz").write_bytes(b"x" * 1001)
    (mirror / "fits.gz").write_bytes(b"x" * 1000)
    fits = {"fits.gz": sha256(mirror / "fits.gz")}
    download(tmp_path / "ok", fits, sources(str(mirror))[:1])  # at the cap: fetched
    big = {"big.gz": sha256(mirror / "big.gz")}
    with pytest.raises(PipelineError) as caught:
        download(tmp_path / "raw", big, sources(str(mirror))[:1])
    message = str(caught.value)
    assert "\n" not in message
    assert "big.gz: over 1,000 bytes (1,001 announced), larger than any MNIST file" in message
    assert not (tmp_path / "raw").exists()


class LongResponse:
    """An https source that streams 64 MiB without a Content-Length."""

    def __init__(self) -> None:
        self.headers: dict[str, str] = {}
        self.reads = 0

    def read(self, size: int) -> bytes:
        self.reads += 1
        return b"x" * size if self.reads <= 64 * 2**20 // size else b""

    def __enter__(self) -> "LongResponse":
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def test_a_stream_without_a_length_is_cut_at_the_cap(tmp_path, monkeypatch):
    response = LongResponse()
    monkeypatch.setattr(download_stage.urllib.request, "urlopen", lambda url, timeout: response)
    with pytest.raises(PipelineError) as caught:
        download(tmp_path / "raw", {"train.gz": "0" * 64}, ["https://example.org/mnist/"])
    assert "over 10,485,760 bytes (" in str(caught.value)
    assert response.reads == download_stage.MAX_BYTES // 2**20 + 1  # not one block more
    assert list(tmp_path.iterdir()) == []
