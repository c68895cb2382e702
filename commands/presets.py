"""Named presets from presets.yaml: run one as a DVC experiment, or all of them over several
seeds and print the README's table.

    python -m commands.presets list
    python -m commands.presets run NAME [--seed N]            (make exp ARGS=NAME)
    python -m commands.presets table [--seeds 1 2 3] [NAME ...] (make presets-table)

`table` queues one experiment per preset and seed (named `<preset>-seed<N>`), runs them one at a
time (one queue worker, so timings are not shared between two trainings), then
reads test accuracy and training time back from `dvc exp show`, prints a Markdown table and
writes it to results/presets.md, with each preset's learning curves (first seed) as
results/curves-<preset>.png.
"""

import argparse
import io
import json
import statistics
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

from mnist_dense.cli import PipelineError
from mnist_dense.figures import training_curves
from mnist_dense.params import PARAMS_FILE, as_override, parse_params, read_yaml
from tooling.dvc_queue import run_queue
from tooling.processes import tool

PRESETS_FILE = Path("presets.yaml")
RESULTS = Path("results")


def apply(params: dict, overrides: dict) -> dict:
    """params.yaml's mapping with dotted-key overrides applied."""
    result = {section: dict(values) for section, values in params.items()}
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        result.setdefault(section, {})[name] = value
    return result


def load_presets(path: Path = PRESETS_FILE, params_path: Path = PARAMS_FILE) -> dict:
    """The presets, each checked against params.yaml's schema."""
    presets = yaml.safe_load(Path(path).read_text())
    params = read_yaml(Path(params_path).read_text())
    for name, preset in presets.items():
        parse_params(apply(params, preset["overrides"]), f"{path}: {name}")
    return presets


def exp_command(name: str, overrides: dict, seed: int | None = None, queue: bool = False) -> list:
    """The `dvc exp run` line for a preset (and seed)."""
    if seed is not None:
        overrides = {**overrides, "train.seed": seed}
    command = ["dvc", "exp", "run", "-n", name if seed is None else f"{name}-seed{seed}"]
    if queue:
        command.append("--queue")
    for key, value in overrides.items():
        command += ["-S", as_override(key, value)]
    return command


def experiments() -> dict[str, dict]:
    """{experiment name: {"test_accuracy", "train_seconds"}} from `dvc exp show --json`."""
    shown = json.loads(
        subprocess.run(
            ["dvc", "exp", "show", "--json"], capture_output=True, text=True, check=True
        ).stdout
    )
    found = {}
    for baseline in shown:
        for exp in baseline.get("experiments") or []:
            metrics = exp["revs"][0]["data"].get("metrics") or {}
            evaluate = metrics.get("metrics/evaluate.json", {}).get("data", {})
            run = metrics.get("metrics/run.json", {}).get("data", {})
            if exp.get("name") and "test_accuracy" in evaluate:
                found[exp["name"]] = {
                    "test_accuracy": evaluate["test_accuracy"],
                    "train_seconds": run.get("train_seconds"),
                    "rev": exp["revs"][0]["rev"],
                }
    return found


def markdown_table(presets: dict, seeds: list[int], results: dict[str, dict]) -> str:
    lines = [
        f"| preset | overrides of params.yaml | test accuracy, mean ± sd over seeds "
        f"{', '.join(map(str, seeds))} | per seed | training time (median) |",
        "|---|---|---|---|---|",
    ]
    for name, preset in presets.items():
        runs = [results[f"{name}-seed{seed}"] for seed in seeds]
        accuracies = [100 * run["test_accuracy"] for run in runs]
        spread = statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
        seconds = statistics.median(run["train_seconds"] for run in runs)
        overrides = " ".join(f"`{as_override(k, v)}`" for k, v in preset["overrides"].items())
        lines.append(
            f"| {name} | {overrides or '(none)'} | {statistics.mean(accuracies):.2f} ± "
            f"{spread:.2f} % | {' / '.join(f'{a:.2f}' for a in accuracies)} | {seconds:.0f} s |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list")
    run = commands.add_parser("run")
    run.add_argument("name")
    run.add_argument("--seed", type=int)
    table = commands.add_parser("table")
    table.add_argument("names", nargs="*")
    table.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    args = parser.parse_args()
    try:
        presets = load_presets()
    except PipelineError as error:
        sys.exit(f"error: {error}")

    if args.command == "list":
        for name, preset in presets.items():
            print(f"{name:15} {preset['about']}")
        return
    names = [args.name] if args.command == "run" else args.names or list(presets)
    unknown = [name for name in names if name not in presets]
    if unknown:
        sys.exit(f"error: unknown preset {', '.join(unknown)}; known: {', '.join(presets)}")
    if args.command == "run":
        command = exp_command(args.name, presets[args.name]["overrides"], args.seed)
        sys.exit(subprocess.run(command).returncode)
    for name in names:
        for seed in args.seeds:
            command = exp_command(name, presets[name]["overrides"], seed, queue=True)
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    run_queue(tool("dvc"), 1, cwd=Path.cwd())
    chosen = {name: presets[name] for name in names}
    results = experiments()
    table = markdown_table(chosen, args.seeds, results)
    print(table)
    RESULTS.mkdir(exist_ok=True)
    command = (
        "make presets-table"
        if not args.names
        else f"python -m commands.presets table {' '.join(args.names)}"
    )
    (RESULTS / "presets.md").write_text(
        f"Regenerated by `{command}` (seeds {args.seeds}).\n\n{table}\n"
    )
    for name in names:
        save_curves(name, results[f"{name}-seed{args.seeds[0]}"]["rev"])


def save_curves(name: str, rev: str) -> None:
    """The experiment's learning curves (its committed metrics/history.csv) as a PNG."""
    history = subprocess.run(
        ["git", "show", f"{rev}:metrics/history.csv"], capture_output=True, text=True, check=True
    ).stdout
    figure = training_curves(pd.read_csv(io.StringIO(history)))
    figure.suptitle(f"preset {name}")
    figure.savefig(RESULTS / f"curves-{name}.png", dpi=80)


if __name__ == "__main__":
    main()
