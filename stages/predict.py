"""Predict the digit in image files with the model the pipeline trained.

    python -m stages.predict digit.png photo.jpg       # one line per file
    python -m stages.predict --json digit.png          # machine-readable
    python -m stages.predict scans/                     # every image in a folder -> predictions.csv

Each image goes through MNIST's own preparation (stages/digit_image.py). A file that
cannot be read, or holds no digit, is reported on stderr and skipped; the rest are still
predicted, and the exit code is 1 when any file failed.
"""

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from stages.cli import PipelineError, run
from stages.digit_image import MAX_PIXELS, DigitImageError, load_digit
from stages.files import write_text
from stages.paths import MODEL

TOP = 3


@dataclass
class Prediction:
    file: str
    digit: int | None = None
    probability: float | None = None
    top3: list[dict] = field(default_factory=list)
    error: str | None = None


def image_files(arguments: list[Path]) -> list[Path]:
    """The files named, with each folder replaced by the (non-hidden) files in it, sorted."""
    files = []
    for path in arguments:
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        else:
            files.append(path)
    return files


def predict_files(
    model_path: Path, files: list[Path], max_pixels: int = MAX_PIXELS
) -> list[Prediction]:
    """One Prediction per file, in order: the digit and the top 3, or why there is none."""
    results, digits = [], []
    for path in files:
        try:
            digits.append(load_digit(path, max_pixels))
            results.append(Prediction(str(path)))
        except DigitImageError as error:
            results.append(Prediction(str(path), error=str(error)))
    if not digits:
        return results
    probabilities = predict_probabilities(model_path, np.stack(digits))
    good = (r for r in results if r.error is None)
    for result, p in zip(good, probabilities, strict=True):
        order = np.argsort(-p, kind="stable")[:TOP]
        result.digit, result.probability = int(order[0]), float(p[order[0]])
        result.top3 = [{"digit": int(d), "probability": float(p[d])} for d in order]
    return results


def predict_probabilities(model_path: Path, digits: np.ndarray) -> np.ndarray:
    """Class probabilities for (n, 28, 28) digits in [0, 1]."""
    if not model_path.is_file():
        raise PipelineError(
            f"{model_path} does not exist; train it first (`make run`) or pass --model PATH"
        )
    from stages.model import load_model  # TensorFlow loads only once there is work for it

    model = load_model(model_path)
    return np.asarray(model.predict(digits.reshape(len(digits), -1), verbose=0))


def describe(result: Prediction) -> str:
    top = ", ".join(f"{t['digit']} {100 * t['probability']:.1f} %" for t in result.top3)
    return f"{result.file}: {result.digit} ({100 * result.probability:.1f} %)  top 3: {top}"


def table(results: list[Prediction]) -> pd.DataFrame:
    """One row per file: the digit, its probability, the runners-up, and any error."""
    rows = []
    for r in results:
        row = {"file": r.file, "digit": r.digit, "probability": r.probability}
        for rank in range(2, TOP + 1):
            top = r.top3[rank - 1] if len(r.top3) >= rank else {}
            row[f"digit_{rank}"] = top.get("digit")
            row[f"probability_{rank}"] = top.get("probability")
        rows.append(row | {"error": r.error})
    return pd.DataFrame(rows).astype({"digit": "Int64", "digit_2": "Int64", "digit_3": "Int64"})


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m stages.predict", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("paths", nargs="+", type=Path, metavar="IMAGE_OR_FOLDER")
    parser.add_argument("--model", type=Path, default=MODEL, help="default: %(default)s")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument(
        "--csv",
        type=Path,
        help="write a CSV of all predictions (default: predictions.csv when a folder is given)",
    )
    parser.add_argument(
        "--max-pixels", type=int, default=MAX_PIXELS, help="refuse larger images (%(default)s)"
    )
    args = parser.parse_args()

    files = image_files(args.paths)
    if not files:
        raise PipelineError(f"no files in {', '.join(map(str, args.paths))}")
    results = predict_files(args.model, files, args.max_pixels)
    for result in results:
        if result.error:
            print(f"error: {result.error}", file=sys.stderr)
    good = [r for r in results if r.error is None]
    if args.json:
        print(json.dumps([asdict(r) for r in results], indent=1))
    else:
        print("\n".join(describe(r) for r in good))
    csv = args.csv or (Path("predictions.csv") if any(p.is_dir() for p in args.paths) else None)
    if csv:
        write_text(csv, table(results).to_csv(index=False))
        failed = len(results) - len(good)
        print(f"wrote {csv}: {len(good)} predicted, {failed} failed", file=sys.stderr)
    if len(good) < len(results):
        sys.exit(1)


if __name__ == "__main__":
    run(main)
