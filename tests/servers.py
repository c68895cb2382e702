"""Real servers for the tests, as fixtures, each on 127.0.0.1, a free port and a folder of its
own, stopped even when a test fails: a throwaway PostgreSQL cluster (password authentication),
`mlflow server`, the project's model server (commands/serve.py), headless Chromium.
tests/conftest.py imports the fixtures (and marks the tests that use them); the process
handling is the library's (tooling/), as the team stack's.
"""

import itertools
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from mnist_dense.model.progress import parse_epoch_line
from tooling import browser, processes
from tooling.postgres import Postgres, postgres_bin
from tooling.processes import free_port

BIN = Path(sys.executable).parent
READY_TIMEOUT_S = 120


def wait_until(
    ready: Callable[[], bool], what: str, log: Path, process: subprocess.Popen | None = None
) -> None:
    """processes.wait_until, failing the test with the server's log."""
    try:
        processes.wait_until(
            ready, what, READY_TIMEOUT_S, alive=process and (lambda: process.poll() is None)
        )
    except processes.ServiceError as error:
        pytest.fail(f"{error}:\n{processes.log_tail(log)}")


def stop_group(process: subprocess.Popen, timeout_s: float = 30) -> None:
    processes.stop_group(process.pid, timeout_s)
    process.wait()


@pytest.fixture
def postgres() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on 127.0.0.1 (password authentication) with a database
    `mlflow`; yields its URI. Skips, saying why, without PostgreSQL."""
    if postgres_bin() is None:
        pytest.skip(
            "PostgreSQL not installed: initdb and pg_ctl are neither on PATH nor under "
            "/usr/lib/postgresql/*/bin (apt-get install postgresql; .ci/run does)"
        )
    folder = Path(tempfile.mkdtemp(prefix="test-postgres-"))  # not under pytest's root-only tmp
    # a throwaway: fsync off, for this test alone (the team stack's keeps it on)
    cluster = Postgres(folder / "cluster", free_port(), secrets.token_hex(12), durable=False)
    try:
        cluster.init()
        cluster.start(READY_TIMEOUT_S)
        cluster.create_database("mlflow")
        yield cluster.uri()
    except processes.ServiceError as error:
        pytest.fail(f"{error}:\n{processes.log_tail(cluster.log)}")
    finally:
        cluster.stop()
        shutil.rmtree(folder, ignore_errors=True)


class MlflowServer:
    """`mlflow server` on a fixed free port, which a test may stop and start again."""

    def __init__(self, folder: Path, backend: str, artifacts: str, env: dict | None = None):
        self.folder, self.backend, self.artifacts = folder, backend, artifacts
        self.env = env
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log = folder / "server.log"
        self.process: subprocess.Popen | None = None
        self.back_at: float | None = None  # time.monotonic() when it last answered after start

    def start(self) -> None:
        command = [str(BIN / "mlflow"), "server", "--backend-store-uri", self.backend]
        command += ["--artifacts-destination", self.artifacts, "--serve-artifacts"]
        command += ["--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        with open(self.log, "ab") as output:
            self.process = subprocess.Popen(
                command,
                cwd=self.folder,
                env=self.env,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stopping it stops its workers
            )
        wait_until(self.ready, "mlflow server", self.log, self.process)
        self.back_at = time.monotonic()

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        self.back_at = None
        if self.process is not None:
            stop_group(self.process, timeout_s=5)  # an outage: no need for a graceful exit
            self.process = None


@pytest.fixture
def mlflow_server(tmp_path) -> Iterator[MlflowServer]:
    """A real `mlflow server` on a SQLite store and local artifacts in the test's folder."""
    folder = tmp_path / "server"
    folder.mkdir()
    server = MlflowServer(folder, f"sqlite:///{folder / 'store.db'}", str(folder / "artifacts"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def serve(model_uri: str, project: Path, env: dict) -> Iterator[str]:
    """The project's model server (`python -m commands.serve`) on a free port of 127.0.0.1,
    the project's store; its URL."""
    port = free_port()
    command = [sys.executable, "-m", "commands.serve", "--model", model_uri, "--port", str(port)]
    process = subprocess.Popen(
        command,
        cwd=project,
        env=env | {"MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: stopping it stops its workers too
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            assert process.poll() is None, "the model server exited"
            try:
                urllib.request.urlopen(f"{url}/ping", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline, "the server did not answer /ping in 120 s"
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


@pytest.fixture
def model_server() -> Iterator[Callable[[str, Path, dict], str]]:
    """`model_server(model_uri, project, env)` serves the model until the test ends; its URL."""
    with ExitStack() as servers:
        yield lambda model_uri, project, env: servers.enter_context(serve(model_uri, project, env))


@pytest.fixture
def chromium() -> Iterator[Callable[..., object]]:
    """`chromium(extra_flags=[...])`: a Selenium driver on Debian's headless Chromium, quit at
    the end of the test (skips, saying why, without it)."""
    reason = browser.missing()
    if reason:
        pytest.skip(reason)
    with ExitStack() as drivers:
        yield lambda **options: drivers.enter_context(browser.chromium(**options))


def post(url: str, payload: dict) -> dict:
    request = urllib.request.Request(
        f"{url}/invocations",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)


def train_with_outage(
    folder: Path, server: object, restart_after: int | None, wait_s: str, env: dict | None = None
) -> tuple[subprocess.Popen, str, list[tuple[int, float]]]:
    """`python -m stages.train` in `folder`, stopping the tracking server (anything with
    stop(), start(), uri and back_at) at epoch 2 and starting it again after epoch
    `restart_after` (never, for None). The process, its stderr, (epoch, time) per epoch line."""
    env = (env or os.environ) | {
        "PYTHONUNBUFFERED": "1",
        "MLFLOW_TRACKING_URI": server.uri,
        "MLFLOW_EXPERIMENT_NAME": "outage",
        "MNIST_TRACKING_WAIT_S": wait_s,
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "stages.train"],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # the server is stopped and started from other threads: reading epoch lines goes on meanwhile
    stop = threading.Thread(target=server.stop)
    restart = threading.Thread(target=lambda: (stop.join(), server.start()))
    epochs, events = [], []
    for line in process.stdout:
        report = parse_epoch_line(line)
        if report is None:
            continue
        epoch = report.epoch
        epochs.append((epoch, time.monotonic()))
        if epoch == 2:
            stop.start()
            events.append(
                f"server stopping after epoch 2 ({time.monotonic() - epochs[0][1]:.1f} s)"
            )
        if epoch == restart_after:
            restart.start()  # once the stop has finished
            events.append(
                f"server started after epoch {epoch} ({time.monotonic() - epochs[0][1]:.1f} s)"
            )
    stderr = process.stderr.read()
    process.wait(timeout=120)
    stop.join()
    if restart_after is not None:
        restart.join()
    events.append(
        f"server answering again at {server.back_at - epochs[0][1]:.1f} s"
        if server.back_at
        else "server never back"
    )
    print("\n".join(events))
    print("epoch lines at " + ", ".join(f"{e}: {t - epochs[0][1]:.1f} s" for e, t in epochs))
    return process, stderr, epochs


def gaps(epochs: list[tuple[int, float]]) -> list[float]:
    return [later - earlier for (_, earlier), (_, later) in itertools.pairwise(epochs)]
