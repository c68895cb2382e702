"""The locked environment: requirements.in (the direct dependencies, edited by hand) and
requirements.txt (every package the venv holds, pinned with hashes; `make lock` compiles it,
as pip-tools and `uv pip compile` do).

    python -m commands.lock check      (make venv runs it)

warns, in one line, when this Python is not the one the lock was made for, and fails when the
venv holds a package the lock does not pin, or another version of one.
"""

import re
import sys
from importlib.metadata import distributions
from pathlib import Path

from packaging.requirements import Requirement

REQUIREMENTS_IN = Path("requirements.in")
REQUIREMENTS_LOCK = Path("requirements.txt")
PROJECT = "mnist-dense"  # this project itself, installed editable beside the lock (pyproject.toml)
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;\\]+)")
# installed by `python -m venv` itself, and this project (editable), not by the lock
VENV_SEED = {"pip", PROJECT}


def lock_python_version(lock_file: Path) -> str | None:
    """The Python version a lock was compiled for (uv's `--python-version`)."""
    try:
        header = Path(lock_file).read_text()[:2000]
    except OSError:
        return None
    found = re.search(r"--python-version[ =](\S+)", header)
    return found.group(1) if found else None


def normalize(name: str) -> str:
    """A distribution name in its canonical form (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_pins(path: Path = REQUIREMENTS_LOCK) -> dict[str, str]:
    """{package: version} of every pin in a lock file."""
    pins = {}
    for line in Path(path).read_text().splitlines():
        found = PIN.match(line)
        if found:
            pins[normalize(found.group(1))] = found.group(3)
    return pins


def direct_requirements(path: Path = REQUIREMENTS_IN) -> dict[str, Requirement]:
    """{package: requirement} of the hand-edited list."""
    requirements = {}
    for line in Path(path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            requirement = Requirement(line)
            requirements[normalize(requirement.name)] = requirement
    return requirements


def locked_as_direct(path: Path = REQUIREMENTS_LOCK) -> set[str]:
    """The packages the lock says it holds because requirements.in asks for them."""
    direct, current = set(), None
    for line in Path(path).read_text().splitlines():
        found = PIN.match(line)
        if found:
            current = normalize(found.group(1))
        elif current and re.search(r"#\s+(via\s+)?-r requirements\.in", line):
            direct.add(current)
    return direct


def disagreements(
    requirements: dict[str, Requirement], pins: dict[str, str], direct: set[str]
) -> list[str]:
    """How requirements.in and requirements.txt disagree (empty when they agree)."""
    problems = []
    for name, requirement in requirements.items():
        if name not in pins:
            problems.append(f"{name} is in requirements.in but not in the lock")
        elif not requirement.specifier.contains(pins[name], prereleases=True):
            problems.append(
                f"{name}: the lock pins {pins[name]}, requirements.in asks {requirement}"
            )
    for name in sorted(direct - set(requirements)):
        problems.append(f"{name} is locked for requirements.in, which no longer asks for it")
    return problems


def installed() -> dict[str, str]:
    """{package: version} of what this interpreter's environment holds."""
    return {normalize(d.metadata["Name"]): d.version for d in distributions()}


def venv_differences(pins: dict[str, str], present: dict[str, str]) -> list[str]:
    """Packages installed but not pinned, pinned but missing, or of another version."""
    problems = []
    for name, version in sorted(present.items()):
        if name in VENV_SEED:
            continue
        if name not in pins:
            problems.append(f"{name} {version} is installed but not in the lock")
        elif pins[name] != version:
            problems.append(f"{name} {version} is installed, the lock pins {pins[name]}")
    problems += [
        f"{name} {pins[name]} is pinned but not installed"
        for name in sorted(set(pins) - set(present))
    ]
    return problems


def python_warning(lock: Path = REQUIREMENTS_LOCK) -> str | None:
    """One line when this Python is not the version the lock was compiled for."""
    wanted = lock_python_version(lock)
    running = "{}.{}".format(*sys.version_info[:2])
    if wanted and wanted != running:
        return (
            f"warning: {lock} was made for Python {wanted}, this venv runs Python {running}; "
            "results may differ in the last bits (`make lock` makes a lock for this Python)"
        )
    return None


def main() -> None:
    if sys.argv[1:] != ["check"]:
        sys.exit("usage: python -m commands.lock check")
    warning = python_warning()
    if warning:
        print(warning, file=sys.stderr)
    problems = disagreements(direct_requirements(), lock_pins(), locked_as_direct())
    problems += venv_differences(lock_pins(), installed())
    if problems:
        sys.exit(f"error: the venv and {REQUIREMENTS_LOCK} disagree: {'; '.join(problems)}")


if __name__ == "__main__":
    main()
