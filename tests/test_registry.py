"""The model registry on the real pipeline: every evaluated model a version of `mnist-dense`,
`champion` moved by the rule (through `dvc exp run`, and in process where DVC adds nothing to
what is tested) or by hand, and the champion served, reading image files."""

import base64
import json
import os
import pwd
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from commands import predict, registry
from mnist_dense.config import load_params
from mnist_dense.tracking.registry import ALIAS, MODEL_NAME, Standing, decide
from stages import evaluate, preprocess, train
from tests.conftest import (
    champion_version,
    client_of,
    exp_run,
    sh,
    tracking_store,
    versions,
    write_params,
)
from tests.servers import post


def test_the_rule_compares_validation_accuracy_on_the_same_validation_set_only():
    champion = Standing("1", 0.98, "aaa.dir")
    assert decide(Standing("2", 0.99, "aaa.dir"), champion)[0] is True
    assert decide(Standing("2", 0.98, "aaa.dir"), champion) == (
        False,
        "kept version 1: val_accuracy 0.9800 <= 0.9800 on the same validation set (ties keep "
        "the champion)",
    )
    promote, why = decide(Standing("2", 0.999, "bbb.dir"), champion)
    assert not promote and why.startswith("not compared with champion version 1: validated on")
    assert decide(Standing("1", 0.5, "aaa.dir"), None) == (True, "promoted: the first version")


def test_the_first_evaluated_model_is_version_1_and_champion(project):
    folder, _ = project
    client = client_of(folder)
    run_id = json.loads((folder / "metrics" / "run.json").read_text())["mlflow_run_id"]
    first = min(versions(client).values(), key=lambda v: int(v.version))
    assert (str(first.version), first.run_id) == ("1", run_id)
    evaluate = json.loads((folder / "metrics" / "evaluate.json").read_text())
    assert float(first.tags["test_accuracy"]) == evaluate["test_accuracy"]
    assert first.tags["git.commit"] == sh("git", "rev-parse", "HEAD", cwd=folder).stdout.strip()
    assert re.fullmatch("[0-9a-f]{32}", first.tags["validation.digest"])
    assert first.tags["champion.decision"] == "promoted: the first version"
    assert champion_version(client) == "1"


def new_version(project, name: str, *overrides: str):
    """Run an experiment in the project: (the version it registered, the champion before it,
    that champion's version, the experiment's output)."""
    folder, env = project
    client = client_of(folder)
    before, champion = set(versions(client)), champion_version(client)
    output = exp_run(folder, env, name, *overrides)
    (added,) = set(versions(client)) - before
    return versions(client)[added], champion, versions(client)[champion], output


def test_a_worse_model_becomes_a_version_but_not_the_champion(project):
    version, champion, _, output = new_version(
        project, "registry-worse", "train.epochs=1", "train.learning_rate=0.0001"
    )
    assert version.tags["dvc.exp_name"] == "registry-worse"
    assert version.tags["champion.decision"].startswith(f"kept version {champion}: val_accuracy")
    assert champion_version(client_of(project[0])) == champion
    assert f"registry: kept version {champion}" in output


@pytest.fixture
def first_version(trained):
    """The `trained` training evaluated in this process: version 1, the champion; a client on
    the working folder's store."""
    _, client = trained
    evaluate.evaluate(load_params())
    assert champion_version(client) == "1"
    return client


def evaluated_again(client, **overrides: dict):
    """Preprocess, train and evaluate once more in the working folder, in this process, with
    params changed (`preprocess={"deskew": True}`): the version it registered and the champion
    before it. The rule runs here as under `dvc exp run`, which only adds processes
    (test_a_worse_model_becomes_a_version_but_not_the_champion runs one)."""
    before, champion = set(versions(client)), champion_version(client)
    write_params(Path.cwd(), tracking={"enabled": True}, **overrides)
    preprocess.preprocess(load_params().preprocess)
    train.main()
    evaluate.evaluate(load_params())
    (added,) = set(versions(client)) - before
    return versions(client)[added], versions(client)[champion]


def test_a_model_normalized_otherwise_on_the_same_digits_is_compared(first_version):
    version, incumbent = evaluated_again(first_version, preprocess={"deskew": True})
    assert version.tags["validation.digest"] == incumbent.tags["validation.digest"]
    assert version.tags["champion.decision"].startswith(("promoted: val_accuracy", "kept version"))


def test_a_model_validated_on_other_data_is_not_compared_automatically(first_version):
    version, incumbent = evaluated_again(first_version, preprocess={"val_fraction": 0.3})
    assert version.tags["validation.digest"] != incumbent.tags["validation.digest"]
    decision = version.tags["champion.decision"]
    assert decision.startswith(
        f"not compared with champion version {incumbent.version}: validated on"
    )
    assert champion_version(first_version) == str(incumbent.version)


@pytest.fixture
def in_project(project, monkeypatch) -> Iterator[tuple[Path, dict]]:
    """The project copy as the working folder, its environment and its store in this process
    (MLflow resolves a registered model's source through its global store)."""
    folder, env = project
    monkeypatch.chdir(folder)
    for key in [k for k in os.environ if k.startswith(("MLFLOW_", "DVC_"))]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith("MLFLOW_"):
            monkeypatch.setenv(key, value)
    with tracking_store(f"sqlite:///{folder / 'mlflow.db'}"):
        yield folder, env


def test_promoting_by_hand_records_who_and_why(in_project, call_main, monkeypatch):
    folder, _ = in_project
    client = client_of(folder)
    first = versions(client)["1"]
    again = client.create_model_version(  # the same model once more, a second version
        MODEL_NAME, first.source, run_id=None, tags=first.tags, model_id=first.model_id
    )
    newest = str(again.version)
    assert newest != champion_version(client)
    monkeypatch.setenv("USER", "mallory")  # anyone can set it: the account is read instead
    account = pwd.getpwuid(os.getuid()).pw_name
    result = call_main(registry.main, "promote", newest, "--why", "checked by eye")
    assert result.code == 0, result.err
    assert champion_version(client) == newest
    tags = versions(client)[newest].tags
    assert (tags["promoted.by"], tags["promoted.why"]) == (account, "checked by eye")
    listing = call_main(registry.main, "list").out
    assert re.search(
        rf"^version {newest} @champion: .*promoted by hand by {account}", listing, re.M
    )
    missing = call_main(registry.main, "promote", "999", "--why", "x")
    assert missing.code == 1
    assert missing.err.strip() == f"error: {MODEL_NAME} has no version 999"


@pytest.fixture
def digit_files(project, tmp_path) -> list[Path]:
    """A PNG and a JPEG drawn from test digits (dark ink on white, larger), and a broken file."""
    folder, _ = project
    out = tmp_path / "digits"
    out.mkdir()
    x_test = np.load(folder / "data" / "processed" / "x_test.npy", allow_pickle=False)
    for index, name in ((0, "first.png"), (1, "second.jpg")):
        ink = x_test[index].reshape(28, 28)
        image = Image.fromarray(np.round(255 * (1 - ink)).astype(np.uint8)).resize((112, 112))
        image.save(out / name)
    (out / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return [out / "first.png", out / "second.jpg", out / "broken.png"]


def test_the_served_champion_reads_image_files_like_predict(
    in_project, digit_files, call_main, model_server
):
    folder, env = in_project
    model = f"models:/{MODEL_NAME}@{ALIAS}"
    local = call_main(predict.main, "--json", "--model", model, *map(str, digit_files))
    assert local.code == 1  # the broken file
    expected = json.loads(local.out)
    records = [{"image": base64.b64encode(p.read_bytes()).decode()} for p in digit_files]
    url = model_server(model, folder, env)
    answers = post(url, {"dataframe_records": records})["predictions"]
    for answer, prediction in zip(answers[:2], expected[:2], strict=True):
        assert answer["error"] is None
        assert answer["digit"] == prediction["digit"]
        assert answer["probability"] == pytest.approx(prediction["probability"], rel=1e-5)
        assert len(answer["probabilities"]) == 10
    assert answers[2]["digit"] is None
    assert (
        answers[2]["error"].startswith("row 2: unreadable image")
        or "not an image" in answers[2]["error"]
    )
    assert expected[2]["error"] is not None


def test_predict_says_which_model_answered(in_project, digit_files, call_main):
    folder, _ = in_project
    result = call_main(predict.main, str(digit_files[0]))
    assert result.code == 0, result.err
    version = champion_version(client_of(folder))
    assert f"model: models:/{MODEL_NAME}@{ALIAS} (version {version}, run " in result.err
