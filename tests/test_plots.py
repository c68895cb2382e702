"""DVC's plot pages render with no network: the template carries vega itself, and the figures
are image plots, byte for byte the same for the same params."""

import hashlib
import json
import re

import yaml

from commands.plots import OFFLINE, drawn, render
from mnist_dense.config import CONFUSION_PNG, CURVES_PNG, MISCLASSIFIED_PNG
from tests.conftest import EXPERIMENTS, ROOT
from tooling import browser

TEMPLATE, RECORD = ROOT / "plots" / "template.html", ROOT / "plots" / "vendor.json"


def test_the_template_carries_the_vendored_libraries_and_loads_nothing():
    template = TEMPLATE.read_text()
    record = json.loads(RECORD.read_text())
    scripts = dict(
        re.findall(r'<script data-package="([^@"]+)@[^"]+">(.*?)</script>', template, re.S)
    )
    assert set(scripts) == {"vega", "vega-lite", "vega-embed"} == set(record)
    for name, text in scripts.items():
        assert hashlib.sha256(text.encode()).hexdigest() == record[name]["sha256"], name
        assert record[name]["npm_integrity"].startswith("sha512-")
    assert not re.search(r"<(script|link)[^>]+(src|href)=", template)  # nothing fetched
    assert "{plot_divs}" in template and "{scripts}" not in template  # DVC adds no CDN tags
    config = (ROOT / ".dvc" / "config").read_text()
    assert re.search(r"html_template = \.\./plots/template\.html", config)


def declared_plots(project) -> tuple[int, int]:
    """How many chart plots and image plots dvc.yaml declares."""
    pipeline = yaml.safe_load((project / "dvc.yaml").read_text())
    files = [
        next(iter(entry)) if isinstance(entry, dict) else entry
        for stage in pipeline["stages"].values()
        for entry in stage.get("plots", [])
    ]
    images = sum(name.endswith(".png") for name in files)
    return len(files) - images + len(pipeline.get("plots", [])), images


def test_plots_diff_of_two_experiments_renders_every_plot_offline(
    project_with_experiments, tmp_path, chromium
):
    folder, _ = project_with_experiments
    page = render(list(EXPERIMENTS), tmp_path / "out", cwd=folder)
    html = page.read_text()
    assert not re.search(r"<(script|link)[^>]+(src|href)=\"?https?:", html)  # no CDN
    charts, images = declared_plots(folder)
    driver = chromium(extra_flags=OFFLINE)
    driver.get(page.as_uri())
    browser.wait_for(lambda: drawn(driver)["charts"] >= charts, "every chart", 60)
    browser.wait_for(lambda: drawn(driver)["images"] >= 2 * images, "every image", 60)
    counts = drawn(driver)
    assert counts["divs"] == charts  # one chart per declared plot, both experiments in each
    assert counts["charts"] >= charts
    assert counts["images"] == 2 * images  # each image plot once per experiment


def test_the_figures_are_the_same_bytes_for_the_same_params(forced_rerun):
    figures = [str(path) for path in (CURVES_PNG, CONFUSION_PNG, MISCLASSIFIED_PNG)]
    before = {path: forced_rerun.files_before[path] for path in figures}
    assert all(data.startswith(b"\x89PNG") for data in before.values())
    assert {path: forced_rerun.files_after[path] for path in figures} == before
