"""The MNIST pipeline's stages: download -> preprocess -> train -> evaluate (see dvc.yaml)."""

import os

# TensorFlow's C++ INFO and WARNING lines (CPU features, oneDNN notes) drown the stage logs.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
