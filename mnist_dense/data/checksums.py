"""The raw MNIST files' pinned sha256 (stages/mnist.sha256, in `sha256sum`'s format)."""

from pathlib import Path

from mnist_dense.config import RAW_CHECKSUMS

# the file that came with this code (a stage may run in another folder, as the tests do)
PINNED = Path(__file__).resolve().parents[2] / RAW_CHECKSUMS


def read_checksums(path: Path = PINNED) -> dict[str, str]:
    """{file name: hex digest}, in the file's order."""
    checksums = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            digest, name = line.split()
            checksums[name.lstrip("*")] = digest
    return checksums


def as_lines(checksums: dict[str, str]) -> str:
    """The entries as `sha256sum` writes them, one after another without newlines."""
    return "".join(f"{digest}  {name}" for name, digest in checksums.items())
