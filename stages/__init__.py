"""The four DVC stages, one module each: download -> preprocess -> train -> evaluate (dvc.yaml)."""

from mnist_dense.runtime.process import prepare

prepare()  # first: the kernel path and a quiet start-up, before any library loads
