"""Servers run as plain processes on 127.0.0.1: a PostgreSQL cluster in a folder, and the
helpers to start, wait for and stop any server process. The team stack (commands/team.py) and
the tests (tests/servers.py) both use these.
"""

import glob
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path


class ServiceError(Exception):
    """A server that cannot be started or does not answer; the message names it."""


def port_free(port: int) -> bool:
    """Whether a server could listen on 127.0.0.1:`port` (as servers do, with SO_REUSEADDR:
    connections of a stopped server in TIME_WAIT do not count)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(
    ready: Callable[[], bool], what: str, timeout_s: float, alive: Callable[[], bool] | None = None
) -> None:
    """Poll `ready()` until true; ServiceError if `alive()` turns false or time runs out."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        if alive is not None and not alive():
            raise ServiceError(f"{what} exited while starting")
        if time.monotonic() > deadline:
            raise ServiceError(f"{what} did not answer within {timeout_s:g} s")
        time.sleep(0.3)


def stop_group(pid: int, timeout_s: float = 30) -> None:
    """SIGTERM the process group `pid` leads (its workers too); SIGKILL after `timeout_s`."""
    with suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            os.killpg(pid, 0)  # raises once every member is gone
            time.sleep(0.2)
        os.killpg(pid, signal.SIGKILL)


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


def postgres_bin() -> Path | None:
    """The folder holding initdb and pg_ctl: from PATH, else Debian's newest versioned one."""
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl:
        return Path(initdb).resolve().parent  # the real folder, beside `postgres` itself
    found = [Path(path).parent for path in glob.glob("/usr/lib/postgresql/*/bin/initdb")]
    found = [folder for folder in found if (folder / "pg_ctl").is_file()]
    if not found:
        return None
    return max(found, key=lambda folder: [int(part) for part in folder.parent.name.split(".")])


def unprivileged_user() -> str:
    """initdb and postgres refuse to run as root: the account they run as when we are root."""
    try:
        return pwd.getpwnam("postgres").pw_name
    except KeyError:
        return "nobody"


class Postgres:
    """A PostgreSQL cluster in `folder`, on 127.0.0.1:`port`, user `mlflow` with a password
    (scram-sha-256; no `trust`), its socket in the folder too."""

    def __init__(self, folder: Path, port: int, password: str) -> None:
        self.binaries = postgres_bin()
        if self.binaries is None:
            raise ServiceError(
                "PostgreSQL: initdb and pg_ctl are neither on PATH nor under "
                "/usr/lib/postgresql/*/bin (apt-get install postgresql)"
            )
        self.folder, self.port, self.password = Path(folder), port, password
        self.data, self.log = self.folder / "data", self.folder / "postgres.log"
        self.prefix: list[str] = []
        if os.getuid() == 0:
            self.prefix = ["runuser", "-u", unprivileged_user(), "--"]

    def uri(self, database: str = "mlflow") -> str:
        return f"postgresql://mlflow:{self.password}@127.0.0.1:{self.port}/{database}"

    def _run(self, tool: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*self.prefix, str(self.binaries / tool), *args],
            cwd="/",  # wherever the database user may be
            capture_output=True,
            text=True,
            timeout=120,
            env=os.environ | {"PGPASSWORD": self.password},
        )

    def _own_folder(self) -> None:
        if self.prefix:  # the database user must reach the folder, and own it
            parent = self.folder.parent
            parent.chmod(parent.stat().st_mode | 0o011)
            user = pwd.getpwnam(unprivileged_user())
            for path in (self.folder, *self.folder.glob("*")):
                os.chown(path, user.pw_uid, user.pw_gid)

    def initialized(self) -> bool:
        return (self.data / "PG_VERSION").is_file()

    def init(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        secret = self.folder / "password"
        secret.write_text(self.password + "\n")
        secret.chmod(0o600)
        self._own_folder()
        made = self._run(
            "initdb", "-D", str(self.data), "-U", "mlflow", "--auth=scram-sha-256",
            f"--pwfile={secret}", "-E", "UTF8", "--no-sync",
        )  # fmt: skip
        secret.unlink()
        if made.returncode != 0:
            raise ServiceError(f"PostgreSQL: initdb failed ({made.stderr.strip()[-300:]})")

    def _client(self, tool: str, *args: str) -> subprocess.CompletedProcess:
        """A client tool connecting as `mlflow` over TCP, with the password."""
        return self._run(tool, "-h", "127.0.0.1", "-p", str(self.port), "-U", "mlflow", *args)

    def ready(self) -> bool:
        return self._client("pg_isready", "-q").returncode == 0

    def start(self, timeout_s: float = 60) -> None:
        options = f"-h 127.0.0.1 -p {self.port} -k {self.folder} -c fsync=off"
        data, log = str(self.data), str(self.log)
        started = self._run("pg_ctl", "start", "-D", data, "-l", log, "-o", options, "-W")
        if started.returncode != 0:
            raise ServiceError(f"PostgreSQL: pg_ctl start failed ({log_tail(self.log, 3)})")
        wait_until(self.ready, f"PostgreSQL on 127.0.0.1:{self.port}", timeout_s)

    def create_database(self, name: str) -> None:
        listed = self._client("psql", "-d", "postgres", "-Atc", "SELECT datname FROM pg_database")
        if name not in listed.stdout.split():
            made = self._client("createdb", name)
            if made.returncode != 0:
                raise ServiceError(f"PostgreSQL: createdb {name} failed ({made.stderr.strip()})")

    def stop(self) -> None:
        if self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "fast", "-w").returncode != 0:
            pid_file = self.data / "postmaster.pid"  # pg_ctl could not stop it: kill it ourselves
            if pid_file.exists():
                with suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)


def run_queue(dvc: str, jobs: int, cwd: Path, env: dict | None = None, timeout: float = 0) -> str:
    """Run every queued DVC experiment on `jobs` workers and wait until none is queued or
    running (at most `timeout` seconds, 0: no limit); stop the workers; the final
    `dvc queue status`. Workers are started with their output in a file, never a pipe: they
    inherit it, and a caller reading that pipe would wait as long as an idle worker stays up."""
    folder = Path(cwd) / ".dvc" / "tmp"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "queue-start.log", "w+") as log:
        started = subprocess.run(
            [dvc, "queue", "start", "-j", str(jobs)], cwd=cwd, env=env, stdout=log, stderr=log
        )
        log.seek(0)
        if started.returncode != 0:
            raise ServiceError(f"dvc queue start failed: {log.read().strip()}")
    deadline = time.monotonic() + timeout
    try:
        while True:
            status = subprocess.run(
                [dvc, "queue", "status"], cwd=cwd, env=env, capture_output=True, text=True
            ).stdout
            if not re.search(r"\b(Queued|Running)\b", status):
                return status
            if timeout and time.monotonic() > deadline:
                raise ServiceError(f"the DVC queue did not finish in {timeout:.0f} s")
            time.sleep(2)
    finally:
        subprocess.run([dvc, "queue", "stop"], cwd=cwd, env=env, capture_output=True, timeout=120)
