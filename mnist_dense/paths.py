"""Where each stage reads and writes, relative to the project root (DVC runs stages there).

dvc.yaml declares the same paths as each stage's deps and outs.
"""

from pathlib import Path

RAW_CHECKSUMS = Path("stages/mnist.sha256")  # the raw files' pinned sha256 (download stage)
RAW_DIR = Path("data/raw")
PROCESSED_DIR = Path("data/processed")
VAL_INDEX = "val_index"  # data/processed/val_index.npy: the validation images' indices
MODEL = Path("models/model.keras")
HISTORY = Path("metrics/history.csv")
TRAIN_METRICS = Path("metrics/train.json")
RUN_INFO = Path("metrics/run.json")
TEST_METRICS = Path("metrics/evaluate.json")
PER_CLASS = Path("metrics/per_class.csv")
PREDICTIONS = Path("metrics/predictions.csv")
# the figures, as DVC image plots (and in the MLflow run)
CURVES_PNG = Path("metrics/training_curves.png")
CONFUSION_PNG = Path("metrics/confusion_matrix.png")
MISCLASSIFIED_PNG = Path("metrics/misclassified.png")
