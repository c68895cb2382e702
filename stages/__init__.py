"""The four DVC stages, one module each: download -> preprocess -> train -> evaluate (dvc.yaml)."""

import mnist_dense  # noqa: F401  (quiets TensorFlow and MLflow before any stage imports them)
