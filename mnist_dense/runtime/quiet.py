"""Only our lines on the terminal: TensorFlow's start-up notes are dropped while it loads.

TensorFlow's C++ side writes its start-up notes (absl's pre-initialisation warning, oneDNN's
"custom operations are on", cpu_feature_guard's "optimized to use available CPU instructions")
straight to file descriptor 2 before its logging starts, so TF_CPP_MIN_LOG_LEVEL does not stop
them, and level 3 would also hide TensorFlow's real errors. Instead, file descriptor 2 is
routed through a file for exactly as long as `import tensorflow` runs, and everything written
there but those known notes is passed on: warnings and errors still show. `MNIST_VERBOSE=1`
leaves everything as it is.
"""

import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from mnist_dense.runtime import tensorflow_loading

NOTES = re.compile(
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|I\d{4} [\d:.]+ +\d+ (port|cpu_feature_guard)\.cc:\d+\] .*"
    r"|To enable the following instructions: .* rebuild TensorFlow with the appropriate "
    r"compiler flags\."
)


def keep(line: str) -> bool:
    """Whether a line TensorFlow wrote while loading is worth showing."""
    return NOTES.fullmatch(line.rstrip("\r\n")) is None


@contextmanager
def filtered_stderr() -> Iterator[None]:
    """Route file descriptor 2 through a file for the block; pass on all but the notes."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode(errors="replace").splitlines(keepends=True)
            text = "".join(line for line in lines if keep(line))
            if text:
                os.write(2, text.encode())


def install() -> None:
    """Filter TensorFlow's start-up notes in this process (a no-op once it has loaded)."""
    if "tensorflow" not in sys.modules:
        tensorflow_loading.around(filtered_stderr)
