"""Where a result came from: the code (git), the data and model (DVC's hashes), the CPU and
the libraries.

Each MLflow run carries these as tags (mnist_dense/tracking/runs.py) and `make reproduce` reads them
back; verify-repro, the benchmark and the tests use the same helpers.
"""

import hashlib
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

from mnist_dense.config import Params, as_override, flatten
from mnist_dense.runtime import kernels
from mnist_dense.runtime.eigen_caches import format_size

DVC_LOCK = Path("dvc.lock")
REQUIREMENTS = "requirements.txt"
# CPU features that decide which oneDNN / Eigen kernels run, and so the last bits of a training
BIT_DECIDING_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "avx_vnni",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)


def project_root() -> Path:
    """The project's root: DVC_ROOT when DVC runs a stage in a temporary copy, else the cwd."""
    return Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()


def git(*args: str, cwd: Path | None = None) -> str | None:
    """`git args...`'s output, or None where git or the repository is missing."""
    try:
        result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return result.stdout.strip()


# What a run records by value, or writes itself: a change to these does not make the code
# differ from the commit.
NOT_CODE = ("params.yaml", "dvc.lock", "metrics", "models", "data", "results")


def git_state(cwd: Path | None = None) -> dict[str, str]:
    """{"git.commit", "git.dirty"} of the working tree (empty outside a repository).

    Dirty means the code differs from the commit: a tracked file changed or an untracked one
    added, other than the params (recorded in full) and the pipeline's own outputs.
    """
    commit = git("rev-parse", "HEAD", cwd=cwd)
    if not commit:
        return {}
    excluded = [f":(exclude){path}" for path in NOT_CODE]
    changes = git("status", "--porcelain", "--", ".", *excluded, cwd=cwd)
    return {"git.commit": commit, "git.dirty": str(bool(changes)).lower()}


def dvc_lock_outputs(lock_file: Path = DVC_LOCK, stages: tuple[str, ...] = ()) -> dict[str, str]:
    """{output path: md5} recorded in a dvc.lock, for the given stages (default: all)."""
    try:
        recorded = (yaml.safe_load(Path(lock_file).read_text()) or {}).get("stages", {})
    except (OSError, yaml.YAMLError):
        return {}
    return {
        out["path"]: out["md5"]
        for name, stage in recorded.items()
        if not stages or name in stages
        for out in stage.get("outs", [])
    }


def file_md5(path: Path) -> str:
    """The md5 DVC records for a file."""
    digest = hashlib.md5()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def cpu_name() -> str:
    """The CPU's model name: Linux's /proc/cpuinfo, macOS's sysctl, else what Python knows."""
    for line in _cpuinfo():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return sysctl("machdep.cpu.brand_string") or platform.processor() or platform.machine()


def bit_deciding_flags() -> list[str]:
    """Which of BIT_DECIDING_FLAGS this CPU has (empty where /proc/cpuinfo is missing)."""
    present = kernels.cpu_flags()
    return [flag for flag in BIT_DECIDING_FLAGS if flag in present]


def cpu_vendor() -> str:
    """GenuineIntel, AuthenticAMD, Apple, ... ("?" where neither /proc/cpuinfo nor sysctl
    says)."""
    for line in _cpuinfo():
        if line.startswith("vendor_id"):
            return line.split(":", 1)[1].strip()
    brand = sysctl("machdep.cpu.brand_string") or ""
    return sysctl("machdep.cpu.vendor") or ("Apple" if brand.startswith("Apple") else "?")


def sysctl(name: str) -> str | None:
    """A value of macOS's `sysctl` (None elsewhere, or where the name is unknown)."""
    if sys.platform != "darwin":
        return None
    try:
        result = subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def cpu_caches() -> str:
    """This CPU's L1 data, L2 and L3 cache sizes: as Eigen reads them (cpuid) where TensorFlow
    has loaded on Linux, else macOS's sysctl ("?" for what neither says)."""
    read = kernels.cpu_caches()
    if read != "?" or sys.platform != "darwin":
        return read
    names = ("hw.l1dcachesize", "hw.l2cachesize", "hw.l3cachesize")
    sizes = [sysctl(name) for name in names]
    return ", ".join(
        f"L{level} {format_size(int(size)) if size and size.isdigit() else '?'}"
        for level, size in enumerate(sizes, start=1)
    )


def cache_difference(then: str, here: str) -> str:
    """The cache levels two "L1 48K, L2 2M, L3 300M" records disagree on, L2 first (the one
    that changed the bits when Eigen blocked by the CPU's own sizes): "L2 2M then, 512K here"."""
    levels = [
        dict(part.split(" ", 1) for part in text.split(", ") if " " in part)
        for text in (then, here)
    ]
    order = ["L2", "L1", "L3"]
    differing = [level for level in order if levels[0].get(level) != levels[1].get(level)]
    return "; ".join(
        f"{level} {levels[0].get(level, '?')} then, {levels[1].get(level, '?')} here"
        for level in differing
    )


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask), which TensorFlow's default uses."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def environment(threads: int) -> dict[str, str]:
    """env.* tags: library versions and what decides the bits of a training on this machine."""
    import keras
    import numpy as np
    import tensorflow as tf

    return {
        "env.python": platform.python_version(),
        "env.tensorflow": tf.__version__,
        "env.keras": keras.__version__,
        "env.numpy": np.__version__,
        "env.platform": platform.platform(),
        "env.cpu": cpu_name(),
        "env.cpu_flags": " ".join(bit_deciding_flags()),
        "env.cpu_vendor": cpu_vendor(),
        "env.cpu_caches": cpu_caches(),
        "env.cpu_count": str(os.cpu_count()),
        "env.usable_cores": str(usable_cores()),
        "env.threads": str(threads or usable_cores()),
        "env.requirements_sha256": file_sha256(project_root() / REQUIREMENTS) or "none",
    }


def machine_record() -> dict[str, str]:
    """What decides the bits on this machine, for metrics/run.json (make verify-repro)."""
    return {
        "machine": platform.machine(),
        "kernel_path": kernels.path(),
        "eigen_blocking": kernels.eigen_blocking(),
        "cpu_vendor": cpu_vendor(),
        "cpu_caches": cpu_caches(),
    }


def reproduce_command(params: Params) -> str:
    """`dvc exp run -S ...` setting every param to this run's value."""
    overrides = []
    for key, value in flatten(params).items():
        overrides += ["-S", as_override(key, value)]
    return shlex.join(["dvc", "exp", "run", *overrides])
