"""The test suite (docs/testing.md): `make test` for the fast tier, `make test-all` for all."""

import mnist_dense  # noqa: F401  (first: the kernel path and quiet start-up, mnist_dense/__init__.py)
