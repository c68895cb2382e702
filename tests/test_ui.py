"""The MLflow UI, in a real browser (Debian's headless chromium): the address `make ui` prints
opens experiment mnist-dense on its training runs, listed by their DVC experiment names."""

import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from commands.ui import check_host
from mnist_dense.errors import PipelineError
from mnist_dense.tracking.store import EXPERIMENT_TAGS
from tests.conftest import EXPERIMENTS, client_of, copy_of
from tooling import browser
from tooling.processes import ServiceError, free_port, port_free, wait_until

NAMES = list(EXPERIMENTS)  # two DVC experiments, each an MLflow run named after it


@pytest.fixture(scope="module")
def ui_project(built_experiments, tmp_path_factory) -> Path:
    """The module's copy of the project with EXPERIMENTS (its tests only read it)."""
    return copy_of(built_experiments[0], tmp_path_factory.mktemp("ui") / "project")


@pytest.fixture(scope="module")
def ui(ui_project, built_experiments):
    """`make ui`'s command on a free port, started once for the module's tests (they only
    read); yields the address it prints first."""
    folder, env = ui_project, built_experiments[1]
    log = folder.parent / "ui.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "commands.ui", "--port", str(free_port())],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
        text=True,
        start_new_session=True,
    )
    try:
        url = process.stdout.readline().strip()
        base = url.split("/#/", 1)[0]

        def answers() -> bool:
            try:
                return bool(urllib.request.urlopen(f"{base}/health", timeout=2))
            except OSError:
                return False

        # under a minute on an idle 2-core machine, far more beside the other worker's trainings
        try:
            wait_until(answers, "mlflow ui", 400, alive=lambda: process.poll() is None)
        except ServiceError as error:
            raise AssertionError(f"{error}; its log ends: {log.read_text()[-2000:]}") from None
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def test_make_ui_prints_the_address_of_the_runs_view(ui, ui_project):
    experiment = client_of(ui_project).get_experiment_by_name("e2e")
    assert ui.startswith("http://127.0.0.1:")
    assert ui.endswith(f"/#/experiments/{experiment.experiment_id}?workflowType=machine_learning")
    for key, value in EXPERIMENT_TAGS.items():
        assert experiment.tags[key] == value


def test_the_printed_address_lists_the_runs_by_their_dvc_experiment_names(ui, chromium):
    driver = chromium()
    driver.get(ui)
    browser.wait_for(lambda: all(n in browser.page_text(driver) for n in NAMES), "runs", 240)
    text = browser.page_text(driver)
    assert "Runs" in text and "Model registry" in text  # the model-training view, not GenAI's
    assert all(name in text for name in NAMES)


def refused(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """`python -m commands.ui ARGS` on a free port with a store of its own in tmp_path, which
    must end as it began: nothing created, nothing listening."""
    port = free_port()
    store = tmp_path / "store.db"
    kept = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    kept = {k: v for k, v in kept.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}  # no browser
    env = kept | {"MLFLOW_BACKEND_STORE_URI": f"sqlite:///{store}"}
    result = subprocess.run(
        [sys.executable, "-m", "commands.ui", *args, "--port", str(port)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stdout == "" and not store.exists() and port_free(port)
    return result


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.7", "mlflow.example.org"])
def test_the_tracking_server_refuses_any_host_but_loopback(tmp_path, host):
    """`make mlflow-server` asks for no credentials: reachable from elsewhere, anyone could
    move the champion (issue 33 tried --host 0.0.0.0 and got 200 without credentials)."""
    result = refused(tmp_path, "--serve", "--host", host, "--public-because", "a demo")
    assert result.stderr.startswith(f"error: --host {host}: `make mlflow-server` asks no one")
    assert "127.0.0.1, ::1 or localhost only" in result.stderr and "make team-up" in result.stderr


@pytest.mark.parametrize("because", [None, "  "])
def test_the_ui_refuses_a_non_loopback_host_unless_told_why(tmp_path, because):
    reason = [] if because is None else ["--public-because", because]
    result = refused(tmp_path, "--host", "0.0.0.0", *reason)
    assert result.stderr.startswith("error: --host 0.0.0.0: the UI asks no one for credentials")
    assert '--public-because "..."' in result.stderr


def test_loopback_hosts_pass_and_a_reason_lets_the_ui_but_not_the_server_out(capsys):
    for host in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost", "LOCALHOST"):
        check_host(host, serve=True, public_because=None)
        check_host(host, serve=False, public_because=None)
    assert capsys.readouterr().err == ""
    check_host("0.0.0.0", serve=False, public_because="a demo on the lab's screen")
    assert "because: a demo on the lab's screen" in capsys.readouterr().err
    with pytest.raises(PipelineError, match="asks no one for credentials"):
        check_host("0.0.0.0", serve=True, public_because="a demo on the lab's screen")
