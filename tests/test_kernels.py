"""The kernel path (train.kernels): chosen by the project before the numerical libraries load,
the same bits whatever the CPU would have chosen, and recorded; and a quiet start-up."""

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mnist_dense.config import load_params, parse_params
from mnist_dense.errors import KernelPathError, PipelineError
from mnist_dense.runtime import eigen_caches, kernels, quiet
from mnist_dense.tracking.provenance import cache_difference, file_md5
from stages import preprocess, train
from tests.conftest import ROOT, tiny_params, write_params


def test_this_process_computes_on_the_portable_path():
    """The test process itself: params.yaml's default, set before NumPy and TensorFlow loaded."""
    from numpy._core._multiarray_umath import __cpu_features__

    assert kernels.active() == "portable"
    assert os.environ["TF_ENABLE_ONEDNN_OPTS"] == "0"
    assert os.environ["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    assert not kernels.rewrites_on()  # TensorFlow's own decision, read back
    assert not __cpu_features__["X86_V4"]  # NumPy's AVX-512 loops off, whatever the CPU
    assert kernels.path().startswith("portable (oneDNN rewrites off, oneDNN AVX2")


@pytest.fixture
def fresh(monkeypatch):
    """kernels' state as in a new process that has not loaded TensorFlow, the user's
    environment holding its own oneDNN cap."""
    monkeypatch.setattr(kernels, "_outside", {})
    monkeypatch.setattr(kernels, "_selected", [])
    monkeypatch.setattr(kernels, "loaded", lambda: False)
    for variable in (*kernels.PORTABLE_ENV, kernels.OUTSIDE_ENV):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE")


def test_portable_sets_every_variable_and_native_gives_the_user_their_own_back(fresh):
    kernels.select("portable")
    assert os.environ["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    assert os.environ["TF_ENABLE_ONEDNN_OPTS"] == "0"
    assert set(os.environ["NPY_DISABLE_CPU_FEATURES"].split()) >= {"X86_V4"}
    kernels.select("native")
    assert os.environ["ONEDNN_MAX_CPU_ISA"] == "AVX512_CORE"  # the user's, not ours
    assert "TF_ENABLE_ONEDNN_OPTS" not in os.environ and kernels.active() == "native"


def test_a_child_process_gets_the_users_settings_not_the_portable_ones(fresh, monkeypatch):
    """A command on the portable path starts `dvc exp run` of a native preset: its stages must
    see the user's environment, not the portable values its parent set."""
    kernels.select("portable")
    handed_down = os.environ[kernels.OUTSIDE_ENV]
    monkeypatch.setattr(kernels, "_outside", {})  # the child: a new process, same environment
    monkeypatch.setattr(kernels, "_selected", [])
    assert os.environ["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    kernels.select("native")
    assert os.environ["ONEDNN_MAX_CPU_ISA"] == "AVX512_CORE"
    assert os.environ[kernels.OUTSIDE_ENV] == handed_down


def test_a_program_not_ours_gets_the_users_own_environment(fresh):
    """The plain Keras baseline of `make bench` runs as it would in the user's shell."""
    kernels.select("portable")
    env = kernels.outside_environment(dict(os.environ))
    assert env["ONEDNN_MAX_CPU_ISA"] == "AVX512_CORE"
    assert not {"TF_ENABLE_ONEDNN_OPTS", "NPY_DISABLE_CPU_FEATURES", kernels.OUTSIDE_ENV} & set(env)


def test_another_path_once_tensorflow_loaded_is_refused_or_warned(capsys):
    with pytest.raises(KernelPathError, match="run it as a process of its own"):
        kernels.select("native")
    kernels.select("native", strict=False)  # a served model trained natively: a warning
    assert "warning: train.kernels=native: TensorFlow already loaded" in capsys.readouterr().err
    assert kernels.active() == "portable"


@pytest.mark.parametrize(
    ("text", "mode"),
    [
        ("train: {kernels: native}\n", "native"),
        ("train: {kernels: portable}\n", "portable"),
        ("train: {epochs: 3}\n", "portable"),  # the default
        ("train: {kernels: fast}\n", "portable"),  # validation names it later
        ("[not, a, mapping]\n", "portable"),
        (": broken yaml {\n", "portable"),
    ],
)
def test_the_mode_is_read_from_params_yaml_before_anything_heavy(tmp_path, text, mode):
    (tmp_path / "params.yaml").write_text(text)
    assert kernels.mode_in(tmp_path / "params.yaml") == mode
    assert kernels.mode_in(tmp_path / "missing.yaml") == "portable"


def test_bfloat16_needs_the_native_path():
    with pytest.raises(PipelineError, match=r"set train\.kernels=native"):
        parse_params(tiny_params(train={"precision": "mixed_bfloat16"}))
    parse_params(tiny_params(train={"precision": "mixed_bfloat16", "kernels": "native"}))


def test_a_stage_refuses_params_of_another_path_than_its_process(workdir, call_main):
    preprocess.preprocess(load_params().preprocess)
    write_params(workdir, train={"kernels": "native"})
    result = call_main(train.main)
    assert result.code == 1
    (line,) = result.errors()
    assert line.startswith("error: train.kernels=native: TensorFlow already loaded")


def test_the_isa_named_is_the_cpus_best_under_the_cap(monkeypatch):
    amx = {"avx2", "fma", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_bf16"}
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    assert kernels.onednn_isa(amx) == "AVX512_CORE_AMX"
    assert kernels.onednn_isa({"avx2", "fma"}) == "AVX2"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE")
    assert kernels.onednn_isa(amx) == "AVX512_CORE"
    assert kernels.onednn_isa({"avx2", "fma"}) == "AVX2"  # a cap above the CPU's best
    assert kernels.portable_available({"avx2", "fma"})
    assert not kernels.portable_available({"sse4_2", "avx"})


# Other CPUs, simulated ---------------------------------------------------------------------


SIMULATED = ("AVX2", "AVX512_CORE", "AVX512_CORE_AMX")  # Haswell/Zen, Skylake-SP, Sapphire Rapids


def caps_this_cpu_allows() -> list[str | None]:
    """The SIMULATED oneDNN instruction-set caps this CPU runs, and None (the CPU's own)."""
    flags = kernels.cpu_flags()
    allowed = {name for name, flag in kernels.ISA_BY_FLAG if flag in flags}
    return [cap for cap in SIMULATED if cap in allowed] + [None]


def simulated_cpu(mode: str, cap: str | None, rewrites: str) -> dict[str, str]:
    """The environment of a shell on a CPU whose instruction set oneDNN would cap at `cap`
    and on which TensorFlow would turn its rewrites on or off (`rewrites`)."""
    env = {k: v for k, v in os.environ.items() if k not in kernels.PORTABLE_ENV}
    env.pop(kernels.OUTSIDE_ENV, None)  # none of this process's own choices
    return env | {"TF_ENABLE_ONEDNN_OPTS": rewrites} | ({"ONEDNN_MAX_CPU_ISA": cap} if cap else {})


def portable_cases(least: int = 4) -> list[tuple[str | None, str]]:
    """(cap, rewrites) of the portable trainings: every cap this CPU allows once, the CPU's own
    with the rewrites on (TensorFlow's default) and the next with them off, and so on
    alternating, so that each choice the portable path must override is made by some run;
    then other pairs until there are `least` (on a CPU with few caps)."""
    caps = caps_this_cpu_allows()[::-1]  # None (the CPU's own) first
    cases = [(cap, "10"[number % 2]) for number, cap in enumerate(caps)]
    others = [(cap, rewrites) for cap in caps for rewrites in "10" if (cap, rewrites) not in cases]
    return cases + others[: max(0, least - len(cases))]


def test_the_portable_path_blocks_every_product_by_the_pinned_cache_sizes():
    """Eigen's sizes in both of TensorFlow's libraries are ours, after products have run, and
    the CPU's own are what Eigen's cpuid reader reports (recorded with every run)."""
    import tensorflow as tf

    tf.matmul(tf.ones([300, 784]), tf.ones([784, 512]))
    assert eigen_caches.in_use() == dict.fromkeys(eigen_caches.LIBRARIES, kernels.PORTABLE_CACHES)
    assert kernels.eigen_blocking() == "L1 48K, L2 2M, L3 300M"
    assert kernels.path().endswith("Eigen blocks for L1 48K, L2 2M, L3 300M)")
    l1, l2, _ = eigen_caches.of_this_cpu()
    assert l1 >= 16 * 2**10 and l2 >= 128 * 2**10  # what any x86-64 CPU reports
    assert kernels.cpu_caches() == eigen_caches.format_sizes(eigen_caches.of_this_cpu())


def test_pinning_other_sizes_once_eigen_has_its_own_is_refused_and_changes_nothing():
    with pytest.raises(eigen_caches.CachePinError, match="pin before TensorFlow's first matrix"):
        eigen_caches.pin((32 * 2**10, 512 * 2**10, 16 * 2**20))
    assert set(eigen_caches.in_use().values()) == {kernels.PORTABLE_CACHES}


def test_the_symbol_table_gives_local_symbols_and_names_what_it_lacks(tmp_path):
    """libtensorflow_cc.so.2 holds Eigen's variable as a local symbol, which the dynamic
    linker cannot find; a library without it (another TensorFlow build) is named."""
    _, library = eigen_caches.loaded_libraries()["libtensorflow_cc.so.2"]
    offsets = eigen_caches.symbol_offsets(library, (eigen_caches.VARIABLE, eigen_caches.GUARD))
    assert offsets[eigen_caches.GUARD] != offsets[eigen_caches.VARIABLE] > 0
    with pytest.raises(eigen_caches.CachePinError, match=r"libtensorflow_cc\.so\.2: no symbol _Z"):
        eigen_caches.symbol_offsets(library, (b"_ZN5Eigen8internal9no_such_thingEv",))
    (tmp_path / "lib.so").write_bytes(b"#!/bin/sh\n")
    with pytest.raises(eigen_caches.CachePinError, match=r"lib\.so: not a 64-bit ELF library"):
        eigen_caches.symbol_offsets(tmp_path / "lib.so", (eigen_caches.VARIABLE,))


@pytest.mark.parametrize(
    ("then", "here", "named"),
    [
        ("L1 48K, L2 2M, L3 300M", "L1 32K, L2 512K, L3 16M", "L2 2M then, 512K here; L1 48K"),
        ("L1 48K, L2 2M, L3 300M", "L1 48K, L2 2M, L3 32M", "L3 300M then, 32M here"),
        ("L1 48K, L2 2M, L3 300M", "L1 48K, L2 2M, L3 300M", ""),
        ("?", "L1 48K, L2 2M, L3 300M", "L2 ? then, 2M here"),
    ],
)
def test_a_cache_difference_is_named_l2_first(then, here, named):
    assert cache_difference(then, here).startswith(named)


BLOCKED_PRODUCT = """
import hashlib, os
from mnist_dense.runtime.process import prepare
prepare()  # params.yaml: kernels native, so nothing is pinned at load (the portable
# path's other settings come from the environment the test gives)
from mnist_dense.runtime import eigen_caches
import numpy as np
import tensorflow as tf
if os.environ.get("SIZES"):
    eigen_caches.pin(tuple(int(size) for size in os.environ["SIZES"].split(",")))
tf.config.threading.set_intra_op_parallelism_threads(2)
rng = np.random.default_rng(0)
x, dy = (rng.standard_normal((256, n)).astype(np.float32) for n in (784, 512))
product = tf.matmul(x, dy, transpose_a=True)  # the first layer's weight gradient
print(hashlib.md5(product.numpy().tobytes()).hexdigest())
"""


@pytest.mark.slow  # two processes, each loading TensorFlow
def test_the_cache_sizes_eigen_blocks_by_change_the_bits_of_a_training_product(tmp_path):
    """Why the portable path pins them: the default network's weight gradient at batch 256,
    blocked as on this machine's reference sizes and as on a CPU with a 512 KiB L2 (AMD Zen
    1-3), gives other bits, with the same kernels: Eigen's contraction and oneDNN's AVX2
    sgemm, as on the portable path (tests/test_emulated_cpus.py runs whole trainings on
    emulated CPUs)."""
    (tmp_path / "params.yaml").write_text("train: {kernels: native}\n")
    sizes = {"reference": kernels.PORTABLE_CACHES, "zen2": (32 * 2**10, 512 * 2**10, 16 * 2**20)}
    portable = {"TF_ENABLE_ONEDNN_OPTS": "0", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    outside = {k: v for k, v in os.environ.items() if k != kernels.OUTSIDE_ENV}

    def product_md5(name: str) -> str:
        env = outside | portable | {"SIZES": ",".join(map(str, sizes[name]))}
        result = subprocess.run(
            [sys.executable, "-c", BLOCKED_PRODUCT],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    with ThreadPoolExecutor(2) as pool:
        reference, zen2 = pool.map(product_md5, sizes)
    assert reference != zen2


def test_portable_bits_are_the_same_on_every_simulated_cpu_and_native_ones_are_not(
    workdir, tmp_path, run_command
):
    """Each CPU would pick its own instruction set and TensorFlow's rewrites; here each choice
    is forced by the environment such a CPU would give, one process each. The portable path
    ignores them all; the native one follows them (so this test can fail on any CPU)."""
    preprocess.preprocess(load_params().preprocess)
    runs = [("portable", cap, rewrites) for cap, rewrites in portable_cases()]
    runs += [("native", None, "1"), ("native", "AVX2", "0")]  # rewrites on against off

    def model_md5(number: int) -> str:
        mode, cap, rewrites = runs[number]
        folder = tmp_path / f"cpu{number}"
        shutil.copytree(workdir, folder)
        write_params(folder, train={"kernels": mode})
        result = run_command("stages.train", cwd=folder, env=simulated_cpu(mode, cap, rewrites))
        assert result.returncode == 0, result.stderr
        return file_md5(folder / "models" / "model.keras")

    with ThreadPoolExecutor(2) as pool:  # two at a time (train.threads is 1)
        md5s = dict(zip(runs, pool.map(model_md5, range(len(runs))), strict=True))
    print("\n".join(f"{run}: {md5}" for run, md5 in md5s.items()))
    portable = {run: md5 for run, md5 in md5s.items() if run[0] == "portable"}
    native = {run: md5 for run, md5 in md5s.items() if run[0] == "native"}
    assert len(portable) >= 4 and len(set(portable.values())) == 1, portable
    assert len(set(native.values())) > 1, native


SCORE = """
import os
os.sched_setaffinity(0, {cores})  # the cores a machine would have, before TensorFlow loads
from mnist_dense.runtime.process import prepare
prepare()  # the project's kernel path
import hashlib
import keras
import numpy as np
from mnist_dense.model.network import configure_threads, predict
configure_threads({threads})
keras.utils.set_random_seed(0)
layers = [keras.Input((784,)), keras.layers.Dense(512, "relu"), keras.layers.Dense(10, "softmax")]
pixels = np.random.default_rng(0).random((2000, 784), np.float32)
print(hashlib.md5(predict(keras.Sequential(layers), pixels).tobytes()).hexdigest())
"""


@pytest.mark.slow  # four processes, each loading TensorFlow
def test_scores_on_the_params_threads_do_not_depend_on_the_cores_of_the_machine(tmp_path):
    """evaluate scores on train.threads threads, so a machine with more cores gets the same
    test metrics; on TensorFlow's default (a thread per usable core) the bits would differ."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs a machine with two cores to simulate one with one")

    def md5(case: tuple[set[int], int]) -> str:
        cores, threads = case
        code = SCORE.format(cores=cores, threads=threads)
        result = subprocess.run(
            [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    cases = [({0}, 2), ({0, 1}, 2), ({0}, 0), ({0, 1}, 0)]
    with ThreadPoolExecutor(2) as pool:
        pinned_one, pinned_two, default_one, default_two = pool.map(md5, cases)
    assert pinned_one == pinned_two
    assert default_one != default_two


# Only our lines on the terminal -------------------------------------------------------------

NOTES = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796118550.109340    4593 port.cc:153] oneDNN custom operations are on. You may "
    "see slightly different numerical results due to floating-point round-off errors.",
    "I0000 00:00:1796118550.139061    4593 cpu_feature_guard.cc:227] This TensorFlow binary is "
    "optimized to use available CPU instructions in performance-critical operations.",
    "To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild "
    "TensorFlow with the appropriate compiler flags.",
]


def test_the_filter_drops_tensorflows_start_up_notes_and_nothing_else(capfd):
    real = "E0000 00:00:1796118550.2 4593 some_op.cc:12] a real error"
    with quiet.filtered_stderr():
        os.write(2, "\n".join([*NOTES, real, "warning: ours"]).encode() + b"\n")
    assert capfd.readouterr().err.splitlines() == [real, "warning: ours"]


def test_a_stage_prints_only_its_own_lines(workdir, run_stage):
    preprocess.preprocess(load_params().preprocess)
    for env in ({}, {"TF_ENABLE_ONEDNN_OPTS": "1"}):  # explicit: one more note, also dropped
        result = run_stage("train", env)
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""
        assert result.stdout.startswith("epoch 1/3 - ")


def test_tensorflows_real_errors_still_show(workdir, run_stage):
    preprocess.preprocess(load_params().preprocess)
    huge = (  # past params.yaml's bounds, which would refuse it: train's params set directly
        "from mnist_dense.config import load_params\n"
        "from mnist_dense.runtime.cli import run\n"
        "from stages import train\n"
        "valid = load_params()\n"
        "big = valid.train.model_copy(update={'hidden_units': [2**31 - 1, 2**31 - 1]})\n"
        "train.load_params = lambda: valid.model_copy(update={'train': big})\n"
        "run(train.main)\n"
    )
    result = subprocess.run([sys.executable, "-c", huge], capture_output=True, text=True)
    assert result.returncode == 1
    assert "RESOURCE_EXHAUSTED: OOM when allocating tensor" in result.stderr  # TensorFlow's own
    assert not any(note.split()[0] in result.stderr for note in NOTES[1:3])
    assert "absl::InitializeLog" not in result.stderr


def test_every_entry_point_prepares_the_process_before_anything_else():
    """stages/, commands/, bench/ and tests/ set the process up in one call, before any
    third-party module can load."""
    for package in ("stages", "commands", "bench", "tests"):
        lines = (ROOT / package / "__init__.py").read_text().splitlines()
        code = [line for line in lines if line and not line.startswith(('"""', " ", "#"))]
        code = [line for line in code if not line.endswith('"""')]
        assert code[:2] == [
            "from mnist_dense.runtime.process import prepare",
            "prepare()  # first: the kernel path and a quiet start-up, before any library loads",
        ], package


ENVIRONMENT_PROBE = """
import importlib, json, os, pkgutil, sys
before = dict(os.environ)
{setup}
import mnist_dense
names = [m.name for m in pkgutil.walk_packages(mnist_dense.__path__, "mnist_dense.")]
for name in names:
    importlib.import_module(name)
changed = [k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k)]
print(json.dumps({{
    "modules": len(names),
    "changed": sorted(changed),
    "finders": sum(type(f).__module__.startswith("mnist_dense") for f in sys.meta_path),
}}))
"""


def environment_after(tmp_path: Path, setup: str = "") -> dict:
    """What `setup`, then importing every module of the library, changed in a process whose
    folder holds a params.yaml asking for the portable path."""
    (tmp_path / "params.yaml").write_text("train:\n  kernels: portable\n")
    env = {k: v for k, v in os.environ.items() if k not in kernels.PORTABLE_ENV}
    env = {k: v for k, v in env.items() if not k.startswith(("MLFLOW_", "MNIST_", "DO_NOT"))}
    result = subprocess.run(
        [sys.executable, "-c", ENVIRONMENT_PROBE.format(setup=setup)],
        cwd=tmp_path,
        env=env | {"PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.splitlines()[-1])


def test_importing_every_module_of_the_library_changes_nothing_in_the_process(tmp_path):
    imported = environment_after(tmp_path)
    assert imported["modules"] > 20
    assert imported["changed"] == [] and imported["finders"] == 0, imported


def test_prepare_sets_the_kernel_path_quiet_start_up_and_telemetry(tmp_path):
    """The control: the entry points' one call, then the same imports, changes what it says."""
    prepared = environment_after(
        tmp_path, "from mnist_dense.runtime.process import prepare\nprepare()"
    )
    assert {"TF_ENABLE_ONEDNN_OPTS", "MLFLOW_DISABLE_TELEMETRY"} <= set(prepared["changed"])
    assert prepared["finders"] == 1, prepared


def test_importing_the_library_loads_neither_numpy_nor_tensorflow(tmp_path):
    probe = "import sys, mnist_dense; print(sorted({'numpy', 'tensorflow'} & set(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env=os.environ,
        capture_output=True,
        text=True,
    )
    assert result.stdout.strip() == "[]", result.stderr


def test_on_arm_the_portable_path_is_its_own_and_says_so(fresh, monkeypatch):
    """No AVX2 there: portable pins what means something on ARM (TensorFlow's rewrites off,
    Eigen's blocking on Linux) and records that these are ARM's bits, not x86-64's."""
    monkeypatch.setattr(kernels.platform, "machine", lambda: "aarch64")
    kernels.select("portable")
    assert os.environ["TF_ENABLE_ONEDNN_OPTS"] == "0"
    assert os.environ["ONEDNN_MAX_CPU_ISA"] == "AVX512_CORE"  # the user's: x86 names stay unset
    assert not {"NPY_DISABLE_CPU_FEATURES", "OPENBLAS_CORETYPE"} & set(os.environ)
    assert not kernels.portable_available() and kernels.pins_blocking()
    assert kernels.path() == (
        "portable on aarch64 (oneDNN rewrites off, Eigen's aarch64 kernels, Eigen blocks for "
        "L1 48K, L2 2M, L3 300M): this architecture's bits, not x86-64's"
    )
    monkeypatch.setattr(kernels.platform, "machine", lambda: "arm64")
    monkeypatch.setattr(kernels.sys, "platform", "darwin")  # no /proc/self/maps to find Eigen by
    assert not kernels.pins_blocking()
    assert "Eigen blocks by the CPU's caches" in kernels.path()
