import shlex

import pytest
import yaml

from commands.presets import apply, exp_command, load_presets, markdown_table
from mnist_dense.cli import PipelineError
from tests.conftest import ROOT

PRESET_NAMES = ["seed-notebook", "onehot-adam-5", "sgd-onehot", "default", "best"]


def test_every_preset_is_valid_against_params_yaml():
    presets = load_presets(ROOT / "presets.yaml", ROOT / "params.yaml")
    assert list(presets) == PRESET_NAMES
    assert all(preset["about"] for preset in presets.values())
    assert presets["default"]["overrides"] == {}


def test_seed_notebook_preset_is_the_notebook():
    overrides = load_presets(ROOT / "presets.yaml", ROOT / "params.yaml")["seed-notebook"][
        "overrides"
    ]
    params = apply(yaml.safe_load((ROOT / "params.yaml").read_text()), overrides)
    assert params["train"]["hidden_units"] == [128, 32]
    assert params["train"]["dropout"] == 0 and params["train"]["optimizer"] == "adam"
    assert (
        params["train"]["learning_rate"] == 0.001 and params["train"]["lr_schedule"] == "constant"
    )
    assert params["train"]["batch_size"] == 32 and params["train"]["epochs"] == 25
    assert params["train"]["loss"] == "sparse_categorical_crossentropy"
    assert params["preprocess"]["split"] == "tail" and params["preprocess"]["val_fraction"] == 0.2
    assert not params["preprocess"]["deskew"] and params["preprocess"]["stroke_width"] == 0
    assert not any(params["augment"][key] for key in ("rotation", "scale", "shift", "shear"))


def test_an_invalid_preset_names_itself_and_the_key(tmp_path):
    (tmp_path / "presets.yaml").write_text(
        "broken:\n  about: x\n  overrides:\n    train.optimiser: sgd\n"
    )
    with pytest.raises(
        PipelineError, match=r"presets.yaml: broken: .*did you mean 'train.optimizer'"
    ):
        load_presets(tmp_path / "presets.yaml", ROOT / "params.yaml")


def test_exp_command_sets_every_override_and_the_seed():
    command = exp_command(
        "p", {"train.hidden_units": [128, 32], "preprocess.split": "tail"}, seed=2
    )
    assert shlex.join(command) == (
        "dvc exp run -n p-seed2 -S 'train.hidden_units=[128, 32]' -S preprocess.split=tail "
        "-S train.seed=2"
    )
    assert "--queue" in exp_command("p", {}, queue=True)


def test_markdown_table_reports_mean_spread_and_median_time():
    presets = {"a": {"overrides": {"train.epochs": 5}}}
    results = {
        "a-seed1": {"test_accuracy": 0.98, "train_seconds": 10.0},
        "a-seed2": {"test_accuracy": 0.97, "train_seconds": 30.0},
        "a-seed3": {"test_accuracy": 0.99, "train_seconds": 12.0},
    }
    table = markdown_table(presets, [1, 2, 3], results)
    assert table.splitlines()[2] == (
        "| a | `train.epochs=5` | 98.00 ± 1.00 % | 98.00 / 97.00 / 99.00 | 12 s |"
    )
