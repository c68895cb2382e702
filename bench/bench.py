"""make bench: how fast the pipeline is on this machine, against a plain Keras baseline.

1. The seed notebook's training as a plain Keras script (bench/baseline.py) against this
   project's train stage with the same hyperparameters (the seed-notebook preset of
   presets.yaml), run alternately A B A B A B: wall times, ratios pair by pair, test accuracies.
2. Each stage of the default configuration: wall time and peak resident memory; the whole
   pipeline through `dvc repro`; a no-op `dvc repro`.
3. The size on disk of every artifact.
4. The compute floor: the FLOPs of one training epoch against the float32 GEMM throughput
   NumPy reaches here, and how far the train stage is from it.
5. float32 against mixed_bfloat16 on the best preset's network (a few epochs each): time per
   epoch and accuracy, side by side; bfloat16 forced (MNIST_BF16=force) where the CPU lacks
   bfloat16 units, to show what emulation costs.
6. Where a training step of the best preset goes: the step itself against each distortion,
   per batch (bench/profile_step.py).
7. The portable kernel path against the native one: the seed-notebook preset and the default,
   training time and test accuracy side by side.
8. Each stage's start-up, at HEAD against the tree before the one quiet entry point and the
   download stage without TensorFlow (START_UP_BEFORE).

Everything runs in a scratch folder (the project's workspace and MLflow store are not
touched); data/raw must exist (`dvc repro download`). Prints a Markdown report and writes
it to results/bench.md. `--only kernels` runs section 7 alone and writes
results/bench-kernels.md (`make bench ARGS='--only kernels'`); `--only start-up`, section 8,
results/bench-start-up.md.
"""

import argparse
import io
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from mnist_dense.config import CLASSES, PIXELS, apply, load_presets, read_yaml
from mnist_dense.runtime import kernels
from mnist_dense.tracking.provenance import cpu_name
from tooling.processes import clean_environment
from tooling.project_copy import scratch_copy

ROOT = Path.cwd()
RESULTS = ROOT / "results" / "bench.md"
SEEDS = [1, 2, 3]  # one alternating pair per seed
Report = Callable[..., None]


@dataclass
class Measured:
    seconds: float
    peak_mib: float
    stdout: str


def measure(command: list[str], cwd: Path, env: dict) -> Measured:
    """Run a command; its wall time and the peak resident memory of its process tree."""
    with tempfile.TemporaryFile("w+") as stderr:
        started = time.perf_counter()
        process = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True
        )
        stdout = process.stdout.read()
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        if os.waitstatus_to_exitcode(status) != 0:
            stderr.seek(0)
            sys.exit(f"error: `{' '.join(command)}` failed in {cwd}:\n{stderr.read()[-2000:]}")
    return Measured(seconds, usage.ru_maxrss / 1024, stdout)


def workspace(folder: Path, overrides: dict) -> Path:
    """A folder set up as a project root: params.yaml with `overrides`, the raw data."""
    folder.mkdir(parents=True)
    write_params(folder, overrides)
    (folder / "data").mkdir()
    (folder / "data" / "raw").symlink_to(ROOT / "data" / "raw")
    return folder


def write_params(folder: Path, overrides: dict) -> dict:
    params = apply(read_yaml((ROOT / "params.yaml").read_text()), overrides)
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return params


def stage(name: str, folder: Path, env: dict) -> Measured:
    return measure([sys.executable, "-m", f"stages.{name}"], folder, env)


def read_json(folder: Path, name: str) -> dict:
    return json.loads((folder / "metrics" / name).read_text())


def steady_epoch_seconds(stdout: str) -> float:
    """Median epoch time from the train stage's log, leaving out the first (graph tracing)."""
    times = [float(t) for t in re.findall(r"^epoch \d+/\d+ - ([\d.]+) s", stdout, re.M)]
    return statistics.median(times[1:])


def gemm_gflops(m: int, k: int, n: int, seconds: float = 1.0) -> float:
    """float32 matrix-product throughput NumPy reaches for (m x k) @ (k x n)."""
    rng = np.random.default_rng(0)
    a, b = rng.random((m, k), np.float32), rng.random((k, n), np.float32)
    a @ b
    rates = []
    for _ in range(5):
        count, started = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - started) < seconds / 5:
            a @ b
            count += 1
        rates.append(2 * m * k * n * count / elapsed / 1e9)
    return statistics.median(rates)


def epoch_flops(units: list[int], train: int, validation: int) -> float:
    """Matrix-product FLOPs of one epoch: forward, weight and input gradients, validation."""
    layers = list(zip([PIXELS, *units], [*units, CLASSES], strict=True))
    forward = sum(2 * i * o for i, o in layers)
    input_gradients = sum(2 * i * o for i, o in layers[1:])  # none needed for the pixels
    return train * (2 * forward + input_gradients) + validation * forward


def size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def seed_notebook_against_baseline(scratch: Path, env: dict, overrides: dict, report: Report):
    """Section 1; returns the pairs' figures (section 4 uses the epoch times)."""
    folder = workspace(scratch / "seed-notebook", overrides)
    train = read_yaml((folder / "params.yaml").read_text())["train"]
    shape = "-".join(map(str, [PIXELS, *train["hidden_units"], CLASSES]))
    stage("preprocess", folder, env)
    report(
        "",
        "## 1. Seed notebook: plain Keras script against the train stage",
        "",
        f"Same hyperparameters (preset `seed-notebook`: {shape}, Adam {train['learning_rate']}, "
        f"batch {train['batch_size']}, {train['epochs']} "
        "epochs, the last 20 % of the training images to validate), run alternately. The "
        "baseline is `bench/baseline.py` (`model.fit` on NumPy arrays, Keras defaults, the "
        "CPU's own kernels); the project runs `python -m stages.train` as `dvc repro` does, "
        "MLflow logging included, on its default (portable) kernel path; section 7 prices that "
        "path. Wall time is the whole process (imports, data, training, saving).",
        "",
        "| pair | baseline wall | baseline fit | project wall | project training | "
        "ratio (wall) | ratio (training) | baseline test acc. | project test acc. |",
        "|---|---|---|---|---|---|---|---|---|",
    )
    baseline = [sys.executable, str(ROOT / "bench" / "baseline.py"), "data/processed"]
    user_env = kernels.outside_environment(env)  # a plain script: the CPU's own kernels
    baseline += ["--hidden", *map(str, train["hidden_units"]), "--epochs", str(train["epochs"])]
    baseline += ["--batch-size", str(train["batch_size"])]
    baseline += ["--learning-rate", str(train["learning_rate"])]
    pairs = []
    for pair, seed in enumerate(SEEDS, start=1):
        base = measure(baseline, folder, user_env)
        base_result = json.loads(base.stdout.strip().splitlines()[-1])
        write_params(folder, overrides | {"train.seed": seed})
        project = stage("train", folder, env)
        stage("evaluate", folder, env)
        p = {
            "base_wall": base.seconds,
            "base_fit": base_result["fit_seconds"],
            "base_acc": base_result["test_accuracy"],
            "wall": project.seconds,
            "training": read_json(folder, "run.json")["train_seconds"],
            "acc": read_json(folder, "evaluate.json")["test_accuracy"],
            "epoch": steady_epoch_seconds(project.stdout),
        }
        pairs.append(p)
        report(
            f"| {pair} | {p['base_wall']:.1f} s | {p['base_fit']:.1f} s | {p['wall']:.1f} s | "
            f"{p['training']:.1f} s | {p['base_wall'] / p['wall']:.2f}x | "
            f"{p['base_fit'] / p['training']:.2f}x | {100 * p['base_acc']:.2f} % | "
            f"{100 * p['acc']:.2f} % |"
        )

    def median(key: str) -> float:
        return statistics.median(p[key] for p in pairs)

    base_accs = [100 * p["base_acc"] for p in pairs]
    accs = [100 * p["acc"] for p in pairs]
    gap = abs(statistics.mean(base_accs) - statistics.mean(accs))
    spread = max(max(base_accs) - min(base_accs), max(accs) - min(accs))
    report(
        f"| **median** | {median('base_wall'):.1f} s | {median('base_fit'):.1f} s | "
        f"{median('wall'):.1f} s | {median('training'):.1f} s | "
        f"**{statistics.median(p['base_wall'] / p['wall'] for p in pairs):.2f}x** | "
        f"**{statistics.median(p['base_fit'] / p['training'] for p in pairs):.2f}x** | "
        f"{statistics.mean(base_accs):.2f} ± {statistics.stdev(base_accs):.2f} % | "
        f"{statistics.mean(accs):.2f} ± {statistics.stdev(accs):.2f} % |",
        "",
        f"Test accuracies: means differ by {gap:.2f} points; the run-to-run range is "
        f"{spread:.2f} points: {'they agree' if gap <= spread else 'THEY DIFFER'}.",
    )
    return {
        "units": train["hidden_units"],
        "epochs": train["epochs"],
        "train_images": len(np.load(folder / "data/processed/y_train.npy", allow_pickle=False)),
        "val_images": len(np.load(folder / "data/processed/y_val.npy", allow_pickle=False)),
        "epoch": median("epoch"),
        "base_epoch": median("base_fit") / train["epochs"],
    }


def default_stage_by_stage(scratch: Path, env: dict, report: Report) -> Path:
    """Section 2; returns the default workspace (section 3 measures its artifacts)."""
    default = workspace(scratch / "default", {})
    stages = {name: stage(name, default, env) for name in ("preprocess", "train", "evaluate")}
    copy = scratch / "pipeline"
    copy.mkdir()
    scratch_copy(ROOT, copy)
    dvc = [str(Path(sys.executable).parent / "dvc")]
    pipeline = measure(
        [*dvc, "repro", "--force", "--no-run-cache", "--downstream", "preprocess"], copy, env
    )
    noop = [measure([*dvc, "repro"], copy, env).seconds for _ in range(3)]
    report(
        "",
        "## 2. The default configuration, stage by stage",
        "",
        "| step | wall time | peak memory (RSS) |",
        "|---|---|---|",
        *(
            f"| `python -m stages.{name}` | {m.seconds:.1f} s | {m.peak_mib:.0f} MiB |"
            for name, m in stages.items()
        ),
        f"| whole pipeline, `dvc repro` (data downloaded) | {pipeline.seconds:.1f} s | "
        f"{pipeline.peak_mib:.0f} MiB (largest process) |",
        f"| no-op `dvc repro` (median of 3) | {statistics.median(noop):.2f} s | |",
        "",
        f"Default test accuracy {100 * read_json(default, 'evaluate.json')['test_accuracy']:.2f} "
        f"%, training {read_json(default, 'run.json')['train_seconds']:.1f} s.",
    )
    return default


def artifact_sizes(default: Path, report: Report) -> None:
    """Section 3."""
    artifacts = [
        *sorted((default / "data" / "raw").resolve().iterdir()),
        *sorted((default / "data" / "processed").iterdir()),
        default / "models" / "model.keras",
        *sorted((default / "metrics").iterdir()),
    ]
    run_id = read_json(default, "run.json")["mlflow_run_id"]
    runs = [p for p in (default / "mlartifacts").rglob(run_id) if p.is_dir()]
    models = list((default / "mlartifacts").rglob("MLmodel"))
    report(
        "",
        "## 3. Artifacts of the default configuration",
        "",
        "| artifact | size |",
        "|---|---|",
        *(f"| {p.relative_to(p.parent.parent)} | {mib(size(p))} |" for p in artifacts),
        f"| MLflow run artifacts (figures, evaluation files) | {mib(size(runs[0]))} |",
        f"| MLflow logged model (weights and the bundled image code) | "
        f"{mib(size(models[-1].parent))} |",
    )


def compute_floor(seed_notebook: dict, report: Report) -> None:
    """Section 4."""
    s = seed_notebook
    flops = epoch_flops(s["units"], train=s["train_images"], validation=s["val_images"])
    peak = gemm_gflops(2048, 2048, 2048)
    small = gemm_gflops(32, PIXELS, s["units"][0])
    shape = f"32x{PIXELS}x{s['units'][0]}"
    report(
        "",
        "## 4. Compute floor (seed notebook network)",
        "",
        f"- one epoch: {flops / 1e9:.1f} GFLOP of matrix products (forward, weight and input "
        f"gradients on {s['train_images']:,} images, forward on {s['val_images']:,} for "
        "validation)",
        f"- NumPy float32 GEMM here: {peak:.0f} GFLOP/s at 2048x2048x2048, {small:.0f} "
        f"GFLOP/s at the training step's shape {shape}",
        f"- floor: {flops / peak / 1e9:.3f} s per epoch at the large-GEMM rate, "
        f"{flops / small / 1e9:.3f} s at the step-shape rate",
        f"- train stage: {s['epoch']:.2f} s per epoch (median, after the first): "
        f"{s['epoch'] / (flops / peak / 1e9):.1f}x the large-GEMM floor, "
        f"{s['epoch'] / (flops / small / 1e9):.1f}x the step-shape floor; baseline "
        f"{s['base_epoch']:.2f} s per epoch",
    )


PRECISION_EPOCHS = 4


def precision_side_by_side(scratch: Path, env: dict, overrides: dict, report: Report) -> None:
    """Section 5."""
    from mnist_dense.model.network import BF16_UNITS
    from mnist_dense.runtime.kernels import cpu_flags

    rows = []
    for precision in ("float32", "mixed_bfloat16"):
        folder = workspace(
            scratch / precision,
            overrides
            | {"train.precision": precision, "train.epochs": PRECISION_EPOCHS}
            | {"train.kernels": "native"},  # bfloat16 units are the CPU's own
        )
        stage("preprocess", folder, env)
        trained = stage("train", folder, env | {"MNIST_BF16": "force"})
        stage("evaluate", folder, env)
        rows.append(
            f"| {precision} | {steady_epoch_seconds(trained.stdout):.1f} s | "
            f"{100 * read_json(folder, 'train.json')['val_accuracy']:.2f} % | "
            f"{100 * read_json(folder, 'evaluate.json')['test_accuracy']:.2f} % |"
        )
    units = sorted(BF16_UNITS & set(cpu_flags()))
    report(
        "",
        "## 5. float32 against mixed_bfloat16 (the best preset's network)",
        "",
        f"{PRECISION_EPOCHS} epochs each, the best preset otherwise, both on the native kernel "
        "path (bfloat16 needs it). This CPU's bfloat16 units: "
        f"{', '.join(units) or 'none (bfloat16 emulated; forced here to measure it)'}.",
        "",
        "| precision | time per epoch (median, after the first) | val_accuracy | test_accuracy |",
        "|---|---|---|---|",
        *rows,
    )


def step_profile(env: dict, report: Report) -> None:
    """Section 6."""
    table = subprocess.run(
        [sys.executable, "-m", "bench.profile_step"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    report(
        "",
        "## 6. Where a training step of the best preset goes",
        "",
        "Each part run 40 times in one graph, median of 5, on its own (`python -m "
        "bench.profile_step`).",
        "",
        table.strip(),
    )


def kernel_paths_side_by_side(scratch: Path, env: dict, presets: dict, report: Report) -> None:
    """Section 7: what the portable kernel path costs against the CPU's native one."""
    rows = []
    for name in ("seed-notebook", "default"):
        measured = {}
        for mode in ("portable", "native"):
            overrides = presets[name]["overrides"] | {"train.kernels": mode}
            folder = workspace(scratch / f"kernels-{name}-{mode}", overrides)
            stage("preprocess", folder, env)
            stage("train", folder, env)
            stage("evaluate", folder, env)
            measured[mode] = (
                read_json(folder, "run.json"),
                read_json(folder, "evaluate.json")["test_accuracy"],
            )
        for mode, (run, accuracy) in measured.items():
            ratio = run["train_seconds"] / measured["native"][0]["train_seconds"]
            rows.append(
                f"| {name} | {mode}: {run['kernel_path']} | {run['train_seconds']:.1f} s | "
                f"{ratio:.2f}x | {100 * accuracy:.2f} % |"
            )
    report(
        "",
        "## 7. The price of the same bits everywhere: portable against native kernels",
        "",
        "`train.kernels: portable` (the default) pins TensorFlow's oneDNN rewrites off, "
        "oneDNN, NumPy and OpenBLAS to AVX2 and Eigen's blocking to fixed cache sizes, so "
        "every x86-64 CPU with AVX2 computes the same bits; `native` lets this CPU choose. "
        "One training each, one after another. On a CPU whose caches are the pinned ones "
        "(this page's reference machine) the blocking costs nothing; on smaller caches it "
        "may cost some speed, which only such a CPU can measure.",
        "",
        "| preset | kernel path (metrics/run.json) | training | against native | test accuracy |",
        "|---|---|---|---|---|",
        *rows,
    )


START_UP_BEFORE = "6a5858e"  # the last commit before the start-up work
START_UP_RUNS = 5
# what each stage does before its work: download runs whole (from a local mirror: it should
# never load TensorFlow, which it once did for keras.utils.get_file); the others import
START_UP = {
    "download": ["-m", "stages.download"],
    **{name: ["-c", f"import stages.{name}"] for name in ("preprocess", "train", "evaluate")},
}


def start_ups(scratch: Path, env: dict, report: Report) -> None:
    """Section 8: each stage's start-up at START_UP_BEFORE and at HEAD (both extracted with
    git archive), one after the other, median of START_UP_RUNS."""
    trees = {rev: scratch / f"tree-{rev}" for rev in (START_UP_BEFORE, "HEAD")}
    for rev, tree in trees.items():
        archive = subprocess.run(
            ["git", "archive", rev], cwd=ROOT, check=True, capture_output=True
        ).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as files:
            files.extractall(tree, filter="data")
    env = env | {"MNIST_MIRROR": str(ROOT / "data" / "raw")}
    rows = []
    for name, arguments in START_UP.items():
        seconds = {tree: [] for tree in trees.values()}
        for _ in range(START_UP_RUNS):
            for tree, times in seconds.items():
                shutil.rmtree(tree / "data" / "raw", ignore_errors=True)
                times.append(measure([sys.executable, *arguments], tree, env).seconds)
        old, new = (statistics.median(times) for times in seconds.values())
        shown = shlex.join(arguments)
        rows.append(f"| {name} | `python {shown}` | {old:.2f} s | {new:.2f} s | {new / old:.2f}x |")
    report(
        "",
        "## 8. Start-up of each stage",
        "",
        f"What each stage does before its first line of work, at `{START_UP_BEFORE}` and at "
        f"HEAD, one after the other, median of {START_UP_RUNS}: the download stage whole, from "
        "a local mirror; the others their imports.",
        "",
        f"| stage | measured | `{START_UP_BEFORE}` | HEAD | HEAD / before |",
        "|---|---|---|---|---|",
        *rows,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["kernels", "start-up"], help="one section alone")
    only = parser.parse_args().only
    command = f"make bench ARGS='--only {only}'" if only else "make bench"
    if not (ROOT / "data" / "raw").is_dir():
        sys.exit("error: data/raw is missing; run `dvc repro download` first")
    presets = load_presets()
    lines = [
        f"# make bench: {cpu_name()}, {os.cpu_count()} cores, {platform.platform()}",
        "",
        f"Run {time.strftime('%Y-%m-%d %H:%M')} by `{command}`; times are wall seconds.",
    ]

    def report(*text: str) -> None:
        lines.extend(text)
        print(*text, sep="\n", flush=True)

    print(lines[0], flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-") as folder:
        scratch = Path(folder)
        # each workspace logs to its own MLflow store (its mlflow.db), none to the project's
        env = clean_environment()
        if only == "kernels":
            kernel_paths_side_by_side(scratch, env, presets, report)
            return finish(lines, ROOT / "results" / "bench-kernels.md")
        if only == "start-up":
            start_ups(scratch, env, report)
            return finish(lines, ROOT / "results" / "bench-start-up.md")
        notebook = seed_notebook_against_baseline(
            scratch, env, presets["seed-notebook"]["overrides"], report
        )
        default = default_stage_by_stage(scratch, env, report)
        artifact_sizes(default, report)
        compute_floor(notebook, report)
        precision_side_by_side(scratch, env, presets["best"]["overrides"], report)
        step_profile(env, report)
        kernel_paths_side_by_side(scratch, env, presets, report)
        start_ups(scratch, env, report)
    finish(lines, RESULTS)


def finish(lines: list[str], path: Path) -> None:
    path.parent.mkdir(exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    print(f"\nwritten to {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
