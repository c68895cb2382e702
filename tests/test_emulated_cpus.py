"""The same bits on other x86-64 CPUs: a small training and evaluation on CPUs that QEMU
emulates (their vendor and cache sizes by cpuid, AVX2 and no AVX-512), against this machine's.

The emulated training is a tier of its own (`make test-emulated`, marker `emulated`): each
emulated process takes minutes (bench/emulated_cpus.py). The table's verdict is fast-tier.
"""

import sys

import pytest

from bench import emulated_cpus
from tests.conftest import ROOT
from tooling.synthetic_mnist import write_processed

# two steps of the default batch (every product of a step, twice), validation in one batch and
# the 2,000 test images in one of evaluate's batches
SIZES = {"train": 512, "val": 256, "test": 2000}


@pytest.mark.timeout(1500)  # 8 minutes here; a CI machine up to twice as slow needs 16
def test_the_portable_path_gives_this_machines_bits_on_every_emulated_cpu(qemu, tmp_path):
    """Three emulated CPUs, both vendors and both of QEMU's L2 sizes (4 MiB and 512 KiB, which
    gave other bits before Eigen's blocking was pinned), train and score as this machine
    does; the native path on one of them does not, so this test can fail."""
    processed = write_processed(tmp_path / "processed", SIZES)
    models = list(emulated_cpus.MODELS)
    rows = emulated_cpus.rows(models, emulated_cpus.CONTROL, ROOT / "params.yaml", processed, SIZES)
    print("\n" + emulated_cpus.HEADER + "\n" + "\n".join(row.markdown() for row in rows))
    here, *emulated, native = rows
    reported = [row.cpu_caches for row in emulated]
    assert [caches.split(", ")[1] for caches in reported] == ["L2 4M", "L2 512K", "L2 512K"]
    pinned = "L1 48K, L2 2M, L3 300M"
    assert {row.eigen_blocking for row in (here, *emulated)} == {pinned}
    assert [row.bits() for row in emulated] == [here.bits()] * len(models)
    assert native.eigen_blocking == native.cpu_caches == "L1 32K, L2 512K, L3 16M"
    assert native.model_md5 != here.model_md5


def row(cpu: str, kernels: str, model: str) -> emulated_cpus.Row:
    caches = "L1 48K, L2 2M, L3 300M"
    return emulated_cpus.Row(cpu, kernels, model, "h" * 32, "s" * 32, caches, caches, 1.0)


@pytest.mark.parametrize(("emulated_model", "code"), [("a" * 32, None), ("b" * 32, 1)])
def test_the_table_fails_when_a_portable_row_differs_from_this_machine(
    monkeypatch, tmp_path, capsys, emulated_model, code
):
    """make emulated-cpus: its arguments reach the runs, and only the portable rows decide."""
    (tmp_path / "x_train.npy").write_bytes(b"")
    asked = {}

    def rows(models, control, params_file, processed, **options):
        asked.update(models=models, control=control, processed=processed, **options)
        here, emulated = (
            row("this machine", "portable", "a" * 32),
            row("m", "portable", emulated_model),
        )
        return [here, emulated, row("m", "native", "c" * 32)]

    monkeypatch.setattr(emulated_cpus, "rows", rows)
    monkeypatch.setattr(emulated_cpus.shutil, "which", lambda name: f"/usr/bin/{name}")
    argv = ["emulated_cpus", "--models", "EPYC-Rome", "--data", str(tmp_path), "--jobs", "1"]
    monkeypatch.setattr(sys, "argv", argv)
    if code is None:
        emulated_cpus.main()
        assert "OK: the portable path gave this machine's bits on all 1 emulated CPUs" in (
            capsys.readouterr().out
        )
    else:
        with pytest.raises(SystemExit, match="other bits than this machine's on m"):
            emulated_cpus.main()
    assert asked == {
        "models": ["EPYC-Rome"],
        "control": "EPYC-Rome",
        "processed": tmp_path,
        "jobs": 1,
    }
