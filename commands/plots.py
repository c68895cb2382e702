"""`dvc plots diff` of two experiments, rendered offline and photographed.

    make plots [ARGS="exp-a exp-b"]      (python -m commands.plots [REV ...])

Runs `dvc plots diff` (by default HEAD against the newest experiment) into
dvc_plots/, with the project's template, which carries vega, vega-lite and vega-embed itself
(plots/template.html, `make vendor-plots`), so the page needs no network. Then opens it in
headless Chromium, waits until every chart is drawn and every image loaded, and saves the whole
page as results/plots-diff.png.
"""

import json
import subprocess
import sys
from pathlib import Path

from mnist_dense.errors import PipelineError
from mnist_dense.runtime.cli import run
from tooling import browser
from tooling.processes import tool

OUT = Path("dvc_plots")
SCREENSHOT = Path("results/plots-diff.png")
# No network at all for the page: a proxy that is never there (local files are not proxied).
OFFLINE = ["--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=<-loopback>"]


def newest_experiment() -> str:
    shown = subprocess.run(
        [tool("dvc"), "exp", "show", "--json"], capture_output=True, text=True, check=True
    ).stdout
    found = [
        (exp["revs"][0]["data"].get("timestamp") or "", exp["name"])
        for baseline in json.loads(shown)
        for exp in baseline.get("experiments") or []
        if exp.get("name")
    ]
    if not found:
        raise PipelineError(
            "no experiment to compare with (dvc exp run -S train.epochs=5 makes one)"
        )
    return max(found)[1]


def render(revisions: list[str], out: Path = OUT, cwd: Path | None = None) -> Path:
    """`dvc plots diff` into `out` (in the project at `cwd`); the page's path."""
    result = subprocess.run(
        [tool("dvc"), "plots", "diff", *revisions, "--out", str(out)],
        cwd=cwd,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise PipelineError(f"dvc plots diff {' '.join(revisions)} failed: {result.stderr.strip()}")
    return (Path(cwd or ".") / out / "index.html").resolve()


def drawn(driver: object) -> dict[str, int]:
    """How many charts (vega canvases or SVGs) and loaded images the page shows."""
    return driver.execute_script(
        "return {charts: document.querySelectorAll('.vega-embed canvas, .vega-embed svg').length,"
        " images: Array.from(document.images).filter(i => i.complete && i.naturalWidth > 0).length,"
        " divs: document.querySelectorAll('.vega-embed').length}"
    )


def photograph(page: Path, screenshot: Path, width: int = 1500) -> dict[str, int]:
    """Open the page offline, wait for every chart and image, save a full-page PNG."""
    with browser.chromium(width, 1000, extra_flags=OFFLINE) as driver:
        driver.get(page.resolve().as_uri())
        browser.wait_for(
            lambda: drawn(driver)["charts"] >= drawn(driver)["divs"] > 0, "the charts", 60
        )
        height = driver.execute_script("return document.body.scrollHeight")
        driver.set_window_size(width, min(height + 100, 12000))
        counts = drawn(driver)
        screenshot.parent.mkdir(exist_ok=True)
        driver.save_screenshot(str(screenshot))
    return counts


def main() -> None:
    reason = browser.missing()
    if reason:
        raise PipelineError(reason)
    # by default the committed baseline against its newest experiment: after `dvc exp run`
    # the workspace holds that experiment's results, so comparing with it would show one twice
    revisions = sys.argv[1:] or ["HEAD", newest_experiment()]
    page = render(revisions)
    counts = photograph(page, SCREENSHOT)
    print(
        f"dvc plots diff {' '.join(revisions)}: {counts['charts']} charts and "
        f"{counts['images']} images drawn offline in {page}; wrote {SCREENSHOT}"
    )


if __name__ == "__main__":
    run(main)
