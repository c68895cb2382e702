"""A PostgreSQL cluster in a folder, on 127.0.0.1, with password authentication: the team
stack's database (commands/team.py) and the tests' throwaway ones (tests/servers.py)."""

import glob
import os
import pwd
import shlex
import shutil
import signal
import subprocess
import time
from contextlib import suppress
from pathlib import Path

from tooling.processes import ServiceError, command_line, log_tail, wait_until

SHELL_ACTIVE_IN_DOUBLE_QUOTES = set('$`"\\')
RETRY_S = 5.0  # pg_ctl start again after this long without an answer (see Postgres.start)


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
    (scram-sha-256; no `trust`), its socket in the folder too, only its owner's.

    `durable=False` turns fsync off: for a throwaway cluster a test makes and deletes, never
    for data anyone keeps (a power cut or a kernel crash could corrupt it beyond repair).
    """

    def __init__(self, folder: Path, port: int, password: str, durable: bool = True) -> None:
        # pg_ctl runs the server through a shell with -D and -l in double quotes, where these
        # still act ($(...) would run): such a folder is refused; a space is quoted safely
        if unsafe := sorted(SHELL_ACTIVE_IN_DOUBLE_QUOTES & set(str(folder))):
            raise ServiceError(
                f"PostgreSQL: {folder}: a cluster's folder may not contain {' '.join(unsafe)} "
                "(pg_ctl hands it to a shell in double quotes); choose another folder"
            )
        self.binaries = postgres_bin()
        if self.binaries is None:
            raise ServiceError(
                "PostgreSQL: initdb and pg_ctl are neither on PATH nor under "
                "/usr/lib/postgresql/*/bin (apt-get install postgresql)"
            )
        self.folder, self.port, self.password = Path(folder), port, password
        self.durable = durable
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
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        secret = self.folder / "password"  # initdb reads the password from a file, not argv
        descriptor = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(descriptor, "w") as stream:
                stream.write(self.password + "\n")
            self._own_folder()
            made = self._run(
                "initdb", "-D", str(self.data), "-U", "mlflow", "--auth=scram-sha-256",
                f"--pwfile={secret}", "-E", "UTF8", *([] if self.durable else ["--no-sync"]),
            )  # fmt: skip
        finally:
            secret.unlink(missing_ok=True)
        if made.returncode != 0:
            raise ServiceError(f"PostgreSQL: initdb failed ({made.stderr.strip()[-300:]})")

    def _client(self, tool: str, *args: str) -> subprocess.CompletedProcess:
        """A client tool connecting as `mlflow` over TCP, with the password."""
        return self._run(tool, "-h", "127.0.0.1", "-p", str(self.port), "-U", "mlflow", *args)

    def ready(self) -> bool:
        return self._client("pg_isready", "-q").returncode == 0

    def start(self, timeout_s: float = 60) -> None:
        """Start the server and wait until it answers.

        Right after a crash (the postmaster killed) its pid, a zombie until someone reaps it,
        and its last backends can still hold the data folder, and a new postmaster then exits
        at once ("lock file already exists", "shared memory block is still in use"): so
        `pg_ctl start` is tried again every RETRY_S until the server answers. A try while one
        is already starting is harmless: that postmaster exits on the other's lock file.
        """
        # pg_ctl hands -o to a shell: every value quoted
        options = ["-h", "127.0.0.1", "-p", str(self.port), "-k", str(self.folder)]
        options += ["-c", "unix_socket_permissions=0600"]
        options += [] if self.durable else ["-c", "fsync=off"]
        options = shlex.join(options)
        data, log = str(self.data), str(self.log)
        deadline = time.monotonic() + timeout_s
        while True:
            started = self._run("pg_ctl", "start", "-D", data, "-l", log, "-o", options, "-W")
            if started.returncode != 0:
                raise ServiceError(f"PostgreSQL: pg_ctl start failed ({log_tail(self.log, 3)})")
            try:
                wait_until(self.ready, "PostgreSQL", min(RETRY_S, deadline - time.monotonic()))
                return
            except ServiceError:
                if time.monotonic() >= deadline:
                    raise ServiceError(
                        f"PostgreSQL on 127.0.0.1:{self.port} did not answer within {timeout_s:g} s"
                    ) from None

    def create_database(self, name: str) -> None:
        listed = self._client("psql", "-d", "postgres", "-Atc", "SELECT datname FROM pg_database")
        if name not in listed.stdout.split():
            made = self._client("createdb", name)
            if made.returncode != 0:
                raise ServiceError(f"PostgreSQL: createdb {name} failed ({made.stderr.strip()})")

    def setting(self, name: str) -> str:
        """A server setting as PostgreSQL reports it (SHOW name)."""
        return self._client("psql", "-d", "postgres", "-Atc", f"SHOW {name}").stdout.strip()

    def postmaster(self) -> int | None:
        """The server's pid, from its postmaster.pid, when that process is a postgres one."""
        with suppress(OSError, ValueError, IndexError):
            pid = int((self.data / "postmaster.pid").read_text().split()[0])
            if any("postgres" in part for part in command_line(pid)):
                return pid
        return None

    def stop(self) -> None:
        if self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "fast", "-w").returncode != 0:
            pid = self.postmaster()  # pg_ctl could not stop it: kill it ourselves
            if pid is not None:
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
