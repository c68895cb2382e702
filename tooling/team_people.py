"""Who works on the team stack: one MLflow account per person, each with a role.

Every person logs runs and registers versions; only a person with the role `release` moves
the `champion` alias, whose version the served model runs. A shared account would make
`promoted.by` anyone's and put the alias in everyone's hands, so the stack has none.

The list is a text file, one person per line (`#` starts a comment), safe to commit since it
holds no secret:

    alice   release
    bob     member

It is MNIST_TEAM_PEOPLE when set, else <stack>/people, which team-up writes on first use with
the local user as the one release person. Each person's password is generated into
<stack>/passwords/<name> (0600, in a 0700 folder) and never printed but by `team-env` for the
person it is run as (MNIST_TEAM_USER, else the local user's name if listed, else the one
person listed).
"""

import getpass
import json
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from mnist_dense.errors import PipelineError
from mnist_dense.files import private_folder, write_private

ROLES = ("release", "member")
NAME = re.compile(r"[A-Za-z][A-Za-z0-9._-]{0,63}")  # a file name, and no MLflow surprise
RESERVED = ("admin",)  # the server's own administrator


@dataclass(frozen=True)
class Person:
    name: str
    role: str
    password: str

    @property
    def releases(self) -> bool:
        return self.role == "release"


def list_file(home: Path) -> Path:
    return Path(os.environ.get("MNIST_TEAM_PEOPLE") or home / "people")


def parse(text: str, source: Path) -> dict[str, str]:
    """{name: role} of a people file; PipelineError naming the line of a mistake."""
    found: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        where = f"{source}, line {number}"
        if len(words) != 2 or words[1] not in ROLES:
            raise PipelineError(f"{where}: expected `<name> release|member`, got {line.strip()!r}")
        name, role = words
        if not NAME.fullmatch(name) or name.lower() in RESERVED:
            raise PipelineError(
                f"{where}: {name!r} is not a name for a person (letters, digits, . _ -; "
                f"a letter first; not {', '.join(RESERVED)})"
            )
        if name in found:
            raise PipelineError(f"{where}: {name} is listed twice")
        found[name] = role
    if not found:
        raise PipelineError(f"{source}: lists no one (one `<name> release|member` a line)")
    return found


def default_name() -> str:
    name = getpass.getuser()
    return name if NAME.fullmatch(name) and name.lower() not in RESERVED else "lead"


def people(home: Path) -> list[Person]:
    """The people of the stack in `home`, each with a password (made on first use)."""
    path = list_file(home)
    if not path.is_file():
        if os.environ.get("MNIST_TEAM_PEOPLE"):
            raise PipelineError(f"MNIST_TEAM_PEOPLE: {path} does not exist")
        write_private(
            path, f"# name  role (release|member); see docs/team.md\n{default_name()} release\n"
        )
    roles = parse(path.read_text(), path)
    folder = private_folder(home / "passwords")
    listed = []
    for name, role in roles.items():
        secret = folder / name
        if not secret.is_file():
            write_private(secret, secrets.token_urlsafe(18) + "\n")
        listed.append(Person(name, role, secret.read_text().strip()))
    return listed


def me(listed: list[Person]) -> Person:
    """The person this shell works as: MNIST_TEAM_USER, else the local user if listed, else
    the only person listed."""
    by_name = {person.name: person for person in listed}
    chosen = os.environ.get("MNIST_TEAM_USER")
    if chosen:
        if chosen not in by_name:
            raise PipelineError(
                f"MNIST_TEAM_USER={chosen}: not on the team's list ({', '.join(by_name)})"
            )
        return by_name[chosen]
    if getpass.getuser() in by_name:
        return by_name[getpass.getuser()]
    if len(listed) == 1:
        return listed[0]
    raise PipelineError(
        f"who are you? set MNIST_TEAM_USER to one of {', '.join(by_name)} "
        "(e.g. MNIST_TEAM_USER=alice make -s team-env)"
    )


def write_roles(path: Path, listed: list[Person]) -> None:
    """The roles as the tracking server's release guard reads them (tooling/release_guard.py):
    no passwords, the names of each role."""
    roles = {role: sorted(p.name for p in listed if p.role == role) for role in ROLES}
    write_private(path, json.dumps(roles, indent=2) + "\n")
