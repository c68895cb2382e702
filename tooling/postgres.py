"""A PostgreSQL cluster in a folder, on 127.0.0.1, with password authentication: the team
stack's database (commands/team.py) and the tests' throwaway ones (tests/servers.py)."""

import glob
import os
import pwd
import shutil
import signal
import subprocess
from contextlib import suppress
from pathlib import Path

from tooling.processes import ServiceError, log_tail, wait_until


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
