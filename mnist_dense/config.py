"""What the pipeline is configured by: params.yaml (every hyperparameter, validated before any
work starts), where each stage reads and writes, and what an MNIST example is.

Each params section is a strict schema: an unknown key, a wrong type, a value out of range or
an incompatible combination stops the stage with one line naming the key and what is allowed.
Every float must be finite (`.inf` and `.nan` are YAML floats, and an infinite learning rate
would train to NaN weights and exit 0), and every size has an upper bound, so a typo of a few
zeros fails here in a line instead of exhausting memory or overflowing a seed hours later.

The paths are relative to the project root (DVC runs stages there); dvc.yaml declares the
same paths as each stage's deps and outs.
"""

import difflib
import json
import re
from pathlib import Path
from typing import Annotated, Literal, NamedTuple

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mnist_dense.errors import PipelineError

# What an MNIST example is: a 28x28 grayscale digit, flattened to 784 pixels; 10 classes.
SIDE = 28
PIXELS = SIDE * SIDE
CLASSES = 10

# Where each stage reads and writes.
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


class Normalization(NamedTuple):
    deskew: bool = False
    stroke_width: float = 0.0  # target pen width in pixels; 0 = left as drawn


AS_DRAWN = Normalization()  # none: the digit as drawn

PARAMS_FILE = Path("params.yaml")
PRESETS_FILE = Path("presets.yaml")  # named sets of params overrides (make presets)


class _Yaml12Floats(yaml.SafeLoader):
    """PyYAML's safe loader, reading floats as YAML 1.2 does (and DVC writes them).

    `dvc exp run -S train.learning_rate=1e-5` writes `1e-05`, which PyYAML's YAML 1.1 rules
    take for a string; YAML 1.2 (DVC's ruamel) for a number.
    """


_Yaml12Floats.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def read_yaml(text: str) -> object:
    """YAML as DVC reads params files: safe, with YAML 1.2's numbers."""
    return yaml.load(text, Loader=_Yaml12Floats)


# Upper bounds on sizes: generous, far beyond anything that trains MNIST sensibly, yet below
# what exhausts memory or overflows a type: two layers of 8192 units hold 67 million weights
# (the best preset's widest is 1024); MNIST has 60,000 training images, so no batch can hold
# more; a thousand epochs is hours even for the smallest net; 32 layers is past where a plain
# dense stack trains; an elastic field smoothed wider than the 28-pixel image is a mere shift,
# and its Gaussian's taps grow with sigma.
MAX_UNITS = 8192
MAX_LAYERS = 32
MAX_BATCH = 60_000
MAX_EPOCHS = 1000
MAX_THREADS = 1024
MAX_ELASTIC_SIGMA = 28.0
MAX_TRAIN_SEED = 2**31 - 1  # mnist_dense/model/training.py seeds the shuffling with a tf.int32
MAX_SPLIT_SEED = 2**32 - 1  # scikit-learn's random_state and NumPy's seeds take 32 bits


class _Section(BaseModel):
    # allow_inf_nan=False: `.inf` and `.nan` are refused for every float, whatever its range
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class PreprocessParams(_Section):
    val_fraction: float = Field(gt=0, lt=1)
    split: Literal["stratified", "tail"]
    seed: int = Field(ge=0, le=MAX_SPLIT_SEED)
    deskew: bool
    stroke_width: float = Field(ge=0, le=6)
    crossed_sevens: float = Field(ge=0, le=1)

    @property
    def normalization(self) -> Normalization:
        return Normalization(self.deskew, self.stroke_width)


Optimizer = Literal["adam", "adamw", "sgd", "rmsprop"]  # Keras' names (keras.optimizers.get)


class TrainParams(_Section):
    hidden_units: list[Annotated[int, Field(gt=0, le=MAX_UNITS)]] = Field(
        min_length=1, max_length=MAX_LAYERS
    )
    activation: Literal["relu", "gelu", "elu", "selu", "swish", "tanh", "sigmoid"]
    dropout: float = Field(ge=0, lt=1)
    optimizer: Optimizer
    fused_adam: bool
    learning_rate: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
    ema: float = Field(ge=0, lt=1)  # momentum of the weights' moving average; 0 = none
    lr_schedule: Literal["constant", "cosine"]
    warmup_epochs: int = Field(ge=0)
    loss: Literal["sparse_categorical_crossentropy", "categorical_crossentropy"]
    label_smoothing: float = Field(ge=0, lt=1)
    batch_norm: bool
    batch_size: int = Field(gt=0, le=MAX_BATCH)
    epochs: int = Field(gt=0, le=MAX_EPOCHS)
    seed: int = Field(ge=0, le=MAX_TRAIN_SEED)
    threads: int = Field(ge=0, le=MAX_THREADS)
    precision: Literal["float32", "mixed_bfloat16"]
    kernels: Literal["portable", "native"]  # mnist_dense/runtime/kernels.py

    @model_validator(mode="after")
    def _adamw_decays(self) -> "TrainParams":
        if self.optimizer == "adamw" and self.weight_decay == 0:
            raise ValueError("train.optimizer=adamw needs train.weight_decay > 0, got 0")
        if self.precision == "mixed_bfloat16" and self.kernels == "portable":
            raise ValueError(
                "train.precision=mixed_bfloat16 needs the CPU's bfloat16 units, which the "
                "portable kernel path leaves out; set train.kernels=native"
            )
        if self.warmup_epochs >= self.epochs:
            raise ValueError(
                f"train.warmup_epochs={self.warmup_epochs} must be below train.epochs={self.epochs}"
            )
        return self


class AugmentParams(_Section):
    rotation: float = Field(ge=0, le=180)
    scale: float = Field(ge=0, lt=1)
    shift: float = Field(ge=0, le=14)
    elastic_alpha: float = Field(ge=0)
    elastic_sigma: float = Field(gt=0, le=MAX_ELASTIC_SIGMA)
    shear: float = Field(ge=0, le=45)
    stroke: float = Field(ge=0, le=1)
    low_res: float = Field(ge=0, le=1)

    @property
    def enabled(self) -> bool:
        geometry = (self.rotation, self.scale, self.shift, self.elastic_alpha, self.shear)
        return any((*geometry, self.stroke, self.low_res))


class TrackingParams(_Section):
    enabled: bool


class Params(_Section):
    preprocess: PreprocessParams
    train: TrainParams
    augment: AugmentParams
    tracking: TrackingParams


def _known_keys(loc: tuple) -> list[str]:
    """The keys allowed at the level of `loc` (the path of an offending key)."""
    model: type[BaseModel] = Params
    for part in loc[:-1]:
        model = model.model_fields[part].annotation
    return list(model.model_fields)


def _describe(error: dict) -> str:
    loc = error["loc"]
    key = ".".join(str(part) for part in loc) or "top level"
    if error["type"] == "extra_forbidden":
        known = _known_keys(loc)
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        prefix = ".".join(str(part) for part in loc[:-1])
        if close:
            return (
                f"unknown key '{key}' (did you mean '{prefix + '.' if prefix else ''}{close[0]}'?)"
            )
        return f"unknown key '{key}' (known: {', '.join(known)})"
    if error["type"] == "missing":
        return f"missing key '{key}'"
    if error["type"] == "value_error":  # our own validators: the message says it all
        return error["msg"].removeprefix("Value error, ")
    return f"{key}: {error['msg'].lower()}, got {error['input']!r}"


def parse_params(data: object, source: str = str(PARAMS_FILE)) -> Params:
    """Validate a loaded params mapping; raise PipelineError naming each bad key."""
    try:
        return Params.model_validate(data)
    except ValidationError as error:
        problems = "; ".join(_describe(e) for e in error.errors())
        raise PipelineError(f"{source}: {problems}") from None


def load_params(path: Path = PARAMS_FILE) -> Params:
    """Read and validate params.yaml."""
    try:
        data = read_yaml(Path(path).read_text())
    except FileNotFoundError:
        raise PipelineError(f"{path}: not found; run from the project root") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or "invalid syntax"
        raise PipelineError(f"{path}: malformed YAML{where}: {problem}") from None
    return parse_params(data, str(path))


def as_text(value: object) -> str:
    """A param's value as `dvc exp run -S` reads it and MLflow records it: JSON, strings bare."""
    return value if isinstance(value, str) else json.dumps(value)


def from_text(text: str) -> object:
    """The value as_text wrote."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def as_override(key: str, value: object) -> str:
    """`key=value` as `dvc exp run -S` reads it."""
    return f"{key}={as_text(value)}"


def flatten(params: Params) -> dict[str, object]:
    """`{'train.epochs': 20, ...}`: the same keys `dvc exp run -S` and MLflow use."""
    flat = {}
    for section, values in params.model_dump().items():
        for key, value in values.items():
            flat[f"{section}.{key}"] = value
    return flat


def apply(params: dict, overrides: dict) -> dict:
    """params.yaml's mapping with dotted-key overrides applied."""
    result = {section: dict(values) for section, values in params.items()}
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        result.setdefault(section, {})[name] = value
    return result


def load_presets(path: Path = PRESETS_FILE, params_path: Path = PARAMS_FILE) -> dict:
    """The presets, each checked against params.yaml's schema."""
    presets = yaml.safe_load(Path(path).read_text())
    params = read_yaml(Path(params_path).read_text())
    for name, preset in presets.items():
        parse_params(apply(params, preset["overrides"]), f"{path}: {name}")
    return presets
