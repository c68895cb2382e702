"""The test suite (docs/testing.md): `make test` for the fast tier, `make test-all` for all."""

from mnist_dense.runtime.process import prepare

prepare()  # first: the kernel path and a quiet start-up, before any library loads
