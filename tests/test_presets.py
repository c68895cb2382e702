import json
import shlex

import numpy as np
import pytest
import yaml

from commands.presets import absolute_overrides, exp_command, markdown_table, real_use_table
from mnist_dense.config import apply, load_presets, parse_params
from mnist_dense.errors import PipelineError
from tests.conftest import DVC, ROOT, copy_of, experiments, output, python_module
from tooling.processes import sh

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


def test_markdown_table_reports_mean_spread_median_time_its_ratio_and_kernels():
    presets = {"seed-notebook": {"overrides": {}}, "a": {"overrides": {"train.epochs": 5}}}
    seconds = {"seed-notebook": [4.0, 5.0, 6.0], "a": [10.0, 30.0, 12.0]}
    accuracy = {"seed-notebook": [0.97, 0.97, 0.97], "a": [0.98, 0.97, 0.99]}
    results = {
        f"{name}-seed{seed}": {
            "test_accuracy": accuracy[name][seed - 1],
            "train_seconds": seconds[name][seed - 1],
            "kernels": "portable",
        }
        for name in presets
        for seed in (1, 2, 3)
    }
    table = markdown_table(presets, [1, 2, 3], results)
    assert table.splitlines()[3] == (
        "| a | `train.epochs=5` | 98.00 ± 1.00 % | 98.00 / 97.00 / 99.00 | 12 s | 2.4x | portable |"
    )


def test_real_use_table_has_a_column_per_style():
    shares = {"writing": {"as written": (0.99, 200), "crossed 7": (0.9, 200)}}
    table = real_use_table({"a": shares | {"paper": {"gray": (0.955, 400)}}})
    assert table.splitlines()[0] == "| preset | as written | crossed 7 | gray |"
    assert table.splitlines()[2] == "| a | 99.0 | 90.0 | 95.5 |"


def test_a_preset_resets_what_an_earlier_experiment_left_in_params_yaml():
    committed = yaml.safe_load((ROOT / "params.yaml").read_text())
    presets = load_presets(ROOT / "presets.yaml", ROOT / "params.yaml")
    after_seed_notebook = apply(committed, presets["seed-notebook"]["overrides"])
    settings = absolute_overrides(presets["best"]["overrides"], committed, after_seed_notebook)
    assert apply(after_seed_notebook, settings) == apply(committed, presets["best"]["overrides"])
    assert settings["train.threads"] == committed["train"]["threads"]  # not seed-notebook's 1
    assert (
        absolute_overrides(presets["best"]["overrides"], committed, committed)
        == (presets["best"]["overrides"])
    )


TWO_PRESETS = """
first:
  about: leaves a tail split and one thread in params.yaml
  overrides: {preprocess.split: tail, train.threads: 1}
second:
  about: one epoch
  overrides: {train.epochs: 1}
"""


def preset_params(project, env, *names: str) -> dict:
    """Run the presets one after another in the project; the params of the last one's
    experiment, as `dvc exp show` records them."""
    for name in names:
        result = python_module("commands.presets", "run", name, cwd=project, env=env)
        assert result.returncode == 0, output(result)
    return experiments(project, env)[names[-1]]["params"]["params.yaml"]["data"]


def committed_params(project, env) -> dict:
    """The params of the project's HEAD, as `dvc exp show` records them."""
    shown = json.loads(sh(DVC, "exp", "show", "--json", cwd=project, env=env).stdout)
    (head,) = [rev for rev in shown if rev["rev"] != "workspace"]
    return head["data"]["params"]["params.yaml"]["data"]


def test_two_presets_back_to_back_give_the_second_as_a_clean_checkout_does(built_project, tmp_path):
    """A clean checkout runs the second preset as `-S` of its own overrides on the committed
    params (test_a_preset_resets_what_an_earlier_experiment_left_in_params_yaml: the overrides
    unchanged when nothing was left; test_exp_command_sets_every_override_and_the_seed: the
    command), so its experiment's params are the committed ones with those overrides; after
    the first preset, the second's must be the same."""
    folder, env = built_project
    project = copy_of(folder, tmp_path / "project")
    (project / "presets.yaml").write_text(TWO_PRESETS)
    sh("git", "commit", "-qam", "two presets", cwd=project, env=env)
    clean = apply(
        committed_params(project, env), yaml.safe_load(TWO_PRESETS)["second"]["overrides"]
    )
    after_first = preset_params(project, env, "first", "second")
    assert after_first["preprocess"]["split"] == "stratified"
    assert after_first == clean


def test_every_preset_validates_on_the_same_digits_so_the_registry_compares_them():
    from mnist_dense.data.mnist import split_indices

    committed = yaml.safe_load((ROOT / "params.yaml").read_text())
    labels = np.arange(60_000) % 10
    held_out = {
        name: split_indices(labels, parse_params(apply(committed, preset["overrides"])).preprocess)[
            1
        ].tobytes()
        for name, preset in load_presets(ROOT / "presets.yaml", ROOT / "params.yaml").items()
    }
    assert len(set(held_out.values())) == 1, held_out.keys()
