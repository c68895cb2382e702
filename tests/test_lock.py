"""The locked environment: requirements.in and requirements.txt agree, every pin carries its
hashes, and the venv the tests run in holds exactly what the lock pins."""

import re

from commands.lock import (
    direct_requirements,
    disagreements,
    installed,
    lock_pins,
    locked_as_direct,
    python_warning,
    venv_differences,
)
from tests.conftest import ROOT

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


def test_the_venv_holds_exactly_what_the_lock_pins():
    assert venv_differences(lock_pins(LOCK), installed()) == []


def test_a_package_the_lock_does_not_pin_is_found():
    pins = {"numpy": "2.4.6", "keras": "3.15.1"}
    present = {"numpy": "2.4.5", "keras": "3.15.1", "requests": "2.0", "pip": "25"}
    assert venv_differences(pins, present) == [
        "numpy 2.4.5 is installed, the lock pins 2.4.6",
        "requests 2.0 is installed but not in the lock",
    ]


def test_another_python_than_the_lock_was_made_for_is_one_warning(tmp_path):
    assert python_warning(LOCK) is None  # the venv runs the lock's Python
    other = tmp_path / "requirements.txt"
    other.write_text(LOCK.read_text().replace("--python-version 3.11", "--python-version 3.99", 1))
    warning = python_warning(other)
    assert warning.startswith(
        f"warning: {other} was made for Python 3.99, this venv runs Python 3."
    )
    assert "\n" not in warning
