"""Stage 1, download: the four MNIST files into data/raw, each verified by its pinned sha256.

Sources are tried in order: MNIST_MIRROR (a local folder or an https:// base URL) when
set, then the public mirrors. A file moves into data/raw only once its checksum matches;
there is never a fallback to other data. No more than MAX_BYTES is read of any file.
"""

import hashlib
import os
import time
import urllib.request
from pathlib import Path

from mnist_dense.config import RAW_DIR
from mnist_dense.data.checksums import read_checksums
from mnist_dense.errors import PipelineError
from mnist_dense.files import atomic_path
from mnist_dense.runtime.cli import run

PUBLIC_MIRRORS = (
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
)
TIMEOUT_S = 30
ATTEMPTS = 3  # per remote source, with a growing pause between them
# A source may send anything: no more than this is read of a file (the largest MNIST file,
# train-images-idx3-ubyte.gz, is 9,912,422 bytes), so a wrong or hostile one cannot fill the
# disk before its checksum refuses it.
MAX_BYTES = 10 * 2**20


def sources(mirror: str | None) -> list[str]:
    """Base URLs to try, MNIST_MIRROR first; a folder becomes a file:// URL.

    A relative folder is taken from the project root (DVC_ROOT), which is not the working
    folder when DVC runs an experiment in a temporary copy.
    """
    bases = []
    if mirror:
        if mirror.startswith("https://"):
            bases.append(mirror.rstrip("/") + "/")
        elif "://" in mirror:
            raise PipelineError(
                f"MNIST_MIRROR={mirror}: expected a local folder or an https:// URL"
            )
        else:
            folder = Path(os.environ.get("DVC_ROOT", ".")) / mirror
            bases.append(folder.resolve().as_uri() + "/")
    return bases + list(PUBLIC_MIRRORS)


class ChecksumError(OSError):
    """A file that arrived whole but is not the one pinned."""


class OversizeError(ChecksumError):
    """A file larger than any MNIST file: not the one pinned either, and not read further."""


def _too_large(size: str) -> OversizeError:
    """The one line for a source sending more than MAX_BYTES, `size` saying how it showed."""
    return OversizeError(
        f"over {MAX_BYTES:,} bytes ({size}), larger than any MNIST file; refused before its "
        "checksum"
    )


def _fetch(name: str, digest: str, base: str, staging: Path) -> Path:
    """Fetch one file from one source into `staging`; raise if it fails or does not verify.

    Streamed through sha256 into a temporary name, renamed only once it verifies.
    """
    if base.startswith("file://"):
        folder = Path(urllib.request.url2pathname(base.removeprefix("file://")))
        if not folder.is_dir():
            raise OSError(f"no such folder {folder}")
        if not (folder / name).is_file():
            raise OSError(f"{name} not found in {folder}")
    attempts = 1 if base.startswith("file://") else ATTEMPTS
    target, partial = staging / name, staging / f"{name}.partial"
    for attempt in range(1, attempts + 1):
        try:
            sha256 = hashlib.sha256()
            with (
                urllib.request.urlopen(base + name, timeout=TIMEOUT_S) as response,
                open(partial, "wb") as out,
            ):
                announced = response.headers.get("Content-Length")
                if announced and announced.isdigit() and int(announced) > MAX_BYTES:
                    raise _too_large(f"{int(announced):,} announced")
                size = 0
                for block in iter(lambda: response.read(1 << 20), b""):
                    size += len(block)
                    if size > MAX_BYTES:
                        raise _too_large(f"{size:,} read so far")
                    sha256.update(block)
                    out.write(block)
            if sha256.hexdigest() != digest:
                partial.unlink()
                raise ChecksumError(f"sha256 mismatch (expected {digest})")
            partial.replace(target)
            return target
        except ChecksumError:
            partial.unlink(missing_ok=True)
            raise
        except Exception:
            partial.unlink(missing_ok=True)
            if attempt == attempts:
                raise
            time.sleep(2**attempt)
    raise AssertionError("unreachable")


def _reason(error: Exception) -> str:
    """The useful part of a fetch error (urllib wraps it as '<urlopen error ...>')."""
    reason = getattr(error, "reason", None)
    message = str(reason if reason is not None else error).strip() or type(error).__name__
    return message


def download(dest: Path, checksums: dict[str, str], bases: list[str]) -> None:
    """Fetch every file in `checksums` from the first source that serves it intact."""
    with atomic_path(Path(dest)) as staging:
        staging.mkdir()
        for name, digest in checksums.items():
            failures = []
            for base in bases:
                try:
                    _fetch(name, digest, base, staging)
                    print(f"download: {name} from {base}", flush=True)
                    break
                except Exception as error:  # every failure is reported below
                    failures.append(f"{base}{name}: {_reason(error)}")
            else:
                raise PipelineError(
                    f"could not fetch {name} from any source ({'; '.join(failures)}); "
                    "set MNIST_MIRROR to a folder or https:// URL holding the MNIST files"
                )


def main() -> None:
    download(RAW_DIR, read_checksums(), sources(os.environ.get("MNIST_MIRROR")))
    print(f"download: {len(read_checksums())} files verified in {RAW_DIR}")


if __name__ == "__main__":
    run(main)
