"""Commands users run: predict, presets, verify-repro, reproduce, real-use, ... (Makefile)."""

import mnist_dense  # noqa: F401  (first: the kernel path and quiet start-up, mnist_dense/__init__.py)
