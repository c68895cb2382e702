"""The library the pipeline's stages and commands share (see the README's Layout).

Importing it is every process's first step (stages/, commands/, bench/ and tests/ import it
before anything else), because two things must happen before NumPy or TensorFlow load:
- the kernel path: params.yaml's `train.kernels` sets what the numerical libraries read when
  they load (mnist_dense/kernels.py);
- only our lines on the terminal: TensorFlow's start-up notes are filtered out while it loads
  (mnist_dense/quiet.py), and MLflow's INFO lines are off.
`MNIST_VERBOSE=1` brings all of the libraries' output back, with tracebacks.
"""

import os
from pathlib import Path

from mnist_dense import kernels, quiet


def verbose() -> bool:
    """MNIST_VERBOSE=1: every library's output and every traceback."""
    return os.environ.get("MNIST_VERBOSE", "") not in ("", "0")


if not verbose():
    quiet.install()
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
kernels.select(kernels.mode_in(Path("params.yaml")))
