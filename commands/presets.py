"""Named presets from presets.yaml: run one as a DVC experiment, or all of them over several
seeds and print the presets table (results/presets.md, docs/results.md).

    python -m commands.presets list
    python -m commands.presets run NAME [--seed N]            (make exp ARGS=NAME)
    python -m commands.presets table [--seeds 1 2 3] [NAME ...] (make presets-table)
    python -m commands.presets table --collect COMMIT     (the table of experiments already run)

A preset is an absolute configuration: the committed params.yaml (HEAD's) with the preset's
overrides, whatever the workspace's params.yaml holds (`dvc exp run` applies an experiment's
params to it), so two presets run back to back give what each gives from a clean checkout.

`table` queues one experiment per preset and seed (named `<preset>-seed<N>`), runs them one at a
time (one queue worker, so timings are not shared between two trainings), then
reads test accuracy, training time and kernel path back from `dvc exp show`, prints a Markdown
table and writes it to results/presets.md, with each preset's training time as a multiple of
seed-notebook's (measured in the same run), a second table of each preset's first-seed model
on the real-use images drawn from the validation digits (commands/real_use.py, per writing
and paper style), and each preset's learning curves (first seed) as results/curves-<preset>.png.
"""

import argparse
import io
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

from mnist_dense.config import MODEL, PARAMS_FILE, apply, as_override, load_presets, read_yaml
from mnist_dense.errors import PipelineError
from mnist_dense.figures import training_curves
from tooling.dvc_queue import run_queue
from tooling.processes import tool

YARDSTICK = "seed-notebook"  # the reference every training time is a multiple of
RESULTS = Path("results")


def committed_params() -> dict:
    """params.yaml as HEAD has it (the workspace's when the project is not a git checkout)."""
    shown = subprocess.run(
        ["git", "show", f"HEAD:{PARAMS_FILE}"], capture_output=True, text=True, check=False
    )
    return read_yaml(shown.stdout if shown.returncode == 0 else PARAMS_FILE.read_text())


def absolute_overrides(overrides: dict, committed: dict, workspace: dict) -> dict:
    """The `-S` settings that turn the workspace's params into committed + overrides: the
    preset's own keys, and every key an earlier experiment left changed."""
    target = apply(committed, overrides)
    reset = {
        f"{section}.{name}": value
        for section, values in target.items()
        for name, value in values.items()
        if workspace.get(section, {}).get(name) != value and f"{section}.{name}" not in overrides
    }
    return {**overrides, **reset}


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


def experiments(baseline: str = "HEAD") -> dict[str, dict]:
    """{experiment name: {"test_accuracy", "train_seconds", "kernels", "rev"}} of the
    experiments on commit `baseline`, from `dvc exp show --json` (HEAD may move meanwhile)."""
    shown = json.loads(
        subprocess.run(
            ["dvc", "exp", "show", "--json", "--rev", baseline],
            capture_output=True,
            text=True,
            check=True,
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
                    "kernels": run.get("kernel_path", "?"),
                    "rev": exp["revs"][0]["rev"],
                }
    return found


def markdown_table(presets: dict, seeds: list[int], results: dict[str, dict]) -> str:
    lines = [
        f"| preset | overrides of params.yaml | test accuracy, mean ± sd over seeds "
        f"{', '.join(map(str, seeds))} | per seed | training time (median) | time / {YARDSTICK} "
        "| kernels |",
        "|---|---|---|---|---|---|---|",
    ]
    median_seconds = {
        name: statistics.median(results[f"{name}-seed{seed}"]["train_seconds"] for seed in seeds)
        for name in presets
    }
    for name, preset in presets.items():
        runs = [results[f"{name}-seed{seed}"] for seed in seeds]
        accuracies = [100 * run["test_accuracy"] for run in runs]
        spread = statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
        seconds = median_seconds[name]
        ratio = f"{seconds / median_seconds[YARDSTICK]:.1f}x" if YARDSTICK in presets else "-"
        overrides = " ".join(f"`{as_override(k, v)}`" for k, v in preset["overrides"].items())
        kernels = "/".join(sorted({run["kernels"] for run in runs}))
        lines.append(
            f"| {name} | {overrides or '(none)'} | {statistics.mean(accuracies):.2f} ± "
            f"{spread:.2f} % | {' / '.join(f'{a:.2f}' for a in accuracies)} | {seconds:.0f} s "
            f"| {ratio} | {kernels} |"
        )
    return "\n".join(lines)


def real_use_table(scores: dict[str, dict[str, dict[str, tuple[float, int]]]]) -> str:
    """{preset: {"writing"|"paper": {style: (share, images)}}} as a Markdown table."""
    styles = [
        (kind, style)
        for kind in ("writing", "paper")
        for style in next(iter(scores.values()))[kind]
    ]
    lines = [
        "| preset | " + " | ".join(style for _, style in styles) + " |",
        "|---|" + "---|" * len(styles),
    ]
    for name, shares in scores.items():
        cells = [f"{100 * shares[kind][style][0]:.1f}" for kind, style in styles]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def real_use_scores(names: list[str], results: dict[str, dict], seed: int) -> dict:
    """Each preset's first-seed model on the real-use images of the validation digits (the
    same images for every preset: they all validate on the same digits)."""
    from commands.predict import predict_files
    from commands.real_use import COUNT, build, by_style, read_correctly

    scores = {}
    with tempfile.TemporaryDirectory(prefix="presets-") as folder:
        files, labels, styles = build(COUNT, Path(folder) / "real-use", source="validation")
        for name in names:
            model = Path(folder) / f"{name}.keras"
            model.write_bytes(experiment_file(results[f"{name}-seed{seed}"]["rev"], MODEL))
            correct = read_correctly(predict_files(str(model), files), labels)
            scores[name] = {kind: by_style(correct, styles, kind) for kind in ("writing", "paper")}
    return scores


def git_head() -> str:
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()


def experiment_file(rev: str, path: Path) -> bytes:
    """A DVC-tracked output as experiment `rev` made it (DVC's API, from its cache)."""
    import dvc.api

    return dvc.api.read(str(path), repo=".", rev=rev, mode="rb")


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
    table.add_argument(
        "--collect",
        metavar="COMMIT",
        help="queue nothing: make the table from the experiments already run on COMMIT "
        "(after an interrupted table, say)",
    )
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
    committed, workspace = committed_params(), read_yaml(PARAMS_FILE.read_text())
    if committed != workspace:
        print(
            f"presets: {PARAMS_FILE} differs from the committed one; each preset starts from "
            f"the committed {PARAMS_FILE} (`git checkout {PARAMS_FILE}` resets the workspace)"
        )
    settings = {
        name: absolute_overrides(presets[name]["overrides"], committed, workspace) for name in names
    }
    if args.command == "run":
        command = exp_command(args.name, settings[args.name], args.seed)
        sys.exit(subprocess.run(command).returncode)
    baseline = args.collect or git_head()
    if not args.collect:
        for name in names:
            for seed in args.seeds:
                command = exp_command(name, settings[name], seed, queue=True)
                subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        run_queue(tool("dvc"), 1, cwd=Path.cwd())
    chosen = {name: presets[name] for name in names}
    results = experiments(baseline)
    missing = [f"{n}-seed{s}" for n in names for s in args.seeds if f"{n}-seed{s}" not in results]
    if missing:
        sys.exit(f"error: no experiment {', '.join(missing)} on commit {baseline[:12]}")
    table = markdown_table(chosen, args.seeds, results)
    scores = real_use_scores(names, results, args.seeds[0])
    images = sum(count for _, count in scores[names[0]]["writing"].values())
    table += (
        f"\n\nReal use, seed {args.seeds[0]}'s model of each preset: the share read correctly of "
        f"{images:,} images drawn from the validation digits (commands/real_use.py), "
        f"per writing and paper style, %.\n\n{real_use_table(scores)}"
    )
    print(table)
    RESULTS.mkdir(exist_ok=True)
    command = (
        "make presets-table"
        if not args.names
        else f"python -m commands.presets table {' '.join(args.names)}"
    )
    note = f"; the experiments it ran on {baseline[:7]} read back with `--collect`" * bool(
        args.collect
    )
    (RESULTS / "presets.md").write_text(
        f"Regenerated by `{command}` (seeds {args.seeds}{note}).\n\n{table}\n"
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
