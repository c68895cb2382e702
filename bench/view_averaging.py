"""Does test-time averaging pay? Each model scores the validation and test digits as they are
and as the mean of its probabilities over the digit and its four one-pixel shifts.

    python -m bench.view_averaging REV [REV ...]

REV is any git revision or DVC experiment whose model and processed arrays are in the DVC
cache (for example the experiments `make presets-table` leaves: `dvc exp list`). Choose on
validation; the test column is for the record. Prints one Markdown row per model.
"""

import io
import sys
import tempfile
from pathlib import Path

import dvc.api
import numpy as np

from mnist_dense.config import SIDE
from mnist_dense.model.network import load_model, predict

SHIFTS = [(0, 0), (1, 0), (-1, 0), (0, 1), (0, -1)]  # the digit and one pixel each way


def shifted(pixels: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """The images moved by (rows, cols) pixels, zeros (background) where they move away."""
    images = pixels.reshape(-1, SIDE, SIDE)
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1)))
    window = padded[:, 1 - rows : 1 - rows + SIDE, 1 - cols : 1 - cols + SIDE]
    return window.reshape(len(pixels), -1)


def accuracies(rev: str) -> dict[str, tuple[float, float]]:
    """{split: (plain accuracy, averaged accuracy)} of the model at `rev`."""

    def read(path: str) -> bytes:
        return dvc.api.read(path, rev=rev, mode="rb")

    with tempfile.TemporaryDirectory() as folder:
        model_file = Path(folder) / "model.keras"
        model_file.write_bytes(read("models/model.keras"))
        model = load_model(model_file)
    scores = {}
    for split in ("val", "test"):
        pixels, labels = (
            np.load(io.BytesIO(read(f"data/processed/{name}_{split}.npy")), allow_pickle=False)
            for name in ("x", "y")
        )
        views = [predict(model, shifted(pixels, *shift)) for shift in SHIFTS]
        plain, averaged = views[0], np.mean(views, axis=0)
        scores[split] = tuple(float((p.argmax(axis=1) == labels).mean()) for p in (plain, averaged))
    return scores


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit(__doc__.split("\n\n")[1].strip())
    print("| model | validation | averaged over 5 views | test | averaged over 5 views |")
    print("|---|---|---|---|---|")
    for rev in sys.argv[1:]:
        scores = accuracies(rev)
        cells = [f"{100 * value:.2f} %" for split in ("val", "test") for value in scores[split]]
        print(f"| {rev} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
