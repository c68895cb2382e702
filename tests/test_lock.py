"""The locked environment: requirements.in and requirements.txt agree, every pin carries its
hashes, the venv the tests run in holds exactly what the lock pins for this platform, and the
lock installs, from wheels, on every supported platform and Python."""

import re
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import BIN, ROOT
from tooling.lock import (
    direct_requirements,
    disagreements,
    installed,
    lock_pins,
    locked_as_direct,
    venv_differences,
)

IN, LOCK = ROOT / "requirements.in", ROOT / "requirements.txt"


def test_requirements_in_and_the_lock_agree():
    assert disagreements(direct_requirements(IN), lock_pins(LOCK), locked_as_direct(LOCK)) == []
    assert set(direct_requirements(IN)) == locked_as_direct(LOCK)
    assert len(lock_pins(LOCK)) > len(direct_requirements(IN))  # the lock holds the rest too


def test_a_disagreement_between_the_list_and_the_lock_is_named(tmp_path):
    edited = tmp_path / "requirements.in"
    text = (
        IN.read_text()
        .replace("keras==", "keras==9.9.9 # was ")
        .replace("pyyaml==6.0.3", "pyyaml==6.0.3\nleftpad==1.0")
    )
    edited.write_text(re.sub(r"^ruff==.*$", "", text, flags=re.M))
    problems = disagreements(direct_requirements(edited), lock_pins(LOCK), locked_as_direct(LOCK))
    assert any(
        p.startswith("keras: the lock pins 3.15.1, requirements.in asks keras==9.9.9")
        for p in problems
    )
    assert "leftpad is in requirements.in but not in the lock" in problems
    assert "ruff is locked for requirements.in, which no longer asks for it" in problems


def test_every_locked_package_is_pinned_with_its_hashes():
    entries = re.split(r"\n(?=[A-Za-z0-9])", LOCK.read_text().split("\n", 2)[2])
    assert len(entries) == len(lock_pins(LOCK))
    assert all("--hash=sha256:" in entry for entry in entries)


def test_the_venv_holds_exactly_what_the_lock_pins_for_this_platform():
    assert venv_differences(lock_pins(LOCK, here=True), installed()) == []
    assert set(lock_pins(LOCK)) - set(lock_pins(LOCK, here=True))  # lines for elsewhere too


def test_a_package_the_lock_does_not_pin_is_found():
    pins = {"numpy": "2.4.6", "keras": "3.15.1"}
    present = {"numpy": "2.4.5", "keras": "3.15.1", "requests": "2.0", "pip": "25"}
    assert venv_differences(pins, present) == [
        "numpy 2.4.5 is installed, the lock pins 2.4.6",
        "requests 2.0 is installed but not in the lock",
    ]


def test_the_venv_gets_the_lines_for_this_platform(tmp_path):
    """One lock for every platform: a line's marker decides where it installs."""
    lock = tmp_path / "requirements.txt"
    lock.write_text(
        "tensorflow-cpu==2.21.0 ; sys_platform == 'linux' and platform_machine == 'x86_64' \\\n"
        "    --hash=sha256:aa\n"
        "tensorflow==2.21.0 ; sys_platform == 'plan9' \\\n    --hash=sha256:bb\nnumpy==2.4.6 \\\n"
    )
    assert lock_pins(lock) == {"tensorflow-cpu": "2.21.0", "tensorflow": "2.21.0", "numpy": "2.4.6"}
    here = lock_pins(lock, here=True)
    assert "tensorflow" not in here and here["numpy"] == "2.4.6"


# (uv's platform, Python): every platform and Python the README promises
TARGETS = [
    (platform, python)
    for platform in (
        "x86_64-unknown-linux-gnu",
        "aarch64-unknown-linux-gnu",
        "aarch64-apple-darwin",
    )
    for python in ("3.11", "3.12", "3.13")
]
PURE_PYTHON_SDISTS = ["antlr4-python3-runtime"]  # DVC's; no wheel on PyPI, nothing to compile


@pytest.fixture(scope="module")
def empty_venv(tmp_path_factory):
    """A venv holding nothing, for uv's dry runs to install everything into."""
    folder = tmp_path_factory.mktemp("empty") / "venv"
    subprocess.run(
        [str(BIN / "uv"), "venv", "-q", "--python", str(BIN / "python"), str(folder)], check=True
    )
    return folder / "bin" / "python"


def resolve(lock, platform: str, python: str, venv) -> subprocess.CompletedProcess:
    """uv's dry run of installing `lock` on that platform and Python: hashes required, wheels
    only but for the pure-Python sdists."""
    no_binary = [option for name in PURE_PYTHON_SDISTS for option in ("--no-binary", name)]
    command = [str(BIN / "uv"), "pip", "install", "--dry-run", "--require-hashes", "-r", str(lock)]
    command += ["--only-binary", ":all:", *no_binary, "--python", str(venv)]
    command += ["--python-platform", platform, "--python-version", python]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # uv asks PyPI for the wheels of nine targets
def test_the_lock_installs_from_wheels_on_every_platform_and_python(empty_venv):
    with ThreadPoolExecutor(3) as pool:
        resolved = pool.map(lambda target: resolve(LOCK, *target, empty_venv), TARGETS)
        results = dict(zip(TARGETS, resolved, strict=True))
    failed = {
        target: result.stderr[-300:] for target, result in results.items() if result.returncode
    }
    assert failed == {}
    counts = {
        re.search(r"Would install (\d+) packages", r.stderr).group(1) for r in results.values()
    }
    assert counts == {str(len(lock_pins(LOCK, here=True)))}  # the same packages everywhere


@pytest.mark.slow  # uv asks PyPI
def test_a_pin_without_a_wheel_for_a_target_fails_the_check(tmp_path, empty_venv):
    """The check can fail: the lock as it was, tensorflow-cpu everywhere, has no wheel for
    Linux on ARM."""
    lock = tmp_path / "requirements.txt"
    entries = re.split(r"\n(?=[A-Za-z0-9])", LOCK.read_text())
    kept = [entry for entry in entries if not entry.startswith("tensorflow==")]
    lock.write_text(re.sub(r"^(tensorflow-cpu==\S+) ;[^\\]*", r"\1 ", "\n".join(kept), flags=re.M))
    assert lock_pins(lock, here=True)["tensorflow-cpu"]  # unconditional now
    result = resolve(lock, "aarch64-unknown-linux-gnu", "3.11", empty_venv)
    assert result.returncode != 0
    assert "tensorflow-cpu" in result.stderr and "wheel" in result.stderr
