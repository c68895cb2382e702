"""Screenshots of the MLflow UI on this project's runs, taken in headless Chromium.

    make ui-screenshots          (python -m tooling.ui_screenshots [RUN_A RUN_B])

Starts `mlflow ui` on the project's store (MLFLOW_TRACKING_URI or mlflow.db) on a free port
of 127.0.0.1, opens the address `make ui` prints, and saves into results/:
- ui-runs.png: the runs table of experiment mnist-dense, with test_accuracy and val_accuracy
  shown, best first;
- ui-compare.png: two runs compared, params side by side;
- ui-val-accuracy.png: the two runs' val_accuracy curves overlaid;
- ui-figures.png: a run's figures (its learning curves).
The two runs are the best two by test accuracy unless given. The store needs two finished runs
(`make run`, then `dvc exp run -S train.epochs=5`).
"""

from mnist_dense.runtime.process import prepare

prepare()  # first: telemetry off and MLflow quiet, before it loads

import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import urllib.parse  # noqa: E402
import urllib.request  # noqa: E402
from pathlib import Path  # noqa: E402

from mlflow.tracking import MlflowClient  # noqa: E402

from mnist_dense.errors import PipelineError  # noqa: E402
from mnist_dense.runtime.cli import run  # noqa: E402
from mnist_dense.tracking import store  # noqa: E402
from tooling import browser  # noqa: E402
from tooling.processes import free_port  # noqa: E402

RESULTS = Path("results")


def start_ui(port: int) -> tuple[subprocess.Popen, str]:
    """`python -m commands.ui` as `make ui` runs it; the address it prints first."""
    process = subprocess.Popen(
        [sys.executable, "-m", "commands.ui", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,  # its own process group: stopping it stops its workers
    )
    return process, process.stdout.readline().strip()


def click_text(driver: object, text: str, tag: str = "*") -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.XPATH, f"//{tag}[normalize-space(.)='{text}']").click()


def close_assistant(driver: object) -> None:
    """The UI opens an assistant panel beside the table; a screenshot wants the table."""
    from selenium.webdriver.common.by import By

    for button in driver.find_elements(By.XPATH, "//button[@aria-label='Close']"):
        button.click()


def show_columns(driver: object, names: list[str]) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    columns = next(
        b
        for b in driver.find_elements(
            By.XPATH, "//button[@data-testid='column-selection-dropdown']"
        )
        if "Columns" in b.text
    )
    columns.click()
    for name in names:
        browser.wait_for(lambda n=name: click_text(driver, n, "span") or True, f"column {name}")
    driver.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)


def metric_query(runs: list[str], experiment: str, metric: str) -> str:
    """The query of the UI's metric page as the page parses it: JSON values, plain axes (it
    shows an error for a missing value)."""
    values = {
        "runs": runs,
        "metric": metric,
        "experiments": [experiment],
        "plot_metric_keys": [metric],
        "plot_layout": {"autosize": True, "xaxis": {}, "yaxis": {}},
        "line_smoothness": 1,
        "show_point": True,
        "deselected_curves": [],
        "last_linear_y_axis_range": [],
    }
    query = "&".join(f"{k}={urllib.parse.quote(json.dumps(v))}" for k, v in values.items())
    return f"{query}&x_axis=step&y_axis_scale=linear&workflowType=machine_learning"


def best_runs(client: MlflowClient, experiment: str, count: int = 2) -> list:
    runs = client.search_runs(
        [experiment],
        filter_string="attributes.status = 'FINISHED' and metrics.test_accuracy > 0",
        order_by=["metrics.test_accuracy DESC"],
        max_results=count,
    )
    if len(runs) < count:
        raise PipelineError(
            f"the store holds {len(runs)} evaluated run(s) in {store.experiment_name()}; "
            "the screenshots need two (make run, then dvc exp run -S train.epochs=5)"
        )
    return runs


def main() -> None:
    from selenium.webdriver.common.by import By

    reason = browser.missing()
    if reason:
        raise PipelineError(reason)
    client = MlflowClient(store.connect())
    experiment = store.experiment_id(client, store.experiment_name())
    chosen = sys.argv[1:3] or [r.info.run_id for r in best_runs(client, experiment)]
    names = {run_id: client.get_run(run_id).info.run_name for run_id in chosen}
    process, url = start_ui(free_port())
    base = url.split("/#/", 1)[0]
    browser.wait_for(lambda: urllib.request.urlopen(f"{base}/health", timeout=2), "mlflow ui", 120)
    RESULTS.mkdir(exist_ok=True)
    try:
        with browser.chromium(1600, 900) as driver:
            driver.get(url)
            browser.wait_for(
                lambda: names[chosen[0]] in browser.page_text(driver), "runs table", 120
            )
            close_assistant(driver)
            show_columns(driver, ["test_accuracy", "val_accuracy"])
            time.sleep(2)
            driver.save_screenshot(str(RESULTS / "ui-runs.png"))

            mode = "workflowType=machine_learning"
            runs = urllib.parse.quote(json.dumps(chosen))
            experiments = urllib.parse.quote(json.dumps([experiment]))
            driver.get(f"{base}/#/compare-runs?runs={runs}&experiments={experiments}&{mode}")
            browser.wait_for(lambda: "train.hidden_units" in browser.page_text(driver), "compare")
            time.sleep(2)
            close_assistant(driver)
            click_text(driver, "Visualizations")  # folded, so the params table is in view
            driver.find_element(By.XPATH, "//*[@role='switch']").click()  # "Show diff only"
            time.sleep(1)
            driver.save_screenshot(str(RESULTS / "ui-compare.png"))

            driver.get(f"{base}/#/metric?{metric_query(chosen, experiment, 'val_accuracy')}")
            curve = f"{names[chosen[0]]} (val_accuracy)"
            browser.wait_for(lambda: curve in browser.page_text(driver), "curves")
            time.sleep(4)
            close_assistant(driver)
            driver.save_screenshot(str(RESULTS / "ui-val-accuracy.png"))

            figure = "artifacts/figures/training_curves.png"
            run_page = f"{base}/#/experiments/{experiment}/runs/{chosen[0]}"
            driver.get(f"{run_page}/{figure}?{mode}")
            browser.wait_for(lambda: "training_curves.png" in browser.page_text(driver), "figure")
            time.sleep(3)
            close_assistant(driver)
            driver.save_screenshot(str(RESULTS / "ui-figures.png"))
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    for name in ("ui-runs", "ui-compare", "ui-val-accuracy", "ui-figures"):
        print(f"wrote {RESULTS / name}.png")


if __name__ == "__main__":
    run(main)
