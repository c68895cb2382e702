"""The model MLflow logs, registers and serves: image files (or pixel rows) in, digits out.

A client sends what it has, one row per digit:
- `image`: the base64 of an image file's bytes (PNG, JPEG, BMP, GIF), prepared exactly as
  `make predict` prepares a file (mnist_dense/serving/digit_image.py, bundled with the model), or
- `pixels`: 784 values in [0, 1], a flattened 28x28 MNIST digit, light ink on black;
either normalized as the model's training data was (mnist_dense/data/normalize.py).
Each row gets `digit`, its `probability`, all ten `probabilities`, `model`: which model
answered (its MLflow run and the md5 of its .keras file), and `error`: null, or why that row
could not be read (a bad image fails its own row, not the batch).

It is logged as "models from code" (mnist_dense/serving/model_code.py), with no code bundled: what a
registered version holds that matters is its .keras weights, whose sha256 evaluate records on the
version (`model.sha256`). The project never runs code from the store: `make serve` and
`make predict` fetch only the weights, refuse them when their sha256 differs from that record,
and load them in Keras' safe mode into this installation's own code (`weights_of`); nothing is
unpickled.
"""

import base64
import binascii
import hashlib
import io
import re
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel
from mlflow.tracking import MlflowClient
from mlflow.types.schema import Array, ColSpec, Schema

from mnist_dense.config import AS_DRAWN, PIXELS, SIDE, Normalization
from mnist_dense.data.normalize import normalize, read_normalization
from mnist_dense.serving.digit_image import MAX_PIXELS, DigitImageError, digit_from_bytes

MAX_IMAGE_CHARACTERS = 8 * 2**20  # base64 of a 6 MiB file: far more than a photo of one digit
MAX_ROWS = 1_000  # digits per request: a page of a form, not a data set (use make predict)
KERAS_ARTIFACT = "keras_model"
WEIGHTS_TAG = "model.sha256"  # on each version: the sha256 of the .keras file evaluate scored
REGISTERED = re.compile(r"models:/(?P<name>[\w.-]+)(?:@(?P<alias>[\w-]+)|/(?P<number>\d+))/?")
KERNELS_ARTIFACT = "kernels"  # a file naming the kernel path (train.kernels) it computes on
RUN_ARTIFACT = "run"  # a file naming the MLflow run that made the model
SIGNATURE = ModelSignature(
    inputs=Schema(
        [
            ColSpec("string", "image", required=False),
            ColSpec(Array("double"), "pixels", required=False),
        ]
    ),
    outputs=Schema(
        [
            ColSpec("long", "digit", required=False),
            ColSpec("double", "probability", required=False),
            ColSpec(Array("double"), "probabilities", required=False),
            ColSpec("string", "model", required=False),
            ColSpec("string", "error", required=False),
        ]
    ),
)


class DigitReader(PythonModel):
    """pyfunc: a DataFrame of `image` or `pixels` rows -> digit, probabilities, error."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        from mnist_dense.runtime import kernels

        # the kernel path the model was trained and evaluated on, before TensorFlow loads
        recorded = context.artifacts.get(KERNELS_ARTIFACT)
        mode = Path(recorded).read_text().strip() if recorded else kernels.DEFAULT
        kernels.select(mode, strict=False)
        from mnist_dense.model.network import load_model

        path = Path(context.artifacts[KERAS_ARTIFACT])
        self.model, self.normalization = load_model(path), read_normalization(path)
        run = context.artifacts.get(RUN_ARTIFACT)
        made_by = Path(run).read_text().strip() if run else "unknown"
        self.name = f"run {made_by}, model.keras md5 {hashlib.md5(path.read_bytes()).hexdigest()}"

    def predict(self, context: object, model_input: pd.DataFrame, params: dict | None = None):
        from mnist_dense.model.network import predict

        if len(model_input) > MAX_ROWS:
            raise MlflowException(
                f"{len(model_input):,} rows in one request, over the limit of {MAX_ROWS:,}; "
                "send them in smaller batches",
                error_code=INVALID_PARAMETER_VALUE,
            )
        digits, errors = read_rows(model_input, self.normalization)
        rows = [
            {"digit": None, "probability": None, "probabilities": None, "model": self.name}
            | {"error": e}
            for e in errors
        ]
        good = [i for i, error in enumerate(errors) if error is None]
        if good:
            probabilities = predict(self.model, np.stack([digits[i] for i in good]))
            for i, p in zip(good, probabilities, strict=True):
                digit = int(np.argmax(p))
                rows[i] |= {"digit": digit, "probability": float(p[digit])}
                rows[i]["probabilities"] = [float(v) for v in p]
        columns = ["digit", "probability", "probabilities", "model", "error"]
        return pd.DataFrame(rows, columns=columns, dtype=object)  # None stays null in JSON


def read_rows(
    table: pd.DataFrame, how: Normalization = AS_DRAWN
) -> tuple[list[np.ndarray | None], list[str | None]]:
    """Each row's 784 pixels, normalized as `how` says, or why there are none."""
    digits: list[np.ndarray | None] = []
    errors: list[str | None] = []
    for number, row in enumerate(table.to_dict("records")):
        try:
            digits.append(_row_pixels(row, f"row {number}", how))
            errors.append(None)
        except DigitImageError as error:
            digits.append(None)
            errors.append(str(error))
    return digits, errors


def _present(value: object) -> bool:
    return value is not None and not (isinstance(value, float) and np.isnan(value))


def _row_pixels(row: dict, name: str, how: Normalization) -> np.ndarray:
    image, pixels = row.get("image"), row.get("pixels")
    if _present(image):
        if len(str(image)) > MAX_IMAGE_CHARACTERS:
            raise DigitImageError(
                f"{name}: image is {len(str(image)):,} characters of base64, over the limit of "
                f"{MAX_IMAGE_CHARACTERS:,}; send a smaller file"
            )
        try:
            data = base64.b64decode(str(image), validate=True)
        except (binascii.Error, ValueError):
            raise DigitImageError(f"{name}: image is not base64 of an image file") from None
        return digit_from_bytes(data, name, MAX_PIXELS, how).reshape(PIXELS)
    if _present(pixels):
        if np.size(pixels) != PIXELS:  # counted before any conversion: a long list stays a list
            raise DigitImageError(f"{name}: pixels must be {PIXELS} values in [0, 1]")
        values = np.asarray(pixels, dtype=np.float32).reshape(-1)
        if not np.all((values >= 0) & (values <= 1)):
            raise DigitImageError(f"{name}: pixels must be {PIXELS} values in [0, 1]")
        return normalize(values[None], how)[0]
    raise DigitImageError(f"{name}: neither image nor pixels given")


def example_image(pixels: np.ndarray | list[float]) -> str:
    """A test digit as a client would send it: base64 of a PNG, dark ink on white, 4x larger."""
    from PIL import Image

    ink = np.asarray(pixels, np.float32).reshape(SIDE, SIDE)
    image = Image.fromarray(np.round(255 * (1 - ink)).astype(np.uint8)).resize((4 * SIDE,) * 2)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def log_served_model(
    uri: str, run_id: str, keras_file: Path, example: list[float], kernel_mode: str
) -> str:
    """Log the served model into run `run_id` as its model `model`, computing on
    `kernel_mode`'s path (train.kernels) wherever it is served; its logged-model id."""
    import keras
    import tensorflow as tf

    package = Path(__file__).parent
    mlflow.set_tracking_uri(uri)
    with tempfile.TemporaryDirectory() as folder, mlflow.start_run(run_id=run_id):
        mode_file, run_file = Path(folder) / "kernels.txt", Path(folder) / "run.txt"
        mode_file.write_text(f"{kernel_mode}\n")
        run_file.write_text(f"{run_id}\n")
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(package / "model_code.py"),
            artifacts={
                KERAS_ARTIFACT: str(keras_file),
                KERNELS_ARTIFACT: str(mode_file),
                RUN_ARTIFACT: str(run_file),
            },
            signature=SIGNATURE,
            input_example=pd.DataFrame({"image": [example_image(example)]}),
            pip_requirements=[
                f"keras=={keras.__version__}",
                f"tensorflow-cpu=={tf.__version__}",
                f"pillow=={_version('pillow')}",
                f"mlflow=={mlflow.__version__}",
            ],
        )
    return info.model_id


def _version(distribution: str) -> str:
    from importlib.metadata import version

    return version(distribution)


class UntrustedModel(Exception):
    """A registered version whose weights cannot be checked, or do not match their record."""


def sha256_of(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def registered_version(client: MlflowClient, model_uri: str) -> ModelVersion | None:
    """The version a `models:/name@alias` or `models:/name/N` URI names (None: another URI)."""
    match = REGISTERED.fullmatch(model_uri)
    if match is None or match["name"].startswith("m-"):  # models:/m-...: a logged model's id
        return None
    if match["alias"]:
        return client.get_model_version_by_alias(match["name"], match["alias"])
    return client.get_model_version(match["name"], match["number"])


def weights_of(client: MlflowClient, version: ModelVersion, dest: Path) -> Path:
    """The version's .keras file alone, downloaded into the folder `dest`, after its sha256
    matched the one evaluate recorded on the version; nothing else of the model is fetched."""
    name = f"{version.name} version {version.version}"
    expected = version.tags.get(WEIGHTS_TAG)
    if not expected:
        raise UntrustedModel(
            f"{name} has no {WEIGHTS_TAG} tag, so its weights cannot be checked; register it "
            "again by re-running evaluate (`dvc repro -f evaluate`)"
        )
    model_id = version.model_id or str(version.source).removeprefix("models:/")
    location = client.get_logged_model(model_id).artifact_location
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=f"{location.rstrip('/')}/artifacts/model.keras",
        dst_path=str(dest),
        tracking_uri=client.tracking_uri,
    )
    actual = sha256_of(Path(local))
    if actual != expected:
        raise UntrustedModel(
            f"{name}: its model.keras has sha256 {actual[:16]}..., not the {expected[:16]}... "
            "evaluate recorded; refused (the store's copy was replaced)"
        )
    return Path(local)


def keras_file(model_uri: str, dest: Path) -> Path:
    """The .keras file of a model URI, downloaded into the folder `dest` (the caller's to
    remove): a registered version's checked weights (`weights_of`), or the .keras file inside
    another logged model (`runs:/id/model`, ...). No code of the model is run."""
    client = MlflowClient()
    try:
        version = registered_version(client, model_uri)
    except MlflowException as error:
        raise FileNotFoundError(f"{model_uri}: {error.message}") from None
    if version is not None:
        return weights_of(client, version, dest)
    local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(dest))
    found = sorted(Path(local).rglob("*.keras"))
    if not found:
        raise FileNotFoundError(f"{model_uri} holds no .keras file")
    return found[0]
