"""The library the pipeline's stages and commands share (see the README's Layout).

Importing it quiets the libraries underneath, so that a stage prints only its own lines and
real warnings: TensorFlow's C++ start-up notes and benign graph messages, MLflow's INFO lines
(database set-up, ...). `MNIST_VERBOSE=1` brings all of them back, with tracebacks.
"""

import os

VERBOSE = os.environ.get("MNIST_VERBOSE", "") not in ("", "0")

if not VERBOSE:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
