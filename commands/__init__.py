"""Commands users run: predict, presets, verify-repro, reproduce, real-use, ... (Makefile)."""

from mnist_dense.runtime.process import prepare

prepare()  # first: the kernel path and a quiet start-up, before any library loads
