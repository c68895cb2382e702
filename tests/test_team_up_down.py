"""Starting and stopping the team stack (`make team-up`, `make team-down`), each test on a
stack folder of its own (tests/team_stack.py, fresh_home) or a PostgreSQL cluster of its own:
a port in use or a missing binary, a server that never answers, Ctrl-C, a pid another process
took, a gRPC socket path another user took, an older stack's servers; PostgreSQL's binaries and
cluster folders, a cluster killed mid-query, a failed initdb."""

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import suppress
from pathlib import Path

import pytest

from tests.team_stack import (
    fixture_fresh_home,  # noqa: F401 (a fixture)
    grpc_answer,
    team,
)
from tooling import postgres
from tooling.postgres import Postgres
from tooling.processes import ServiceError, free_port, start_time


def test_postgres_binaries_missing_or_in_the_newest_complete_versioned_folder(
    monkeypatch, tmp_path
):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(glob, "glob", lambda pattern: [])
    assert postgres.postgres_bin() is None
    tools = {"9.6": ("initdb", "pg_ctl"), "15": ("initdb", "pg_ctl"), "16": ("initdb",)}
    for version, names in tools.items():
        (tmp_path / version / "bin").mkdir(parents=True)
        for name in names:
            (tmp_path / version / "bin" / name).touch()
    found = [str(tmp_path / version / "bin" / "initdb") for version in tools]
    monkeypatch.setattr(glob, "glob", lambda pattern: found)
    assert postgres.postgres_bin() == tmp_path / "15" / "bin"  # 16 lacks pg_ctl


@pytest.mark.parametrize("name", ["db $(touch ran)", "db `touch ran`", 'db"', "db\\"])
def test_a_cluster_folder_that_pg_ctls_shell_would_expand_is_refused(tmp_path, name):
    with pytest.raises(ServiceError, match=r"may not contain .*pg_ctl hands it to a shell"):
        Postgres(tmp_path / name, 5432, "password")
    assert list(tmp_path.iterdir()) == []  # refused before anything was made or run


@pytest.mark.services  # starts a real PostgreSQL cluster
def test_a_cluster_folder_with_a_space_is_quoted_through_pg_ctl(tmp_path):
    if postgres.postgres_bin() is None:
        pytest.skip("PostgreSQL not installed (apt-get install postgresql; .ci/run does)")
    top = Path(tempfile.mkdtemp(prefix="test-postgres-"))  # PostgreSQL's user can enter it
    cluster = Postgres(top / "team data", free_port(), "pw-" + os.urandom(8).hex(), durable=False)
    try:
        cluster.init()
        cluster.start()
        assert cluster.setting("unix_socket_directories") == str(top / "team data")
        assert cluster.setting("port") == str(cluster.port)
    finally:
        cluster.stop()
        shutil.rmtree(top, ignore_errors=True)


@pytest.mark.services  # starts a real PostgreSQL cluster
def test_a_cluster_killed_mid_query_starts_again_at_once():
    """Right after a crash the old postmaster's pid and backends linger a moment, and a new
    postmaster exits at once ("lock file already exists"); start tries again until the server
    answers, as the team stack's crash recovery (`team up`) needs."""
    if postgres.postgres_bin() is None:
        pytest.skip("PostgreSQL not installed (apt-get install postgresql; .ci/run does)")
    top = Path(tempfile.mkdtemp(prefix="test-postgres-"))  # PostgreSQL's user can enter it
    cluster = Postgres(top / "cluster", free_port(), "pw-" + os.urandom(8).hex(), durable=False)
    sleeping = "import psycopg, sys; psycopg.connect(sys.argv[1]).execute('SELECT pg_sleep(60)')"
    query = None
    try:
        cluster.init()
        cluster.start()
        query = subprocess.Popen(
            [sys.executable, "-c", sleeping, cluster.uri("postgres")], stderr=subprocess.DEVNULL
        )
        time.sleep(1.5)  # the query is running
        os.kill(cluster.postmaster(), signal.SIGKILL)
        cluster.start(60)
        assert cluster.ready()
    finally:
        if query is not None:
            query.kill()
            query.wait()
        cluster.stop()
        shutil.rmtree(top, ignore_errors=True)


@pytest.mark.services  # runs Debian's initdb
def test_an_initdb_that_fails_leaves_no_password_file_behind():
    if postgres.postgres_bin() is None:
        pytest.skip("PostgreSQL not installed (apt-get install postgresql; .ci/run does)")
    top = Path(tempfile.mkdtemp(prefix="test-postgres-"))  # PostgreSQL's user can enter it
    cluster = Postgres(top / "cluster", free_port(), "pw-" + os.urandom(8).hex(), durable=False)
    try:
        cluster.data.mkdir(parents=True)
        (cluster.data / "taken").write_text("initdb refuses a folder that is not empty\n")
        with pytest.raises(ServiceError, match="initdb failed"):
            cluster.init()
        assert sorted(path.name for path in cluster.folder.iterdir()) == ["data"]
    finally:
        shutil.rmtree(top, ignore_errors=True)


def test_a_port_in_use_or_a_missing_binary_is_one_line_and_leaves_nothing_running(fresh_home):
    folder, env, home = fresh_home
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    assert team("env", env=env, cwd=folder).returncode == 0  # the settings, made on first use
    stack = json.loads((home / "stack.json").read_text())
    stack["ports"]["postgres"] = port
    (home / "stack.json").write_text(json.dumps(stack))
    try:
        result = team("up", env=env, cwd=folder)
    finally:
        blocker.close()
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: PostgreSQL: port {port} on 127.0.0.1 is in use by another program; none "
        f"started (logs: {home / 's3.log'}, {home / 'mlflow.log'})"
    ]
    assert not list(home.glob("*.pid"))
    missing = team("up", env=env | {"MNIST_TEAM_TOOLS": str(home / "nowhere")}, cwd=folder)
    assert missing.returncode == 1
    assert missing.stderr.strip().startswith(
        f"error: SeaweedFS: {home / 'nowhere' / 'bin' / 'weed'} is missing"
    )


def silent_weed(folder: Path) -> Path:
    """A stand-in for SeaweedFS's binary that starts and never answers (its tools folder)."""
    binary = folder / "bin" / "weed"
    binary.parent.mkdir(parents=True)
    binary.write_text('#!/bin/bash\nexec -a "$0" sleep 600\n')  # its command line: .../weed
    binary.chmod(0o755)
    return folder


def stack_processes(*folders: Path) -> list[str]:
    """Command lines of the processes running out of these folders (or of the cluster's)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with suppress(OSError):
            line = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if any(str(folder) in line for folder in folders):
                found.append(line)
    return found


def test_a_server_that_never_answers_is_stopped_with_everything_before_it(fresh_home, tmp_path):
    folder, env, home = fresh_home
    tools = silent_weed(tmp_path / "tools")
    env |= {"MNIST_TEAM_TOOLS": str(tools), "MNIST_TEAM_START_TIMEOUT_S": "8"}
    result = team("up", env=env, cwd=folder)
    assert result.returncode == 1
    s3 = f"http://127.0.0.1:{json.loads((home / 'stack.json').read_text())['ports']['s3']}"
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(
        f"error: SeaweedFS S3 on {s3} did not answer within 8 s; stopped what it started: "
        "postgres, s3"
    ), line
    assert stack_processes(home, tools) == []  # the silent server and PostgreSQL alike


def test_ctrl_c_during_team_up_stops_what_it_started(fresh_home, tmp_path):
    folder, env, home = fresh_home
    tools = silent_weed(tmp_path / "tools")
    env |= {"MNIST_TEAM_TOOLS": str(tools)}
    process = subprocess.Popen(
        [sys.executable, "-m", "commands.team", "up"],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (home / "s3.pid").exists():  # PostgreSQL up, SeaweedFS starting
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)  # what Ctrl-C in the terminal sends
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130
    assert (
        stderr.strip()
        .splitlines()[-1]
        .startswith("error: interrupted; stopped what it started: postgres, s3")
    )
    assert stack_processes(home, tools) == []


def test_team_down_leaves_alone_a_process_that_took_a_servers_pid(fresh_home):
    folder, env, home = fresh_home
    assert team("env", env=env, cwd=folder).returncode == 0
    stranger = subprocess.Popen(["sleep", "600"], start_new_session=True)
    try:
        for recorded in ("1", start_time(stranger.pid)):  # a reboot since; or not weed at all
            (home / "s3.pid").write_text(f"{stranger.pid} {recorded}\n")
            result = team("down", env=env, cwd=folder)
            assert result.returncode == 0, result.stderr
            assert "s3: not running (its pid file names no weed started here; left alone)" in (
                result.stdout
            )
            assert stranger.poll() is None  # still alive
    finally:
        stranger.kill()
        stranger.wait()


def test_another_users_file_at_a_grpc_socket_path_does_not_block_team_up(fresh_home):
    """SeaweedFS puts its gRPC sockets at /tmp/seaweedfs-<name>-grpc-<port>.sock, a name anyone
    can take first; a non-empty folder there is one even root's weed cannot remove. team up
    moves that server's gRPC port (and so its socket's name) and leaves the stranger's alone."""
    folder, env, home = fresh_home
    assert team("env", env=env, cwd=folder).returncode == 0  # the settings, made on first use
    taken = json.loads((home / "stack.json").read_text())["ports"]["master_grpc"]
    blocker = Path(f"/tmp/seaweedfs-master-grpc-{taken}.sock")
    blocker.mkdir()
    (blocker / "mine").write_text("another user's\n")
    if os.getuid() == 0:  # as root, make it truly another user's
        for path in (blocker, blocker / "mine"):
            os.chown(path, 65534, 65534)
    try:
        started = team("up", env=env | {"MNIST_TEAM_START_TIMEOUT_S": "90"}, cwd=folder)
        assert started.returncode == 0, started.stderr
        moved = json.loads((home / "stack.json").read_text())["ports"]["master_grpc"]
        assert moved != taken
        assert (blocker / "mine").read_text() == "another user's\n"  # left as it was
    finally:
        shutil.rmtree(blocker)


def test_team_up_restarts_servers_of_an_older_stack_with_the_doors_closed(fresh_home):
    """A stack started before the release guard and the gRPC's mutual TLS keeps running
    servers without them; the next team-up restarts those (not `already running`)."""
    folder, env, home = fresh_home
    assert team("up", env=env, cwd=folder).returncode == 0
    ports = json.loads((home / "stack.json").read_text())["ports"]
    (home / "security.toml").write_text("")  # as if written by an older team-up
    config = home / "mlflow-auth.ini"
    config.write_text(config.read_text().replace("tooling.release_guard:authenticate", "x:y"))
    again = team("up", env=env, cwd=folder)
    assert again.returncode == 0, again.stderr
    lines = again.stdout.splitlines()
    assert lines[0].endswith("(already running)")  # PostgreSQL had nothing to change
    assert not lines[1].endswith("(already running)") and not lines[2].endswith("running)")
    assert grpc_answer(ports["master_grpc"]) == b""  # the new weed closes plain gRPC
    assert "tooling.release_guard:authenticate" in config.read_text()
