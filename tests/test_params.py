import copy

import pytest
import yaml

from mnist_dense.cli import PipelineError
from mnist_dense.params import flatten, load_params, parse_params
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
