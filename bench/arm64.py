"""The project on 64-bit ARM Linux, emulated: Debian's arm64 Python run by qemu-aarch64.

    make arm64-emulated           (or: python -m bench.arm64)

Needs Debian's qemu-user and its arm64 packages (once: `sudo dpkg --add-architecture arm64 &&
sudo apt-get update`). It keeps, in .arm64/ (git-ignored, reused by the next run):
1. a sysroot: Debian's arm64 python3.11 and the libraries it needs (`apt-get download`,
   `dpkg -x`);
2. site-packages: the lock's lines for Linux on ARM (uv, `--python-platform
   aarch64-unknown-linux-gnu`, hashes required, wheels only but antlr4's pure-Python sdist),
   their bytecode compiled;
then runs the preprocess, train and evaluate stages on tiny synthetic MNIST files (the default
network, one epoch, tracking off), each stage as its own process as DVC runs it,
under `qemu-aarch64` and natively, and prints what ran, each stage's wall time, and the md5 of
the model and of the test metrics on both. ARM computes other bits than x86-64 (Eigen's NEON
kernels, not AVX2): the kernel path each run records says so (mnist_dense/runtime/kernels.py).
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
from dataclasses import dataclass
from pathlib import Path

import yaml
from filelock import FileLock

from tooling.synthetic_mnist import write_mnist

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".arm64"
QEMU = "qemu-aarch64"
# Debian 12's arm64 python3.11 and what it links, by `apt-cache depends --recurse`, with the
# C++ runtime and OpenMP that TensorFlow's and NumPy's manylinux wheels expect of the system
PACKAGES = [
    "python3.11", "python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib",
    "libc6", "gcc-12-base", "libgcc-s1", "libstdc++6", "libgomp1", "libbz2-1.0", "libcrypt1",
    "libdb5.3", "libexpat1", "libffi8", "liblzma5", "libncursesw6", "libnsl2", "libreadline8",
    "libsqlite3-0", "libssl3", "libtinfo6", "libtirpc3", "libuuid1", "zlib1g",
    "libgssapi-krb5-2", "libk5crypto3", "libkeyutils1", "libkrb5-3", "libkrb5support0",
    "libcom-err2",
]  # fmt: skip
PLATFORM = "aarch64-unknown-linux-gnu"
PURE_PYTHON_SDISTS = ["antlr4-python3-runtime"]
STAGES = ("preprocess", "train", "evaluate")
STAGE_TIMEOUT = 1200  # seconds for one emulated stage


class Arm64Error(RuntimeError):
    """Something the emulated run needs is missing (one line)."""


@dataclass
class Run:
    where: str
    kernel_path: str
    seconds: dict[str, float]
    model_md5: str
    metrics_md5: str
    test_accuracy: float


def sysroot(cache: Path) -> Path:
    """Debian's arm64 Python and its libraries, unpacked into cache/sysroot (once)."""
    root, stamp = cache / "sysroot", cache / "sysroot.done"
    if stamp.is_file() and stamp.read_text() == "\n".join(PACKAGES):
        return root
    foreign = subprocess.run(
        ["dpkg", "--print-foreign-architectures"], capture_output=True, text=True, check=True
    ).stdout.split()
    if "arm64" not in foreign:
        raise Arm64Error(
            "Debian's arm64 packages are not enabled: "
            "sudo dpkg --add-architecture arm64 && sudo apt-get update"
        )
    debs = cache / "debs"
    shutil.rmtree(debs, ignore_errors=True)
    shutil.rmtree(root, ignore_errors=True)
    debs.mkdir(parents=True)
    names = [f"{package}:arm64" for package in PACKAGES]
    result = subprocess.run(
        ["apt-get", "download", *names], cwd=debs, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise Arm64Error(f"apt-get download failed: {result.stderr.strip().splitlines()[-1:]}")
    for deb in sorted(debs.glob("*.deb")):
        subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
    stamp.write_text("\n".join(PACKAGES))
    return root


def site_packages(cache: Path, lock: Path) -> Path:
    """The lock's aarch64 lines installed into cache/site (again whenever the lock changes)."""
    site, stamp = cache / "site", cache / "site.lock-sha256"
    wanted = hashlib.sha256(lock.read_bytes()).hexdigest()
    if stamp.is_file() and stamp.read_text() == wanted:
        return site
    shutil.rmtree(site, ignore_errors=True)
    uv = str(Path(sys.executable).parent / "uv")
    no_binary = [option for name in PURE_PYTHON_SDISTS for option in ("--no-binary", name)]
    command = [uv, "pip", "install", "--quiet", "--target", str(site), "--require-hashes"]
    command += ["--python-platform", PLATFORM, "--python-version", "3.11"]
    command += ["--only-binary", ":all:", *no_binary, "-r", str(lock)]
    subprocess.run(command, check=True)
    # bytecode by this Python: the same 3.11 format, and minutes faster than compiling emulated
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(site)], capture_output=True)
    stamp.write_text(wanted)
    return site


def project(folder: Path, params_file: Path) -> None:
    """A project folder: the params (one epoch, no tracking) and tiny MNIST files in data/raw,
    as the download stage leaves them."""
    params = yaml.safe_load(params_file.read_text())
    params["train"]["epochs"] = 1
    params["tracking"] = {"enabled": False}
    folder.mkdir(parents=True)
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    write_mnist(folder / "data" / "raw")


def run_stages(folder: Path, command: list[str], env: dict[str, str], where: str) -> Run:
    """Each stage as its own process in `folder`; its wall time, the kernel path it recorded,
    and the md5 of the model and of the test metrics."""
    seconds = {}
    for stage in STAGES:
        started = time.perf_counter()
        result = subprocess.run(
            [*command, "-m", f"stages.{stage}"],
            cwd=folder,
            env=env,
            capture_output=True,
            text=True,
            timeout=STAGE_TIMEOUT,
        )
        seconds[stage] = time.perf_counter() - started
        if result.returncode != 0:
            raise Arm64Error(f"{where}: stages.{stage} exited {result.returncode}: "
                             f"{result.stderr.strip().splitlines()[-3:]}")  # fmt: skip
    metrics = folder / "metrics" / "evaluate.json"
    return Run(
        where=where,
        kernel_path=json.loads((folder / "metrics" / "run.json").read_text())["kernel_path"],
        seconds=seconds,
        model_md5=hashlib.md5((folder / "models" / "model.keras").read_bytes()).hexdigest(),
        metrics_md5=hashlib.md5(metrics.read_bytes()).hexdigest(),
        test_accuracy=json.loads(metrics.read_text())["test_accuracy"],
    )


def compare(cache: Path = CACHE, params_file: Path = ROOT / "params.yaml") -> list[Run]:
    """The stages on aarch64 (emulated) and natively, each in a scratch project."""
    if not shutil.which(QEMU):
        raise Arm64Error(f"{QEMU} not found; install Debian's qemu-user")
    cache.mkdir(exist_ok=True)
    with FileLock(cache / ".lock"):  # one run at a time builds the shared folders
        root, site = sysroot(cache), site_packages(cache, ROOT / "requirements.txt")
    with tempfile.TemporaryDirectory(prefix="arm64-") as scratch:
        folders = {name: Path(scratch) / name for name in ("aarch64", "here")}
        for folder in folders.values():
            project(folder, params_file)
        base = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
        emulated = base | {"PYTHONPATH": f"{site}:{ROOT}", "PYTHONNOUSERSITE": "1"}
        python = [QEMU, "-L", str(root), str(root / "usr" / "bin" / "python3.11")]
        arm = run_stages(folders["aarch64"], python, emulated, "aarch64 (qemu-aarch64)")
        here = run_stages(folders["here"], [sys.executable], base, "this machine")
    return [arm, here]


def report(runs: list[Run]) -> str:
    lines = [
        "| where | kernel path (metrics/run.json) | "
        + " | ".join(STAGES)
        + " | model md5 | test metrics md5 | test accuracy |",
        "|---|---|" + "---|" * len(STAGES) + "---|---|---|",
    ]
    for run in runs:
        times = " | ".join(f"{run.seconds[stage]:.0f} s" for stage in STAGES)
        lines.append(
            f"| {run.where} | {run.kernel_path} | {times} | `{run.model_md5[:8]}` | "
            f"`{run.metrics_md5[:8]}` | {100 * run.test_accuracy:.2f} % |"
        )
    return "\n".join(lines)


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    try:
        runs = compare()
    except Arm64Error as error:
        sys.exit(f"error: {error}")
    print(report(runs))


if __name__ == "__main__":
    main()
