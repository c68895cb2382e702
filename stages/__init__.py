"""The four DVC stages, one module each: download -> preprocess -> train -> evaluate (dvc.yaml)."""

import mnist_dense  # noqa: F401  (first: the kernel path and quiet start-up, mnist_dense/__init__.py)
