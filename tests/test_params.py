import copy
import math

import pytest
import yaml

from mnist_dense.config import Params, flatten, load_params, parse_params
from mnist_dense.errors import PipelineError
from tests.conftest import ROOT, TINY_PARAMS, tiny_params


def with_change(section: str, key: str, value) -> dict:
    return tiny_params(**{section: {key: value}})


def error_of(params: dict) -> str:
    with pytest.raises(PipelineError) as caught:
        parse_params(params)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_project_params_are_valid():
    params = load_params(ROOT / "params.yaml")
    assert params.train.epochs > 0
    assert params.train.loss == "sparse_categorical_crossentropy"


def test_flatten_gives_dotted_keys_like_dvc_exp_run_s():
    flat = flatten(parse_params(TINY_PARAMS))
    assert flat["train.epochs"] == 3
    assert flat["preprocess.val_fraction"] == 0.2
    assert flat["tracking.enabled"] is False
    assert len(flat) == sum(len(section) for section in TINY_PARAMS.values())


def test_unknown_optimizer_names_the_allowed_ones():
    message = error_of(with_change("train", "optimizer", "adamw2"))
    assert "train.optimizer" in message and "'adamw2'" in message
    assert "'adam'" in message and "'sgd'" in message and "'rmsprop'" in message


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("train", "epochs", -1),
        ("train", "epochs", 0),
        ("train", "learning_rate", 0),
        ("train", "dropout", 1.0),
        ("train", "batch_size", 2.5),
        ("train", "hidden_units", [64, 0]),
        ("train", "hidden_units", []),
        ("preprocess", "val_fraction", 1.5),
        ("preprocess", "val_fraction", 0),
    ],
)
def test_out_of_range_values_name_the_key(section, key, value):
    assert f"{section}.{key}" in error_of(with_change(section, key, value))


@pytest.mark.parametrize(
    ("key", "value"), [("epochs", "ten"), ("epochs", True), ("learning_rate", "0.01")]
)
def test_wrong_types_are_rejected_not_coerced(key, value):
    message = error_of(with_change("train", key, value))
    assert f"train.{key}" in message and repr(value) in message


def test_unknown_key_suggests_the_closest_known_one():
    params = copy.deepcopy(TINY_PARAMS)
    params["train"]["optimiser"] = params["train"].pop("optimizer")
    message = error_of(params)
    assert "unknown key 'train.optimiser'" in message
    assert "did you mean 'train.optimizer'" in message
    assert "missing key 'train.optimizer'" in message


def test_unknown_section_is_rejected():
    params = copy.deepcopy(TINY_PARAMS)
    params["trian"] = {}
    assert "did you mean 'train'" in error_of(params)


def test_label_encoding_is_not_a_preprocess_param_any_more():
    message = error_of(with_change("preprocess", "labels", "onehot"))
    assert "unknown key 'preprocess.labels'" in message


def test_warmup_as_long_as_the_training_is_rejected():
    params = with_change("train", "warmup_epochs", 3)  # tiny params train for 3 epochs
    assert "train.warmup_epochs=3 must be below train.epochs=3" in error_of(params)


def test_adamw_without_weight_decay_is_rejected():
    assert "train.weight_decay" in error_of(with_change("train", "optimizer", "adamw"))


def test_malformed_yaml_names_the_file_and_line(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  epochs: [1, 2\n")
    with pytest.raises(PipelineError, match=r"params.yaml: malformed YAML at line \d+"):
        load_params(path)


def test_missing_params_file(tmp_path):
    with pytest.raises(PipelineError, match=r"not found"):
        load_params(tmp_path / "params.yaml")


def test_empty_params_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("")
    with pytest.raises(PipelineError, match=r"params.yaml: top level"):
        load_params(path)


def test_numbers_dvc_writes_in_exponent_form_are_read_as_numbers(tmp_path):
    """`dvc exp run -S train.learning_rate=1e-5` writes 1e-05 (YAML 1.2); not a string."""
    params = tiny_params()
    text = yaml.safe_dump(params, sort_keys=False).replace(
        "learning_rate: 0.01", "learning_rate: 1e-05"
    )
    (tmp_path / "params.yaml").write_text(text)
    assert load_params(tmp_path / "params.yaml").train.learning_rate == 1e-05


def _float_keys() -> list[tuple[str, str]]:
    """Every float param of the schema: a float added later is covered without a new test."""
    return [
        (section, key)
        for section, field in Params.model_fields.items()
        for key, inner in field.annotation.model_fields.items()
        if inner.annotation is float
    ]


@pytest.mark.parametrize(("section", "key"), _float_keys())
@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_infinite_or_nan_floats_are_refused_for_every_float(section, key, value):
    message = error_of(with_change(section, key, value))
    assert f"{section}.{key}: input should be a finite number, got {value!r}" in message


def test_an_infinite_learning_rate_in_params_yaml_is_refused(tmp_path):
    """The case tried: `learning_rate: .inf` passed and trained, exit 0."""
    text = yaml.safe_dump(tiny_params(), sort_keys=False)
    (tmp_path / "params.yaml").write_text(
        text.replace("learning_rate: 0.01", "learning_rate: .inf")
    )
    with pytest.raises(PipelineError, match=r"train.learning_rate: input should be a finite"):
        load_params(tmp_path / "params.yaml")


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        (
            "train",
            "hidden_units",
            [64, 8193],
            "train.hidden_units.1: input should be less than or equal to 8192",
        ),
        ("train", "hidden_units", [16] * 33, "train.hidden_units: list should have at most 32"),
        (
            "train",
            "batch_size",
            60_001,
            "train.batch_size: input should be less than or equal to 60000",
        ),
        ("train", "epochs", 1001, "train.epochs: input should be less than or equal to 1000"),
        ("train", "threads", 1025, "train.threads: input should be less than or equal to 1024"),
        ("train", "seed", 2**31, "train.seed: input should be less than or equal to 2147483647"),
        (
            "preprocess",
            "seed",
            2**32,
            "preprocess.seed: input should be less than or equal to 4294967295",
        ),
        (
            "augment",
            "elastic_sigma",
            29.0,
            "augment.elastic_sigma: input should be less than or equal to 28",
        ),
    ],
)
def test_sizes_above_their_bound_are_refused_naming_it(section, key, value, expected):
    assert expected in error_of(with_change(section, key, value))


def test_sizes_at_their_bound_are_accepted():
    params = tiny_params(
        train={"hidden_units": [8192] * 32, "batch_size": 60_000, "epochs": 1000, "threads": 1024}
    )
    assert parse_params(params).train.epochs == 1000
