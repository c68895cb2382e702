"""The team stack for the tests of tests/test_team_*.py: `make team-up` for a copy of the built
project, shared by a test module (module-scoped: `started_stack`, and `stack` for a test that
needs it up), the pipeline re-run on it once per module (`logged_run`), a stack folder of a
test's own (`fresh_home`), and helpers to talk to a stack. The test modules import the
fixtures they use; tests/conftest.py marks the tests using `started_stack` or `stack` as
`services`.

A module's stack lives in a folder of its own (MNIST_TEAM_HOME) on free ports of 127.0.0.1 and
is stopped after the module, also when a test fails.
"""

import json
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import boto3
import pytest

from tests.conftest import DVC, ROOT, copy_of, python_module, sh
from tooling import postgres
from tooling.processes import port_free

TOOLS = ROOT / ".venv-team"


def team(*args: str, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    """`python -m commands.team ARGS` (make team-up, ...) in `cwd`."""
    return python_module("commands.team", *args, cwd=cwd, env=env, timeout=600)


@contextmanager
def as_user(username: str, password: str) -> Iterator[None]:
    """MLflow clients in this process authenticate as `username` for the block."""
    keys = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
    saved = {key: os.environ.get(key) for key in keys}
    os.environ.update(dict(zip(keys, (username, password), strict=True)))
    try:
        yield
    finally:
        for key, value in saved.items():
            os.environ.pop(key) if value is None else os.environ.update({key: value})


Stack = tuple[Path, dict, dict, str]
RELEASE, MEMBER = "rel-ana", "mem-ben"  # the module stack's people (team_people)


def passwords(home: Path) -> dict[str, str]:
    """{person: password} from the stack's password files."""
    return {path.name: path.read_text().strip() for path in (home / "passwords").iterdir()}


@pytest.fixture(scope="module", name="started_stack")
def fixture_started_stack(built_project, tmp_path_factory) -> Iterator[Stack]:
    """`make team-up` for a copy of the built project, shared by this module's tests (one
    stack, as a team has); yields the project, its environment after
    `eval "$(make -s team-env)"`, the stack's settings and team-up's output."""
    if not (TOOLS / "bin" / "weed").is_file():
        pytest.skip("SeaweedFS is not installed in .venv-team (make team-tools; .ci/run does)")
    if postgres.postgres_bin() is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql; .ci/run does)")
    source, env = built_project
    folder = copy_of(source, tmp_path_factory.mktemp("team") / "project")
    home = Path(tempfile.mkdtemp(prefix="team-"))  # PostgreSQL's user can enter it
    people = tmp_path_factory.mktemp("people") / "people"  # as a team commits it
    people.write_text(f"# the module's team\n{RELEASE} release\n{MEMBER}  member  # a comment\n")
    env = env | {"MNIST_TEAM_HOME": str(home), "MNIST_TEAM_TOOLS": str(TOOLS)}
    env |= {"MNIST_TEAM_PEOPLE": str(people), "MNIST_TEAM_USER": RELEASE}  # the pipeline's
    started = team("up", env=env, cwd=folder)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        exported = team("env", env=env, cwd=folder).stdout
        for line in exported.splitlines():
            key, value = line.removeprefix("export ").split("=", 1)
            env[key] = value.strip("'")
        settings = json.loads((home / "stack.json").read_text())
        # this process's own MLflow clients talk to the stack as the release person, too
        with as_user(RELEASE, passwords(home)[RELEASE]):
            yield folder, env, settings, started.stdout
    finally:
        team("down", env=env, cwd=folder)
        remove_stack(home)


def up(started: Stack) -> Stack:
    """The module's stack with its three servers up: a test before may have left it down (a
    down-up cycle ends down, and a failed test anywhere)."""
    folder, env, settings, _ = started
    if any(port_free(settings["ports"][name]) for name in ("postgres", "s3", "mlflow")):
        assert team("up", env=env, cwd=folder).returncode == 0
    return started


@pytest.fixture(name="stack")
def fixture_stack(started_stack) -> Stack:
    """The module's stack, up."""
    return up(started_stack)


@pytest.fixture(scope="module", name="logged_run")
def fixture_logged_run(started_stack, tmp_path_factory) -> tuple[str, Path]:
    """The pipeline re-run on the stack, once for the module (`dvc repro --force train
    evaluate`: it logs a run and registers the champion); the run's id and a folder holding its
    metrics/evaluate.json and models/model.keras as the run left them."""
    folder, env, _, _ = up(started_stack)
    sh(DVC, "repro", "--force", "--no-run-cache", "train", "evaluate", cwd=folder, env=env)
    record = tmp_path_factory.mktemp("logged-run")
    for name in ("metrics/evaluate.json", "models/model.keras"):
        shutil.copy2(folder / name, record / Path(name).name)
    return json.loads((folder / "metrics" / "run.json").read_text())["mlflow_run_id"], record


def remove_stack(home: Path) -> None:
    """The stack's folder and, as root, its PostgreSQL cluster's beside it."""
    shutil.rmtree(home, ignore_errors=True)
    shutil.rmtree(home.parent / f"{home.name}-postgres", ignore_errors=True)


@pytest.fixture(name="fresh_home")
def fixture_fresh_home(project) -> Iterator[tuple[Path, dict, Path]]:
    """A stack folder of the test's own with no server running yet; the project, its
    environment pointed at that folder, and the folder. Whatever is left is stopped after."""
    folder, env = project
    home = Path(tempfile.mkdtemp(prefix="team-"))
    env = env | {"MNIST_TEAM_HOME": str(home), "MNIST_TEAM_TOOLS": str(TOOLS)}
    try:
        yield folder, env, home
    finally:
        team("down", env=env, cwd=folder)
        remove_stack(home)


def s3_client(env: dict):
    """A boto3 S3 client on the stack's object store, with the team's keys."""
    return boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    )


def objects(env: dict, bucket: str) -> list[str]:
    pages = s3_client(env).get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


# A client's opening of an HTTP/2 connection (gRPC's transport): the preface and an empty
# SETTINGS frame. A gRPC server that takes the caller answers with its own SETTINGS frame.
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def grpc_answer(port: int, ca: Path | None = None, cert: Path | None = None) -> bytes | str:
    """The first bytes 127.0.0.1:`port` answers an HTTP/2 opening with: in plain TCP (no
    `ca`), else over TLS trusting `ca`, presenting `cert` (and its key beside) when given;
    the TLS error's text when the server refuses."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        if ca is None:
            raw.sendall(HTTP2_PREFACE)
            return raw.recv(64)
        context = ssl.create_default_context(cafile=str(ca))
        context.check_hostname = False  # SeaweedFS checks no host names, only the CA
        context.set_alpn_protocols(["h2"])
        if cert is not None:
            context.load_cert_chain(cert, cert.with_suffix(".key"))
        with context.wrap_socket(raw) as tls:
            tls.sendall(HTTP2_PREFACE)
            return tls.recv(64)
    except ssl.SSLError as error:
        return str(error)
    finally:
        raw.close()
