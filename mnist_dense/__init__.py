"""The library the pipeline's stages and commands share (see the README's Layout).

Importing it is every process's first step (stages/, commands/, bench/ and tests/ import it
before anything else), because these must happen before NumPy, TensorFlow or MLflow load:
- the kernel path: params.yaml's `train.kernels` sets what the numerical libraries read when
  they load (mnist_dense/kernels.py);
- only our lines on the terminal: TensorFlow's start-up notes are filtered out while it loads
  (mnist_dense/quiet.py), and MLflow's INFO lines are off;
- nothing reports home: MLflow's usage telemetry is off here and in every process started from
  here (the servers of the team stack too). `MNIST_TELEMETRY=1` allows it.
`MNIST_VERBOSE=1` brings all of the libraries' output back, with tracebacks.
"""

import os
from pathlib import Path

from mnist_dense import kernels, quiet


def verbose() -> bool:
    """MNIST_VERBOSE=1: every library's output and every traceback."""
    return os.environ.get("MNIST_VERBOSE", "") not in ("", "0")


if os.environ.get("MNIST_TELEMETRY") != "1":
    os.environ.update({"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"})
if not verbose():
    quiet.install()
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
kernels.select(kernels.mode_in(Path("params.yaml")))
