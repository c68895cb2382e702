"""The champion as a trust boundary: the rule scores models from their weights instead of
believing their tags, moves the alias before it records the decision, and serving and predict
load checked weights only, into this installation's code."""

import asyncio
import hashlib
import http.client
import json
import math
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import PERMISSION_DENIED
from mlflow.tracking import MlflowClient

from commands.serve import MAX_BODY_BYTES, BodyLimit
from mnist_dense.config import MODEL, load_params
from mnist_dense.model.network import build_model, save_model
from mnist_dense.serving.served_model import (
    MAX_ROWS,
    WEIGHTS_TAG,
    DigitReader,
    UntrustedModel,
    example_image,
    keras_file,
    read_rows,
    weights_of,
)
from mnist_dense.tracking import publish, registry
from mnist_dense.tracking.registry import ALIAS, MODEL_NAME, Standing, decide
from mnist_dense.tracking.runs import validation_set
from stages import evaluate
from tests.servers import post


def poor_model(folder: Path) -> Path:
    """An untrained network of 16 hidden units: about one digit in ten right."""
    keras.utils.set_random_seed(0)
    params = load_params().train.model_copy(update={"hidden_units": [16]})
    path = folder / "poor.keras"
    save_model(build_model(params), path)
    return path


def published(client: MlflowClient, like_run: str, weights: Path, val_accuracy: str) -> str:
    """Publish `weights` from a new run of `like_run`'s experiment, as evaluate does, its
    version tagged with `val_accuracy` (what a training would record); the version."""
    experiment = client.get_run(like_run).info.experiment_id
    run_id = client.create_run(experiment).info.run_id
    record = publish.PublishRecord(
        key=publish.MODEL_KEY,
        example=[0.0] * 784,
        kernels="portable",
        metrics={"test_accuracy": 0.5},
        tags={"val_accuracy": val_accuracy, "validation.digest": validation_set()},
        dataset={"name": "mnist-test", "digest": "x"},
    )
    publish.send(client, run_id, record, {publish.MODEL_KEY: weights.read_bytes()})
    (version,) = client.search_model_versions(f"name = '{MODEL_NAME}' AND run_id = '{run_id}'")
    return str(version.version)


def champion_of(client: MlflowClient) -> str:
    return str(client.get_model_version_by_alias(MODEL_NAME, ALIAS).version)


def decision_of(client: MlflowClient, version: str) -> str:
    return client.get_model_version(MODEL_NAME, version).tags["champion.decision"]


def test_a_forged_val_accuracy_tag_does_not_keep_a_poor_champion(trained, tmp_path):
    run_id, client = trained
    poor = published(client, run_id, poor_model(tmp_path), "0.1")
    assert decision_of(client, poor) == "promoted: the first version"
    # whoever can write to the store tags it 1.0 (as a forger would) and keeps the alias on it
    client.set_model_version_tag(MODEL_NAME, poor, "val_accuracy", "1.0")
    client.set_registered_model_alias(MODEL_NAME, ALIAS, poor)
    candidate = published(client, run_id, MODEL, "0.5")  # the trained model, tagged lower
    assert champion_of(client) == candidate
    why = decision_of(client, candidate)
    assert why.startswith("promoted: val_accuracy") and f"of version {poor}" in why


def test_a_nan_champion_is_beaten_and_a_nan_is_never_compared(trained, tmp_path):
    run_id, client = trained
    poor = published(client, run_id, poor_model(tmp_path), "nan")  # trained through an outage
    candidate = published(client, run_id, MODEL, "nan")
    assert champion_of(client) == candidate, decision_of(client, candidate)
    # the rule itself: a candidate that could not be scored never takes the alias
    unscored = Standing("9", math.nan, "d", "its weights were refused")
    promote, why = decide(unscored, Standing(poor, 0.1, "d"))
    assert not promote and why.startswith("not compared: its validation accuracy could not")


def test_the_alias_moves_before_the_decision_is_recorded(trained, tmp_path, monkeypatch):
    run_id, client = trained
    poor = published(client, run_id, poor_model(tmp_path), "0.1")
    real = MlflowClient.set_registered_model_alias
    calls = []

    def fails_once(self, *args):
        calls.append(args)
        if len(calls) == 1:
            raise MlflowException("the store went away")
        return real(self, *args)

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", fails_once)
    with pytest.raises(MlflowException):
        published(client, run_id, MODEL, "0.5")
    (candidate,) = [
        str(v.version)
        for v in client.search_model_versions(f"name = '{MODEL_NAME}'")
        if str(v.version) != poor
    ]
    assert "champion.decision" not in client.get_model_version(MODEL_NAME, candidate).tags
    assert champion_of(client) == poor
    # the retry (make sync-runs sends the kept record again) decides anew and moves it
    record_run = client.get_model_version(MODEL_NAME, candidate).run_id
    record = publish.PublishRecord(
        key=publish.MODEL_KEY,
        example=[0.0] * 784,
        kernels="portable",
        metrics={"test_accuracy": 0.5},
        tags={"val_accuracy": "0.5", "validation.digest": validation_set()},
        dataset={"name": "mnist-test", "digest": "x"},
    )
    publish.send(client, record_run, record, {publish.MODEL_KEY: MODEL.read_bytes()})
    assert champion_of(client) == candidate
    assert decision_of(client, candidate).startswith("promoted: val_accuracy")


def test_a_member_who_may_not_move_the_alias_registers_and_leaves_it_to_release(
    trained, tmp_path, monkeypatch
):
    """On the team's server only the release role moves @champion (403 for the others): a
    member's evaluate registers its version, records why it is not champion yet, and ends."""
    run_id, client = trained
    poor = published(client, run_id, poor_model(tmp_path), "0.1")

    def forbidden(self, *args):
        raise MlflowException("not in the release role", error_code=PERMISSION_DENIED)

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", forbidden)
    candidate = published(client, run_id, MODEL, "0.5")
    assert champion_of(client) == poor
    why = decision_of(client, candidate)
    assert why.startswith("not promoted yet: val_accuracy") and "the release role does" in why
    assert f"promote {candidate} --why" in why


def test_weights_that_differ_from_their_record_are_refused(trained, tmp_path):
    run_id, client = trained
    evaluate.evaluate(load_params())
    version = client.get_model_version_by_alias(MODEL_NAME, ALIAS)
    assert version.tags[WEIGHTS_TAG] == hashlib.sha256(MODEL.read_bytes()).hexdigest()
    fetched = weights_of(client, version, tmp_path / "ok")
    assert fetched.read_bytes() == MODEL.read_bytes() and fetched.name == "model.keras"
    # only the weights came: no code, no MLmodel
    assert sorted(p.name for p in (tmp_path / "ok").rglob("*") if p.is_file()) == ["model.keras"]
    client.set_model_version_tag(MODEL_NAME, version.version, WEIGHTS_TAG, "0" * 64)
    with pytest.raises(UntrustedModel, match=r"sha256 .*not the 0000000000000000\.\.\. evaluate"):
        keras_file(f"models:/{MODEL_NAME}@{ALIAS}", tmp_path / "refused")
    # nor promoted by hand
    with pytest.raises(UntrustedModel):
        registry.promote_by_hand(client, version.version, "looks fine")
    # and a champion whose weights cannot be checked cannot defend the title
    candidate = published(client, run_id, MODEL, "0.5")
    assert champion_of(client) == candidate
    assert "could not be scored from its weights" in decision_of(client, candidate)


def test_promoted_by_is_the_authenticated_user_not_USER(monkeypatch):
    import os
    import pwd

    monkeypatch.setenv("USER", "mallory")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "ada")
    account = pwd.getpwuid(os.getuid()).pw_name
    assert registry.promoter("sqlite:///mlflow.db") == account
    assert registry.promoter("http://127.0.0.1:5000") == "ada"  # the server checked her password


def test_a_request_over_the_row_limit_is_refused_before_any_work():
    table = pd.DataFrame({"pixels": [[0.0] * 784] * (MAX_ROWS + 1)})
    with pytest.raises(MlflowException, match=f"{MAX_ROWS + 1:,} rows in one request"):
        DigitReader().predict(None, table)


def test_an_overlong_pixels_list_fails_its_row_before_conversion():
    _, errors = read_rows(pd.DataFrame({"pixels": [[0.5] * 10_000_000, [0.0] * 784]}))
    assert errors[0] == "row 0: pixels must be 784 values in [0, 1]" and errors[1] is None


def test_a_decompression_bomb_under_the_limit_is_reduced_before_it_becomes_float():
    import io
    import tracemalloc

    from PIL import Image, ImageDraw

    from mnist_dense.serving.digit_image import MAX_PIXELS, digit_from_bytes

    image = Image.new("L", (6000, 6600), 255)  # 39.6 megapixels, just under the limit
    ImageDraw.Draw(image).line((2000, 1000, 2500, 5000), fill=0, width=300)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    assert MAX_PIXELS > 6000 * 6600 and len(buffer.getvalue()) < 100_000  # a small file
    tracemalloc.start()
    try:
        digit = digit_from_bytes(buffer.getvalue(), "bomb.png")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert digit.shape == (28, 28) and digit.max() == 1.0  # the stroke is still read
    # as float32 the image alone is 158 MB, and each step of the preparation copies it
    assert peak < 100e6, f"peak {peak / 1e6:.0f} MB"


FOREIGN_CODE = """
from pathlib import Path

from mlflow.models import set_model

from mnist_dense.serving.served_model import DigitReader

Path({marker!r}).write_text("the store's code ran")
set_model(DigitReader())
"""


def test_serving_runs_none_of_the_code_a_version_carries(trained, tmp_path, model_server):
    """A version whose model carries other code (right weights, right sha256) is made the
    champion: `mlflow models serve` would run that code; the project's server does not."""
    import mlflow

    from mnist_dense.serving.served_model import KERAS_ARTIFACT, SIGNATURE

    run_id, client = trained
    evaluate.evaluate(load_params())
    marker = tmp_path / "ran"
    code = tmp_path / "foreign_model_code.py"
    code.write_text(FOREIGN_CODE.format(marker=str(marker)))
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name="foreign",
            python_model=str(code),
            artifacts={KERAS_ARTIFACT: str(MODEL)},
            signature=SIGNATURE,
            pip_requirements=[],
        )
    marker.unlink(missing_ok=True)  # logging a model from code runs it once, here
    sha256 = hashlib.sha256(MODEL.read_bytes()).hexdigest()
    foreign = client.create_model_version(
        MODEL_NAME,
        f"models:/{info.model_id}",
        run_id=run_id,
        tags={WEIGHTS_TAG: sha256, "val_accuracy": "1.0"},
        model_id=info.model_id,
    )
    client.set_registered_model_alias(MODEL_NAME, ALIAS, foreign.version)
    uri = client.tracking_uri
    champion = f"models:/{MODEL_NAME}@{ALIAS}"
    # what `mlflow models serve` does with it: loads the model, running the stored code
    loads = (
        f"import mlflow; mlflow.set_tracking_uri({uri!r}); mlflow.pyfunc.load_model({champion!r})"
    )
    subprocess.run([sys.executable, "-c", loads], check=True, capture_output=True, timeout=300)
    assert marker.read_text() == "the store's code ran"
    marker.unlink()

    url = model_server(champion, Path.cwd(), dict(os.environ))
    x_test = np.load("data/processed/x_test.npy", allow_pickle=False)[:3]
    answers = post(url, {"dataframe_records": [{"image": example_image(x)} for x in x_test]})
    digits = [answer["digit"] for answer in answers["predictions"]]
    assert all(answer["error"] is None for answer in answers["predictions"]), answers
    assert len(digits) == 3 and not marker.exists()
    assert status(url, {"dataframe_records": [{"pixels": [0.0] * 784}] * (MAX_ROWS + 1)}) == 400
    # a body declared over the limit is answered 413 before a byte of it is read
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    connection.putrequest("POST", "/invocations")
    connection.putheader("Content-Type", "application/json")
    connection.putheader("Content-Length", str(MAX_BODY_BYTES + 1))
    connection.endheaders()
    assert connection.getresponse().status == 413
    connection.close()


def status(url: str, payload: dict) -> int:
    request = urllib.request.Request(
        f"{url}/invocations",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_a_body_over_the_limit_is_refused_as_it_streams_in():
    """A client that sends no Content-Length (chunked) is cut off once the body passes it."""
    seen = []

    async def app(scope, receive, send):
        while (message := await receive())["more_body"]:
            seen.append(len(message["body"]))
        await send({"type": "http.response.start", "status": 200, "headers": []})

    async def receive():
        return {"type": "http.request", "body": b"x" * 600, "more_body": True}

    sent = []

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "headers": [(b"transfer-encoding", b"chunked")]}
    asyncio.run(BodyLimit(app, 1000)(scope, receive, send))
    assert seen == [600] and sent[0]["status"] == 413
