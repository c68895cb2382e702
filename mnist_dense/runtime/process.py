"""A process's set-up, made by each entry point in one call before NumPy, TensorFlow or MLflow load.

The stages, commands, benchmarks and tests call `prepare()` first (their package's
`__init__.py` does), because these can only be decided before those libraries load:
- the kernel path: params.yaml's `train.kernels` sets what the numerical libraries read when
  they load (mnist_dense/runtime/kernels.py);
- only our lines on the terminal: TensorFlow's start-up notes are filtered out while it loads
  (mnist_dense/runtime/quiet.py), and MLflow's INFO lines are off;
- nothing reports home: MLflow's usage telemetry is off here and in every process started from
  here (the servers of the team stack too). `MNIST_TELEMETRY=1` allows it.
`MNIST_VERBOSE=1` brings all of the libraries' output back, with tracebacks.

Importing `mnist_dense` does none of this, so a notebook that imports a module from it gets its
libraries as installed.
"""

import os
from pathlib import Path

from mnist_dense.runtime import kernels, quiet


def verbose() -> bool:
    """MNIST_VERBOSE=1: every library's output and every traceback."""
    return os.environ.get("MNIST_VERBOSE", "") not in ("", "0")


def prepare(params_file: Path = Path("params.yaml")) -> None:
    """Set this process up for the project: telemetry off, quiet start-up (unless verbose),
    and the kernel path `params_file` chooses (the default where it or its key is missing)."""
    if os.environ.get("MNIST_TELEMETRY") != "1":
        os.environ.update({"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"})
    if not verbose():
        quiet.install()
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    kernels.select(kernels.mode_in(params_file))
