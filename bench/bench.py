"""make bench: how fast the pipeline is on this machine, against a plain Keras baseline.

1. The seed notebook's training as a plain Keras script (bench/baseline.py) against this
   project's train stage with the same hyperparameters (the seed-notebook preset), run
   alternately A B A B A B: wall times, ratios pair by pair, test accuracies.
2. Each stage of the default configuration: wall time and peak resident memory; the whole
   pipeline through `dvc repro`; a no-op `dvc repro`.
3. The size on disk of every artifact.
4. The compute floor: the FLOPs of one training epoch against the float32 GEMM throughput
   NumPy reaches here, and how far the train stage is from it.

Everything runs in a scratch folder (the project's workspace and MLflow store are not
touched); data/raw must exist (`dvc repro download`). Prints a Markdown report and writes
it to results/bench.md.
"""

import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from scripts.presets import apply, load_presets
from scripts.verify_repro import scratch_copy

ROOT = Path.cwd()
RESULTS = ROOT / "results" / "bench.md"
PAIRS = 3
SEEDS = [1, 2, 3]


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
    params = apply(yaml.safe_load((ROOT / "params.yaml").read_text()), overrides)
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (folder / "data").mkdir()
    (folder / "data" / "raw").symlink_to(ROOT / "data" / "raw")
    return folder


def stage(name: str, folder: Path, env: dict) -> Measured:
    return measure([sys.executable, "-m", f"stages.{name}"], folder, env)


def test_accuracy(folder: Path) -> float:
    return json.loads((folder / "metrics" / "evaluate.json").read_text())["test_accuracy"]


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
    layers = list(zip([784, *units], [*units, 10], strict=True))
    forward = sum(2 * i * o for i, o in layers)
    input_gradients = sum(2 * i * o for i, o in layers[1:])  # none needed for the pixels
    return train * (2 * forward + input_gradients) + validation * forward


def size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def main() -> None:
    if not (ROOT / "data" / "raw").is_dir():
        sys.exit("error: data/raw is missing; run `dvc repro download` first")
    presets = load_presets()
    lines = [
        f"# make bench: {cpu_model()}, {os.cpu_count()} cores, {platform.platform()}",
        "",
        f"Run {time.strftime('%Y-%m-%d %H:%M')} by `make bench`; times are wall seconds.",
    ]

    def report(*text: str) -> None:
        lines.extend(text)
        print(*text, sep="\n", flush=True)

    print(lines[0], flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-") as folder:
        scratch = Path(folder)
        # each workspace logs to its own MLflow store (its mlflow.db), none to the project's
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "MLFLOW_"))}
        env["PYTHONPATH"] = str(ROOT)

        # 1. Baseline against the train stage, same hyperparameters, alternating.
        seed = workspace(scratch / "seed-notebook", presets["seed-notebook"]["overrides"])
        stage("preprocess", seed, env)
        report(
            "",
            "## 1. Seed notebook: plain Keras script against the train stage",
            "",
            "Same hyperparameters (preset `seed-notebook`: 784-128-32-10, Adam 0.001, batch 32, "
            "25 epochs, 48,000 training and 12,000 validation images), run alternately. "
            "The baseline is `bench/baseline.py` (`model.fit` on NumPy arrays, Keras defaults); "
            "the project runs `python -m stages.train` as `dvc repro` does, MLflow logging "
            "included. Wall time is the whole process (imports, data, training, saving).",
            "",
            "| pair | baseline wall | baseline fit | project wall | project training | "
            "ratio (wall) | ratio (training) | baseline test acc. | project test acc. |",
            "|---|---|---|---|---|---|---|---|---|",
        )
        pairs = []
        for pair, train_seed in enumerate(SEEDS[:PAIRS], start=1):
            base = measure(
                [sys.executable, str(ROOT / "bench" / "baseline.py"), "data/processed"], seed, env
            )
            base_result = json.loads(base.stdout.strip().splitlines()[-1])
            params = yaml.safe_load((seed / "params.yaml").read_text())
            params["train"]["seed"] = train_seed
            (seed / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
            project = stage("train", seed, env)
            training = json.loads((seed / "metrics" / "run.json").read_text())["train_seconds"]
            stage("evaluate", seed, env)
            pairs.append(
                {
                    "base_wall": base.seconds,
                    "base_fit": base_result["fit_seconds"],
                    "base_acc": base_result["test_accuracy"],
                    "wall": project.seconds,
                    "training": training,
                    "acc": test_accuracy(seed),
                    "epoch": steady_epoch_seconds(project.stdout),
                }
            )
            p = pairs[-1]
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

        # 2. Stages of the default configuration, and the pipeline through DVC.
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
            f"Default test accuracy {100 * test_accuracy(default):.2f} %, training "
            f"{json.loads((default / 'metrics' / 'run.json').read_text())['train_seconds']:.1f} s.",
        )

        # 3. Sizes on disk.
        artifacts = [
            *sorted((default / "data" / "raw").resolve().iterdir()),
            *sorted((default / "data" / "processed").iterdir()),
            default / "models" / "model.keras",
            *sorted((default / "metrics").iterdir()),
        ]
        run_id = json.loads((default / "metrics" / "run.json").read_text())["mlflow_run_id"]
        runs = [p for p in (default / "mlartifacts").iterdir() if p.name == run_id]
        models = list((default / "mlartifacts" / "models").iterdir())
        report(
            "",
            "## 3. Artifacts of the default configuration",
            "",
            "| artifact | size |",
            "|---|---|",
            *(f"| {p.relative_to(p.parent.parent)} | {mib(size(p))} |" for p in artifacts),
            f"| MLflow run artifacts (figures, evaluation files) | {mib(size(runs[0]))} |",
            f"| MLflow logged model | {mib(size(models[-1]))} |",
        )

        # 4. The compute floor of the seed notebook's training.
        flops = epoch_flops([128, 32], train=48_000, validation=12_000)
        peak = gemm_gflops(2048, 2048, 2048)
        small = gemm_gflops(32, 784, 128)
        epoch = median("epoch")
        report(
            "",
            "## 4. Compute floor (seed notebook network)",
            "",
            f"- one epoch: {flops / 1e9:.1f} GFLOP of matrix products (forward, weight and input "
            "gradients on 48,000 images, forward on 12,000 for validation)",
            f"- NumPy float32 GEMM here: {peak:.0f} GFLOP/s at 2048x2048x2048, {small:.0f} "
            "GFLOP/s at the training step's shape 32x784x128",
            f"- floor: {flops / peak / 1e9:.3f} s per epoch at the large-GEMM rate, "
            f"{flops / small / 1e9:.3f} s at the step-shape rate",
            f"- train stage: {epoch:.2f} s per epoch (median, after the first): "
            f"{epoch / (flops / peak / 1e9):.1f}x the large-GEMM floor, "
            f"{epoch / (flops / small / 1e9):.1f}x the step-shape floor; baseline "
            f"{median('base_fit') / 25:.2f} s per epoch",
        )
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    print(f"\nwritten to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
