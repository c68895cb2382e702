"""Running other programs: commands with their output captured, servers on 127.0.0.1 started,
waited for and stopped, and the environment a child project runs in."""

import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

from mnist_dense.errors import PipelineError


class CommandError(PipelineError):
    """A command that failed: one line naming it, where it ran and how its output ended."""


class ServiceError(Exception):
    """A server that cannot be started or does not answer; the message names it."""


def sh(
    *args: str, cwd: Path | None = None, env: dict | None = None, check: bool = True
) -> subprocess.CompletedProcess:
    """Run a command, its stdout and stderr captured (as text); CommandError if it fails and
    `check`."""
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        tail = (result.stdout + result.stderr).strip().splitlines()[-3:]
        raise CommandError(f"`{' '.join(map(str, args))}` failed in {cwd}: {' / '.join(tail)}")
    return result


def tool(name: str) -> str:
    """A command of this venv (dvc, mlflow) when it has one, else whatever PATH finds."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() else name


def clean_environment(**extra: str) -> dict[str, str]:
    """os.environ without DVC's and MLflow's variables: a child process that is a project of its
    own (a scratch copy, a worktree) must not log into, or resolve paths against, this one."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "MLFLOW_"))}
    return env | extra


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
    """A port of 127.0.0.1 no one listens on now."""
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
    """SIGTERM the process group `pid` leads (its workers too); SIGKILL after `timeout_s`,
    then wait (a few seconds at most) until it is gone, so that its ports are free when this
    returns: a restart right after must find them so."""
    with suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not group_running(pid):
                return
            time.sleep(0.2)
        os.killpg(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while group_running(pid) and time.monotonic() < deadline:
            time.sleep(0.1)


def wait_ports_free(ports: list[int], timeout_s: float = 10) -> None:
    """Wait (up to `timeout_s`) until a stopped server's ports can be listened on again.
    stop_group can return while they are still held: SeaweedFS's S3 port was still in use
    when its group had counted as gone, 5 s after SIGTERM, on a loaded machine. Whoever
    starts a server next still checks, and names a port that stays taken."""
    deadline = time.monotonic() + timeout_s
    while not all(port_free(port) for port in ports) and time.monotonic() < deadline:
        time.sleep(0.1)


PROC = Path("/proc")  # Linux's; macOS has none


def group_running(pgid: int) -> bool:
    """Whether a member of process group `pgid` still runs: on Linux, exited members not yet
    reaped (zombies, whose parent is gone) do not count; without /proc (macOS), whether the
    group can still be signalled."""
    if not PROC.is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    for stat in PROC.glob("[0-9]*/stat"):
        with suppress(OSError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":  # state, then ppid, then pgrp
                return True
    return False


def start_time(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot, /proc/<pid>/stat): with the pid,
    what tells it from a later process that reused the number."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22; the name before ")" may hold spaces


def command_line(pid: int) -> list[str]:
    try:
        return (PROC / str(pid) / "cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def spawn(command: list[str], log: Path, pid_file: Path, cwd: Path, env: dict) -> subprocess.Popen:
    """Start a server in a session of its own (stopping the group stops its workers), its
    output appended to `log`, its pid and start time in `pid_file`."""
    with open(log, "ab") as output:
        process = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    pid_file.write_text(f"{process.pid} {start_time(process.pid)}\n")
    return process


def still_ours(pid_file: Path, program: str) -> int | None:
    """The pid in `pid_file` when it is still the process spawn() started there: the same start
    time and `program` in its command line. After a reboot the number may belong to anyone."""
    try:
        pid_text, started = pid_file.read_text().split()
        pid = int(pid_text)
    except (OSError, ValueError):
        return None
    if start_time(pid) != started or not any(program in part for part in command_line(pid)):
        return None
    return pid


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


def is_loopback(host: str) -> bool:
    """Whether `host` names this machine only: localhost, or an address in 127.0.0.0/8 or ::1."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False
