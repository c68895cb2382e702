"""Which CPU kernels compute the numbers: chosen by the project (`train.kernels`), not by the CPU.

TensorFlow, oneDNN, NumPy and OpenBLAS each pick their kernels from the CPU they run on, and
kernels of different instruction sets sum in different orders, so the same params gave other
weights on another CPU. Beyond the instruction set, Eigen cuts TensorFlow's matrix products
into blocks sized by the CPU's caches, and other blocks sum in another order. `portable` (the
default) pins every such choice to a path all x86-64 CPUs with AVX2 share (Intel since 2013,
AMD since 2015), cache sizes included; `native` lets each library choose, for speed (and
bfloat16 units), at the price of bits that belong to this CPU.

The libraries read these settings once, when they load, so `select` must run before NumPy and
TensorFlow are imported: `mnist_dense/__init__.py` calls it with params.yaml's choice, before
any third-party import, and the served model with the choice recorded with it. Eigen's cache
sizes are pinned the moment TensorFlow has loaded (mnist_dense/runtime/tensorflow_loading.py).
"""

import json
import os
import platform
import sys
from pathlib import Path

from mnist_dense.errors import KernelPathError
from mnist_dense.runtime import eigen_caches, tensorflow_loading

MODES = ("portable", "native")
DEFAULT = "portable"
PORTABLE_ENV = {
    # TensorFlow's oneDNN graph rewrites: off (TF turns them on by itself on CPUs with
    # AVX512_VNNI, AVX512_BF16 or AMX)
    "TF_ENABLE_ONEDNN_OPTS": "0",
    # oneDNN's kernels, which also compute TensorFlow's own matrix products: at most AVX2
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    # NumPy's SIMD loops (its float64 exp and log differ in the last bit under AVX-512)
    "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",
    # OpenBLAS, under NumPy and SciPy: its Haswell (AVX2) kernels
    "OPENBLAS_CORETYPE": "Haswell",
}
# The cache sizes (L1 data, L2, L3 per Eigen's reading) that Eigen blocks products by on the
# portable path, whatever the CPU's: those of the machine that made the committed results, a
# 2-core Xeon (Sapphire Rapids class) reporting L1d 48 KiB, L2 2 MiB, L3 300 MiB.
PORTABLE_CACHES = (48 * 2**10, 2 * 2**20, 300 * 2**20)
ISA_BY_FLAG = (  # oneDNN's instruction sets, best first, and the CPU flag each needs
    ("AVX512_CORE_AMX", "amx_bf16"),
    ("AVX512_CORE_BF16", "avx512_bf16"),
    ("AVX512_CORE_VNNI", "avx512_vnni"),
    ("AVX512_CORE", "avx512bw"),
    ("AVX2", "avx2"),
)

# The user's own values of PORTABLE_ENV, handed down to child processes (a command's `dvc exp
# run`, DVC's stages), which would otherwise take the portable values set here for the user's.
OUTSIDE_ENV = "MNIST_KERNELS_OUTSIDE"
_outside: dict[str, str | None] = {}
_selected: list[str] = []


def cpu_flags() -> set[str]:
    """The CPU's feature flags (empty where /proc/cpuinfo is missing)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def on_x86_64(machine: str | None = None) -> bool:
    return (platform.machine() if machine is None else machine) in ("x86_64", "AMD64")


def portable_available(flags: set[str] | None = None, machine: str | None = None) -> bool:
    """Whether this CPU runs the portable path: x86-64 with AVX2 (and FMA)."""
    flags = cpu_flags() if flags is None else flags
    return on_x86_64(machine) and {"avx2", "fma"} <= flags


def sets(variable: str) -> bool:
    """Whether the portable path sets `variable` here: every one on x86-64 (OpenBLAS's core
    type only with AVX2); elsewhere only TensorFlow's rewrites, the others naming x86 parts."""
    if not on_x86_64():
        return variable == "TF_ENABLE_ONEDNN_OPTS"
    return variable != "OPENBLAS_CORETYPE" or portable_available()


def pins_blocking() -> bool:
    """Whether the portable path pins Eigen's blocking here: on Linux (where TensorFlow's
    libraries are found by /proc/self/maps), x86-64 with AVX2 or 64-bit ARM."""
    arm = platform.machine() in ("aarch64", "arm64")
    return sys.platform == "linux" and (portable_available() or arm)


def mode_in(params_file: Path) -> str:
    """train.kernels from a params.yaml, read before anything heavy is imported; the default
    where the file or the key is missing (validation reports a bad value later)."""
    import yaml

    try:
        train = (yaml.safe_load(Path(params_file).read_text()) or {}).get("train") or {}
    except (OSError, yaml.YAMLError, AttributeError):
        return DEFAULT
    mode = train.get("kernels", DEFAULT) if isinstance(train, dict) else DEFAULT
    return mode if mode in MODES else DEFAULT


def loaded() -> bool:
    """Whether TensorFlow has loaded (its kernel path is then fixed for this process)."""
    return "tensorflow" in sys.modules


def select(mode: str, strict: bool = True) -> None:
    """Set the environment of `mode` for the libraries still to load. Once TensorFlow has
    loaded on the other path: KernelPathError, or with strict=False a warning (predictions
    then differ from the recorded ones in the last bits at most)."""
    if mode not in MODES:
        raise ValueError(f"train.kernels={mode!r}: expected one of {', '.join(MODES)}")
    if _selected and _selected[-1] == mode:
        return
    if loaded():
        message = (
            f"train.kernels={mode}: TensorFlow already loaded in this process on the "
            f"{active()} kernel path"
        )
        if not strict:
            print(f"warning: {message}; the last bits may differ", file=sys.stderr)
            return
        raise KernelPathError(
            f"{message}; run it as a process of its own (`dvc repro`, `python -m stages.train`)"
        )
    if not _outside:
        handed_down = os.environ.get(OUTSIDE_ENV)
        own = {variable: os.environ.get(variable) for variable in PORTABLE_ENV}
        _outside.update(json.loads(handed_down) if handed_down else own)
        os.environ[OUTSIDE_ENV] = json.dumps(_outside)
    for variable, value in PORTABLE_ENV.items():
        outside = _outside[variable]
        if mode == "portable" and sets(variable):
            os.environ[variable] = value
        elif outside is None:
            os.environ.pop(variable, None)
        else:
            os.environ[variable] = outside
    _selected.append(mode)
    if mode == "portable" and pins_blocking():
        tensorflow_loading.after(pin_caches)


def pin_caches() -> None:
    """On the portable path, make Eigen block by PORTABLE_CACHES (TensorFlow has just loaded)."""
    if active() != "portable" or not pins_blocking():
        return
    try:
        eigen_caches.pin(PORTABLE_CACHES)
    except (eigen_caches.CachePinError, OSError) as error:
        raise KernelPathError(f"train.kernels=portable: {error}") from None


def outside_environment(env: dict[str, str]) -> dict[str, str]:
    """`env` with the kernel variables as the user's own environment had them: for a program
    that is not ours (a plain Keras baseline), which should run as it would for the user."""
    outside = json.loads(env.get(OUTSIDE_ENV, "null")) or {
        variable: env.get(variable) for variable in PORTABLE_ENV
    }
    cleaned = {k: v for k, v in env.items() if k not in PORTABLE_ENV and k != OUTSIDE_ENV}
    return cleaned | {k: v for k, v in outside.items() if v is not None}


def active() -> str:
    """The mode selected for this process (native where nothing selected one)."""
    return _selected[-1] if _selected else "native"


def require(mode: str) -> None:
    """Fail unless this process computes on `mode`'s path (a stage's params against the path
    its process chose when it started)."""
    if active() != mode:
        select(mode)  # possible only while TensorFlow has not loaded


def onednn_isa(flags: set[str] | None = None) -> str:
    """The instruction set oneDNN dispatches to: the CPU's best, under ONEDNN_MAX_CPU_ISA."""
    flags = cpu_flags() if flags is None else flags
    names = [name for name, _ in ISA_BY_FLAG]
    best = next((name for name, flag in ISA_BY_FLAG if flag in flags), "SSE41")
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    if cap in names and best in names and names.index(cap) > names.index(best):
        return cap
    return best


def rewrites_on() -> bool:
    """Whether TensorFlow runs its oneDNN graph rewrites (its own decision, once loaded)."""
    from tensorflow.python.util import _pywrap_util_port

    return bool(_pywrap_util_port.IsMklEnabled())


def path() -> str:
    """The kernel path this process computes on, in words that differ exactly when the bits
    may: the same string on two machines means the same kernels."""
    mode = active()
    if mode == "portable":
        if portable_available():
            return (
                "portable (oneDNN rewrites off, oneDNN AVX2, NumPy AVX2, OpenBLAS Haswell, "
                f"Eigen blocks for {eigen_caches.format_sizes(PORTABLE_CACHES)})"
            )
        machine = platform.machine()
        if not on_x86_64():
            blocking = (
                f"Eigen blocks for {eigen_caches.format_sizes(PORTABLE_CACHES)}"
                if pins_blocking()
                else "Eigen blocks by the CPU's caches"
            )
            return (
                f"portable on {machine} (oneDNN rewrites off, Eigen's {machine} kernels, "
                f"{blocking}): this architecture's bits, not x86-64's"
            )
        return f"portable unavailable: this CPU lacks AVX2 (oneDNN {onednn_isa()})"
    rewrites = "on" if rewrites_on() else "off"
    return f"native (oneDNN rewrites {rewrites}, oneDNN {onednn_isa()}, NumPy and OpenBLAS: CPU's)"


def tags() -> dict[str, str]:
    """What a run records about its kernel path (make reproduce compares these)."""
    return {
        "kernels.mode": active(),
        "kernels.path": path(),
        "kernels.onednn_rewrites": "on" if rewrites_on() else "off",
        "kernels.onednn_isa": onednn_isa(),
        "kernels.eigen_blocking": eigen_blocking(),
    }


def eigen_blocking() -> str:
    """The cache sizes TensorFlow's products are blocked by in this process, read back from
    Eigen ("the CPU's" before the first product off the portable path; "?" where unreadable)."""
    try:
        used = eigen_caches.in_use()["libtensorflow_cc.so.2"]
    except (eigen_caches.CachePinError, OSError, KeyError):
        return "?"
    return eigen_caches.format_sizes(used) if used else "the CPU's (no product yet)"


def cpu_caches() -> str:
    """This CPU's cache sizes as Eigen reads them (cpuid), "?" where unreadable."""
    try:
        return eigen_caches.format_sizes(eigen_caches.of_this_cpu())
    except (eigen_caches.CachePinError, OSError, KeyError, AttributeError):
        return "?"
