"""Benchmarks: `make bench` and `make bench-tune` (results/)."""

from mnist_dense.runtime.process import prepare

prepare()  # first: the kernel path and a quiet start-up, before any library loads
