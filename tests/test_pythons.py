"""Python 3.11, 3.12 and 3.13, the versions the README supports: the lock installs under each
(uv, hashes required), and the small training of bench/emulated_cpus.py gives the same bits
under each: the model, its history and the test scores."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench import emulated_cpus
from tests.conftest import BIN, ROOT
from tooling.synthetic_mnist import write_processed

SUPPORTED = ("3.11", "3.12", "3.13")  # pyproject.toml's requires-python, the README's promise
SIZES = {"train": 512, "val": 256, "test": 2000}


def interpreter(version: str) -> str | None:
    """A Python of that version: this one, one on the PATH, or one pyenv holds."""
    if "{}.{}".format(*sys.version_info[:2]) == version:
        return sys.executable
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates = [shutil.which(f"python{version}")]
    candidates += sorted(map(str, root.glob(f"{version}.*/bin/python{version}")), reverse=True)
    for candidate in filter(None, candidates):
        result = subprocess.run([candidate, "--version"], capture_output=True, text=True)
        if result.returncode == 0 and result.stdout.split()[1].startswith(version + "."):
            return candidate
    return None


@pytest.fixture(scope="module")
def venvs(tmp_path_factory) -> dict[str, str]:
    """{version: the python of a venv made from requirements.txt, with this project}."""
    found = {version: interpreter(version) for version in SUPPORTED}
    missing = [version for version, path in found.items() if path is None]
    if missing:
        pytest.skip(f"no Python {', '.join(missing)} on this machine (PATH or pyenv)")
    folder = tmp_path_factory.mktemp("pythons")
    made = {}
    for version, python in found.items():
        if python == sys.executable:
            made[version] = python
            continue
        venv, uv = folder / version, str(BIN / "uv")
        subprocess.run([uv, "venv", "-q", "--python", python, str(venv)], check=True)
        target = ["--python", str(venv / "bin" / "python")]
        lock = str(ROOT / "requirements.txt")
        subprocess.run([uv, "pip", "sync", "-q", "--require-hashes", *target, lock], check=True)
        editable = ["--no-deps", "--no-build-isolation", "-e", str(ROOT)]
        subprocess.run([uv, "pip", "install", "-q", *target, *editable], check=True)
        made[version] = str(venv / "bin" / "python")
    return made


@pytest.mark.slow  # two venvs from the lock, three trainings as processes
def test_every_supported_python_installs_the_lock_and_trains_the_same_bits(venvs, tmp_path):
    processed = write_processed(tmp_path / "processed", SIZES)
    rows = {}
    for version, python in venvs.items():
        folder = tmp_path / version
        emulated_cpus.prepare(folder, ROOT / "params.yaml", processed, "portable", SIZES)
        rows[version] = emulated_cpus.run(folder, None, "portable", python)
    print("\n" + "\n".join(f"Python {v}: {' '.join(row.bits())}" for v, row in rows.items()))
    assert {version: row.bits() for version, row in rows.items()} == dict.fromkeys(
        SUPPORTED, rows["3.11"].bits()
    )
