"""The locked environment: requirements.in (the direct dependencies, edited by hand) and
requirements.txt (every package the venv holds on any supported platform, pinned with hashes;
`make lock` compiles it universally, with environment markers, as `uv pip compile --universal`
does).

    python -m tooling.lock check      (make venv runs it)

fails, in one line, when requirements.in and the lock disagree, or when the venv holds a package
that the lock's lines for this platform and Python do not pin, or another version of one.
"""

import re
import sys
from importlib.metadata import distributions
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement

REQUIREMENTS_IN = Path("requirements.in")
REQUIREMENTS_LOCK = Path("requirements.txt")
PROJECT = "mnist-dense"  # this project itself, installed editable beside the lock (pyproject.toml)
# `name==version`, `name[extra]==version`, either with ` ; <environment marker>` before the hashes
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;\\]+)(?:\s*;\s*([^\\]+))?")
# installed by `python -m venv` itself, and this project (editable), not by the lock
VENV_SEED = {"pip", PROJECT}


def normalize(name: str) -> str:
    """A distribution name in its canonical form (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_pins(path: Path = REQUIREMENTS_LOCK, here: bool = False) -> dict[str, str]:
    """{package: version} of every pin in a lock file; with `here`, of the pins whose marker
    holds on this platform and Python (what `uv pip sync` installs here)."""
    pins = {}
    for line in Path(path).read_text().splitlines():
        found = PIN.match(line)
        if found and (
            not here or found.group(4) is None or Marker(found.group(4).strip()).evaluate()
        ):
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


def main() -> None:
    if sys.argv[1:] != ["check"]:
        sys.exit("usage: python -m tooling.lock check")
    problems = disagreements(direct_requirements(), lock_pins(), locked_as_direct())
    problems += venv_differences(lock_pins(here=True), installed())
    if problems:
        sys.exit(f"error: the venv and {REQUIREMENTS_LOCK} disagree: {'; '.join(problems)}")


if __name__ == "__main__":
    main()
