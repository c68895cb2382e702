"""The same bits on other x86-64 CPUs, shown on emulated ones.

    make emulated-cpus                          (or: python -m bench.emulated_cpus)
    python -m bench.emulated_cpus --models EPYC-Rome Haswell-v4 --data data/processed

QEMU's user-mode emulator (`qemu-x86_64 -cpu MODEL`, Debian's qemu-user) runs a program as
another CPU model shows it: that model's vendor and cache sizes come back from cpuid, and
since QEMU emulates no AVX-512 every library takes its AVX2 path. Each CPU model here runs one
process, the workload: the default network of params.yaml (its layer shapes, batch size,
augmentation and optimizer) trained for one epoch on the first 2,560 training and 1,024
validation images, then scored on 2,000 test images (one of evaluate's batches), by the train
and evaluate stages' own functions. It prints the md5 of the model file, of the history
(metrics/history.csv: the losses and accuracies, validation's included) and of the test
images' probabilities (evaluate's scores, bit for bit, from which its metrics follow), the
cache sizes the CPU reported to Eigen and those Eigen blocked the products by. A last row runs
`train.kernels: native` on an emulated CPU, to show that the workload does tell CPUs apart
when nothing is pinned (its model tells; it scores nothing). Emulated, everything runs 30-70x
slower than natively (TensorFlow's import about 30 s, a training step 15 s, scoring 2,000
images 35 s), and each process keeps both cores busy: two run at a time (`--jobs`).

Prints a Markdown table (docs/reproducibility.md's emulated rows); exit status 1 when a
portable row's bits differ from this machine's.
"""

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

QEMU = "qemu-x86_64"
# (QEMU CPU model, what cpuid reports): both vendors, both of QEMU's L2 sizes, two L1 sizes
MODELS = {
    "Haswell-v4": "Intel, L1d 32K, L2 4M, L3 16M",
    "EPYC-Rome": "AMD, L1d 32K, L2 512K, L3 16M",
    "Haswell-v4,vendor=AuthenticAMD": "AMD, L1d 64K, L2 512K, L3 16M",
}
CONTROL = "EPYC-Rome"  # the native path's row: its bits must differ from the portable ones
SIZES = {"train": 2560, "val": 1024, "test": 2000}
ARRAYS = {"train": ("x_train", "y_train"), "val": ("x_val", "y_val"), "test": ("x_test", "y_test")}
WORKLOAD_TIMEOUT = 900  # seconds for one emulated process (TensorFlow's import is most of it)


@dataclass
class Row:
    cpu: str  # "this machine" or a QEMU model
    kernels: str
    model_md5: str
    history_md5: str
    scores_md5: str
    cpu_caches: str
    eigen_blocking: str
    seconds: float

    def bits(self) -> tuple[str, str, str]:
        return self.model_md5, self.history_md5, self.scores_md5

    def markdown(self) -> str:
        cells = [self.cpu, self.kernels, self.cpu_caches, self.eigen_blocking]
        cells += [f"`{md5[:8]}`" if md5 != "-" else "-" for md5 in self.bits()]
        cells.append(f"{self.seconds:.0f} s")
        return "| " + " | ".join(cells) + " |"


HEADER = (
    "| CPU the libraries saw | kernels | caches (cpuid) | Eigen blocked by | model md5 "
    "| history md5 | test scores md5 | wall |\n|---|---|---|---|---|---|---|---|"
)


def prepare(
    folder: Path, params_file: Path, processed: Path, kernels: str, sizes: dict[str, int]
) -> None:
    """A project folder for the workload: the params with one epoch, no tracking and the
    given kernel path, and the first `sizes[part]` images of each part's arrays."""
    params = yaml.safe_load(params_file.read_text())
    params["train"] |= {"epochs": 1, "kernels": kernels}
    params["tracking"] = {"enabled": False}
    folder.mkdir(parents=True)
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (folder / "data" / "processed").mkdir(parents=True)
    (folder / "models").mkdir()
    for part, names in ARRAYS.items():
        for name in names:
            array = np.load(processed / f"{name}.npy", allow_pickle=False)[: sizes[part]]
            np.save(folder / "data" / "processed" / f"{name}.npy", array, allow_pickle=False)


def workload() -> None:
    """Train and score in the current folder, in this process, with the train and evaluate
    stages' own functions; print the figures as JSON. Only the arithmetic runs: tracking,
    figures and scikit-learn's metrics would add minutes of emulated imports, not bits."""
    from mnist_dense.config import MODEL, PROCESSED_DIR, load_params
    from mnist_dense.files import load_arrays
    from mnist_dense.model.network import load_model, predict, save_model
    from mnist_dense.model.training import train
    from mnist_dense.runtime import kernels

    params = load_params()
    arrays = load_arrays(PROCESSED_DIR, ["x_train", "y_train", "x_val", "y_val", "x_test"])
    model, history, _ = train(params, arrays, on_epoch_end=lambda epoch, scores: None)
    save_model(model, MODEL, params.preprocess.normalization)
    scores = predict(load_model(MODEL), arrays["x_test"])  # as evaluate scores the test set
    figures = {
        "model_md5": md5(MODEL.read_bytes()),
        "history_md5": md5(history.to_csv(index=False).encode()),  # metrics/history.csv
        "scores_md5": md5(scores.tobytes()) if len(scores) else "-",
        "cpu_caches": kernels.cpu_caches(),
        "eigen_blocking": kernels.eigen_blocking(),
    }
    print("figures: " + json.dumps(figures))


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def run(folder: Path, model: str | None, kernels: str, python: str = sys.executable) -> Row:
    """The workload in `folder`, under QEMU's `model` (None: natively), by `python` (a venv's
    interpreter with this project installed)."""
    command = [python, "-m", "bench.emulated_cpus", "--workload"]
    if model:
        command = [QEMU, "-cpu", model, *command]
    started = time.perf_counter()
    result = subprocess.run(
        command,
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=WORKLOAD_TIMEOUT,
        env=os.environ,
    )
    seconds = time.perf_counter() - started
    lines = [line for line in result.stdout.splitlines() if line.startswith("figures: ")]
    if result.returncode != 0 or not lines:
        tail = [line for line in result.stderr.splitlines() if "TCG doesn't support" not in line]
        raise RuntimeError(f"{model or 'natively'}: exit {result.returncode}: {tail[-5:]}")
    figures = json.loads(lines[-1].removeprefix("figures: "))
    cpu = f"`qemu -cpu {model}`" if model else "this machine"
    return Row(cpu=cpu, kernels=kernels, seconds=seconds, **figures)


def rows(
    models: list[str],
    control: str | None,
    params_file: Path,
    processed: Path,
    sizes: dict[str, int] = SIZES,
    jobs: int = 2,
) -> list[Row]:
    """This machine's row, one per emulated model, and the native control's, `jobs` at a time
    (one per core: TensorFlow's threads spin while they wait, and more processes than cores
    spend the cores on spinning)."""
    runs = [(None, "portable")] + [(model, "portable") for model in models]
    runs += [(control, "native")] if control else []
    with tempfile.TemporaryDirectory(prefix="emulated-cpus-") as scratch:
        folders = []
        for number, (_, kernels) in enumerate(runs):
            folder = Path(scratch) / f"cpu{number}"
            # the control's model tells the paths apart; scoring would add a minute, no proof
            kept = sizes | ({"test": 0} if kernels == "native" else {})
            prepare(folder, params_file, processed, kernels, kept)
            folders.append(folder)
        with ThreadPoolExecutor(jobs) as pool:
            return list(
                pool.map(lambda both: run(both[1], *both[0]), zip(runs, folders, strict=True))
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--models", nargs="+", default=list(MODELS), metavar="MODEL")
    parser.add_argument("--control", default=CONTROL, help="'' for no native row")
    parser.add_argument("--data", type=Path, default=Path("data/processed"))
    parser.add_argument("--jobs", type=int, default=2, help="processes at once")
    args = parser.parse_args()
    if args.workload:
        workload()
        return
    if not shutil.which(QEMU):
        sys.exit(f"error: {QEMU} not found; install Debian's qemu-user")
    if not (args.data / "x_train.npy").is_file():
        sys.exit(f"error: {args.data}/x_train.npy missing; run `dvc repro preprocess` first")
    table = rows(args.models, args.control or None, Path("params.yaml"), args.data, jobs=args.jobs)
    print(HEADER)
    print("\n".join(row.markdown() for row in table))
    here = table[0]
    portable = [row for row in table if row.kernels == "portable"]
    differ = [row.cpu for row in portable if row.bits() != here.bits()]
    if differ:
        sys.exit(f"error: other bits than this machine's on {', '.join(differ)}")
    print(
        f"OK: the portable path gave this machine's bits on all {len(portable) - 1} emulated CPUs"
    )


if __name__ == "__main__":
    main()
