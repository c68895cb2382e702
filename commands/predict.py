"""Predict the digit in image files with the model the pipeline trained.

    python -m commands.predict digit.png photo.jpg       # one line per file
    python -m commands.predict --json digit.png          # machine-readable
    python -m commands.predict scans/                # every image in a folder -> predictions.csv

Each image goes through MNIST's own preparation (mnist_dense/serving/digit_image.py), normalized as
the model's training data was (mnist_dense/data/normalize.py). A file that
cannot be read, or holds no digit, is reported on stderr and skipped; the rest are still
predicted, and the exit code is 1 when any file failed.
"""

import argparse
import json
import os
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mnist_dense.config import MODEL
from mnist_dense.data.normalize import read_normalization
from mnist_dense.errors import PipelineError, first_line
from mnist_dense.files import write_text
from mnist_dense.runtime.cli import run
from mnist_dense.serving.digit_image import MAX_PIXELS, DigitImageError, load_digit

TOP = 3
TABLE_COLUMNS = [
    "file",
    "digit",
    "probability",
    *(f"{name}_{rank}" for rank in range(2, TOP + 1) for name in ("digit", "probability")),
    "error",
]


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
    model_source: str, files: list[Path], max_pixels: int = MAX_PIXELS
) -> list[Prediction]:
    """One Prediction per file, in order: the digit and the top 3, or why there is none."""
    with model_file(model_source) as keras_path:
        try:
            how = read_normalization(keras_path)
        except (OSError, zipfile.BadZipFile, KeyError, ValueError, TypeError) as error:
            raise unusable_model(model_source, error) from None
        results, digits = [], []
        for path in files:
            try:
                digits.append(load_digit(path, max_pixels, how))
                results.append(Prediction(str(path)))
            except DigitImageError as error:
                results.append(Prediction(str(path), error=str(error)))
        if not digits:
            return results
        from mnist_dense.model.network import (  # TensorFlow loads once there is work
            load_model,
            predict,
        )

        try:
            model = load_model(keras_path)
        except Exception as error:  # Keras raises many kinds for a file it cannot rebuild
            raise unusable_model(model_source, error) from None
    probabilities = predict(model, np.stack(digits).reshape(len(digits), -1))
    good = (r for r in results if r.error is None)
    for result, p in zip(good, probabilities, strict=True):
        order = np.argsort(-p, kind="stable")[:TOP]
        result.digit, result.probability = int(order[0]), float(p[order[0]])
        result.top3 = [{"digit": int(d), "probability": float(p[d])} for d in order]
    return results


def unusable_model(source: str | Path, error: Exception) -> PipelineError:
    """A model file that is not a Keras model (empty, truncated, another format): one line
    naming it, before any image is predicted, rather than the reader's traceback."""
    return PipelineError(
        f"{source}: not a readable .keras model ({first_line(error)}); "
        "train it again (`make run`) or pass another --model"
    )


@contextmanager
def model_file(source: str | Path) -> Iterator[Path]:
    """The .keras file of a model: a local file, or for an MLflow model URI (models:/name@alias,
    runs:/...) a download that is removed afterwards (no copy left behind)."""
    if "://" not in str(source) and not str(source).startswith(("models:", "runs:")):
        if not Path(source).is_file():
            raise PipelineError(
                f"{source} does not exist; train it first (`make run`) or pass --model PATH"
            )
        yield Path(source)
        return
    from mnist_dense.serving.served_model import keras_file
    from mnist_dense.tracking import store

    uri = store.connect()
    with tempfile.TemporaryDirectory(prefix="mnist-model-") as folder:
        try:
            path = keras_file(str(source), Path(folder))
        except Exception as error:  # MLflow raises several kinds for an unknown model or alias
            shown = store.masked(uri)  # a server's password never reaches the terminal
            raise PipelineError(f"{source}: not a model in {shown} ({first_line(error)})") from None
        yield path


def default_model() -> tuple[str, str]:
    """The registered champion when the tracking store has one, else the pipeline's model
    file; and how to name it to the user."""
    from mnist_dense.tracking.provenance import project_root

    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri or (project_root() / "mlflow.db").is_file():
        from mlflow.tracking import MlflowClient

        from mnist_dense.tracking import store
        from mnist_dense.tracking.registry import ALIAS, MODEL_NAME, champion

        try:
            found = champion(MlflowClient(store.connect()))
        except PipelineError:  # no usable store: the model file answers
            found = None
        if found is not None:
            run_name = found.tags.get("mlflow.run_name", found.run_id)
            source = f"models:/{MODEL_NAME}@{ALIAS}"
            return source, f"{source} (version {found.version}, run {run_name})"
    return str(MODEL), f"{MODEL} (no registered champion in the tracking store)"


def csv_destination(csv: Path | None, inputs: list[Path]) -> Path | None:
    """Where the CSV goes: --csv, else predictions.csv when a folder was given; never inside a
    folder being read (the next run would read it back), never over a file predict did not
    write."""
    folders = [p.resolve() for p in inputs if p.is_dir()]
    if csv is None and not folders:
        return None
    csv = csv or Path("predictions.csv")
    inside = [f for f in folders if csv.resolve().is_relative_to(f)]
    if inside:
        raise PipelineError(
            f"{csv}: lies in {inside[0]}, a folder being read, where the next run would read it "
            "as an image; pass --csv PATH outside it"
        )
    if csv.exists() and _first_line(csv) != ",".join(TABLE_COLUMNS):
        raise PipelineError(f"{csv}: exists and is not a predictions table; pass another --csv")
    return csv


def _first_line(path: Path) -> str:
    try:
        with open(path, errors="replace") as stream:
            return stream.readline().strip()
    except OSError:
        return ""


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
    frame = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    return frame.astype({"digit": "Int64", "digit_2": "Int64", "digit_3": "Int64"})


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m commands.predict", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("paths", nargs="+", type=Path, metavar="IMAGE_OR_FOLDER")
    parser.add_argument(
        "--model",
        help="a .keras file or an MLflow model URI such as models:/mnist-dense@champion "
        f"(default: the registered champion if there is one, else {MODEL})",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument(
        "--csv",
        type=Path,
        help="write a CSV of all predictions (default: predictions.csv when a folder is given); "
        "never inside a folder being read, never over a file that is not such a table",
    )
    parser.add_argument(
        "--max-pixels", type=int, default=MAX_PIXELS, help="refuse larger images (%(default)s)"
    )
    args = parser.parse_args()

    csv = csv_destination(args.csv, args.paths)
    files = image_files(args.paths)
    if not files:
        raise PipelineError(f"no files in {', '.join(map(str, args.paths))}")
    model, described = (args.model, args.model) if args.model else default_model()
    print(f"model: {described}", file=sys.stderr)
    results = predict_files(model, files, args.max_pixels)
    for result in results:
        if result.error:
            print(f"error: {result.error}", file=sys.stderr)
    good = [r for r in results if r.error is None]
    if args.json:
        print(json.dumps([asdict(r) for r in results], indent=1))
    else:
        print("\n".join(describe(r) for r in good))
    if csv:
        write_text(csv, table(results).to_csv(index=False))
        failed = len(results) - len(good)
        print(f"wrote {csv}: {len(good)} predicted, {failed} failed", file=sys.stderr)
    if len(good) < len(results):
        sys.exit(1)


if __name__ == "__main__":
    run(main)
