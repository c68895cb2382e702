"""The MLflow UI, in a real browser (Debian's headless chromium): the address `make ui` prints
opens experiment mnist-dense on its training runs, listed by their DVC experiment names."""

import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from mnist_dense.store import EXPERIMENT_TAGS
from tests.conftest import EXPERIMENTS, client_of, copy_of
from tooling import browser
from tooling.processes import ServiceError, free_port, wait_until

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
