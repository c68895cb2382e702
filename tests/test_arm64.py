"""Linux on ARM, for real: the project's stages run by Debian's arm64 Python under
qemu-aarch64, from the lock's aarch64 wheels (bench/arm64.py; a tier of its own, `make
test-arm64`: minutes of emulation)."""

import pytest

from bench import arm64


@pytest.mark.timeout(1500)  # 2-6 minutes here; the first run also installs 2.2 GB of wheels
def test_the_stages_run_on_aarch64_and_record_its_own_kernel_path(qemu_aarch64):
    runs = arm64.compare()
    print("\n" + arm64.report(runs))
    arm, here = runs
    assert arm.kernel_path.startswith("portable on aarch64 (oneDNN rewrites off, Eigen's aarch64")
    assert arm.kernel_path.endswith("this architecture's bits, not x86-64's")
    assert here.kernel_path.startswith("portable (oneDNN rewrites off, oneDNN AVX2")
    assert set(arm.seconds) == set(arm64.STAGES)  # preprocess, train and evaluate each ran
    assert arm.test_accuracy > 0.5  # the tiny digits learned, far above chance (0.1)
    assert arm.model_md5 != here.model_md5  # another architecture, other kernels, other bits
