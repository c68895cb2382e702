"""Benchmarks: `make bench` and `make bench-tune` (results/)."""

import mnist_dense  # noqa: F401  (first: the kernel path and quiet start-up, mnist_dense/__init__.py)
