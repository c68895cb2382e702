"""Team setup: one MLflow server on PostgreSQL for everyone's runs, and a DVC remote plus a git
remote that carry data, models and experiments from one clone to another.

Both run on the real dvc.yaml with tiny data, in the throwaway git + DVC copy of the project
that test_pipeline builds. The PostgreSQL server, the MLflow server and the remotes live in
temporary folders and are torn down even when a test fails.
"""

import glob
import hashlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path

import mlflow
import numpy as np
import psycopg
import pytest
import yaml
from mlflow.tracking import MlflowClient

from stages.model import load_model
from tests.test_pipeline import BIN, experiments, free_port, sh
from tests.test_pipeline import project as project  # the fixture: a git + DVC copy, repro'd

DVC = str(BIN / "dvc")
READY_TIMEOUT_S = 120


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


def test_postgres_binaries_missing_or_in_the_newest_complete_versioned_folder(
    monkeypatch, tmp_path
):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(glob, "glob", lambda pattern: [])
    assert postgres_bin() is None
    tools = {"9.6": ("initdb", "pg_ctl"), "15": ("initdb", "pg_ctl"), "16": ("initdb",)}
    for version, names in tools.items():
        (tmp_path / version / "bin").mkdir(parents=True)
        for name in names:
            (tmp_path / version / "bin" / name).touch()
    found = [str(tmp_path / version / "bin" / "initdb") for version in tools]
    monkeypatch.setattr(glob, "glob", lambda pattern: found)
    assert postgres_bin() == tmp_path / "15" / "bin"  # 16 lacks pg_ctl


def unprivileged_user() -> str:
    """initdb and postgres refuse to run as root: the account they run as when we are root."""
    try:
        return pwd.getpwnam("postgres").pw_name
    except KeyError:
        return "nobody"


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


def wait_until(
    ready: Callable[[], bool], what: str, log: Path, process: subprocess.Popen | None = None
) -> None:
    """Poll `ready()` until it is true; fail with the log's tail after READY_TIMEOUT_S."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not ready():
        if process is not None and process.poll() is not None:
            pytest.fail(f"{what} exited with status {process.returncode}:\n{log_tail(log)}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not ready after {READY_TIMEOUT_S} s:\n{log_tail(log)}")
        time.sleep(0.5)


def stop_group(process: subprocess.Popen) -> None:
    """SIGTERM the process group a server leads (its workers too); SIGKILL after 30 s."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:  # already gone
        process.wait()


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    """A throwaway PostgreSQL on 127.0.0.1 and a free port (socket in its own folder); its URI."""
    binaries = postgres_bin()
    if binaries is None:
        pytest.skip(
            "PostgreSQL not installed: initdb and pg_ctl are neither on PATH nor under "
            "/usr/lib/postgresql/*/bin (apt-get install postgresql; .ci/run does)"
        )
    folder = Path(tempfile.mkdtemp(prefix="mlflow-postgres-"))  # not under pytest's root-only tmp
    data, log, port = folder / "data", folder / "postgres.log", free_port()
    prefix: list[str] = []
    if os.getuid() == 0:
        user = pwd.getpwnam(unprivileged_user())
        os.chown(folder, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", user.pw_name, "--"]

    def pg(tool: str, *args: str) -> subprocess.CompletedProcess:
        command = [*prefix, str(binaries / tool), *args]
        return subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=120)

    def ready() -> bool:
        return pg("pg_isready", "-q", "-h", "127.0.0.1", "-p", str(port)).returncode == 0

    initdb = pg(
        "initdb", "-D", str(data), "-U", "mlflow", "--auth=trust", "-E", "UTF8", "--no-sync"
    )
    if initdb.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        pytest.fail(f"initdb failed:\n{initdb.stdout}\n{initdb.stderr}")
    options = f"-h 127.0.0.1 -p {port} -k {folder} -c fsync=off"
    try:
        started = pg("pg_ctl", "start", "-D", str(data), "-l", str(log), "-o", options, "-W")
        assert started.returncode == 0, f"pg_ctl start failed:\n{started.stderr}\n{log_tail(log)}"
        wait_until(ready, "PostgreSQL", log)
        created = pg("createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "mlflow", "mlflow")
        assert created.returncode == 0, f"createdb failed:\n{created.stderr}"
        yield f"postgresql://mlflow@127.0.0.1:{port}/mlflow"
    finally:
        if pg("pg_ctl", "stop", "-D", str(data), "-m", "immediate", "-w").returncode != 0:
            pid_file = data / "postmaster.pid"  # pg_ctl could not stop it: kill it ourselves
            if pid_file.exists():
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def mlflow_server(postgres: str, tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """`mlflow server` on that PostgreSQL, serving artifacts from a temporary folder.

    Yields its http URI and the artifact folder.
    """
    folder = tmp_path_factory.mktemp("mlflow-server")
    artifacts, log, port = folder / "artifacts", folder / "server.log", free_port()
    command = [str(BIN / "mlflow"), "server", "--backend-store-uri", postgres]
    command += ["--artifacts-destination", str(artifacts), "--serve-artifacts"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with open(log, "wb") as output:
        server = subprocess.Popen(
            command,
            cwd=folder,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopping it stops its workers
        )
    uri = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    try:
        wait_until(ready, "mlflow server", log, server)
        yield uri, artifacts
    finally:
        stop_group(server)


def test_pipeline_logs_to_a_team_server_on_postgresql(project, postgres, mlflow_server, tmp_path):
    """train and evaluate with MLFLOW_TRACKING_URI=http://...: everything lands on the server,
    its runs in PostgreSQL and its files in the server's artifact destination."""
    project, env = project
    uri, artifacts = mlflow_server
    env = env | {"MLFLOW_TRACKING_URI": uri}
    sh(DVC, "repro", "--force", "--no-run-cache", "-s", "train", "evaluate", cwd=project, env=env)

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("e2e")
    (run,) = client.search_runs([experiment.experiment_id])
    run_id = run.info.run_id
    assert json.loads((project / "metrics" / "run.json").read_text())["mlflow_run_id"] == run_id
    assert run.data.params["train.epochs"] == "3"
    assert run.data.params["train.hidden_units"] == "[32]"
    assert run.data.params["tracking.experiment"] == "e2e"
    for name in ("loss", "accuracy", "val_loss", "val_accuracy"):
        history = client.get_metric_history(run_id, name)
        assert [m.step for m in history] == [1, 2, 3], name
        assert all(np.isfinite(m.value) for m in history), name
    evaluate = json.loads((project / "metrics" / "evaluate.json").read_text())
    assert run.data.metrics["test_accuracy"] == pytest.approx(evaluate["test_accuracy"])
    assert run.data.metrics["test_loss"] == pytest.approx(evaluate["test_loss"])

    # the run is a row of the PostgreSQL store, with one val_accuracy row per epoch
    with psycopg.connect(postgres) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT name FROM runs WHERE run_uuid = %s", (run_id,))
        assert cursor.fetchall() == [(run.info.run_name,)]
        cursor.execute(
            "SELECT step FROM metrics WHERE run_uuid = %s AND key = 'val_accuracy' ORDER BY step",
            (run_id,),
        )
        assert cursor.fetchall() == [(1,), (2,), (3,)]

    # artifacts went up through the server into its destination folder
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")
    listed = {a.path for a in client.list_artifacts(run_id, "figures")}
    assert listed == {
        "figures/training_curves.png",
        "figures/confusion_matrix.png",
        "figures/misclassified.png",
    }
    assert {a.path for a in client.list_artifacts(run_id, "evaluation")} >= {
        "evaluation/per_class.csv"
    }
    assert list(artifacts.rglob("training_curves.png"))
    assert len(list(artifacts.rglob("MLmodel"))) == 1

    # the logged model, fetched from the server, predicts what the model file predicts
    (logged,) = client.search_logged_models([experiment.experiment_id])
    assert (logged.name, logged.source_run_id) == ("model", run_id)
    assert logged.artifact_location.startswith("mlflow-artifacts:")
    local_copy = mlflow.artifacts.download_artifacts(  # explicit URI: no global MLflow state
        artifact_uri=logged.artifact_location, dst_path=str(tmp_path), tracking_uri=uri
    )
    model = mlflow.pyfunc.load_model(local_copy)
    assert model.metadata.signature is not None
    x_test = np.load(project / "data" / "processed" / "x_test.npy", allow_pickle=False)[:4]
    expected = load_model(project / "models" / "model.keras").predict(x_test, verbose=0)
    np.testing.assert_allclose(model.predict(x_test), expected, rtol=1e-5, atol=1e-6)


def file_md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def contents(path: Path) -> dict[str, str]:
    """{relative file path: md5 of its bytes} of a file or of every file in a folder."""
    if path.is_file():
        return {".": file_md5(path)}
    return {str(f.relative_to(path)): file_md5(f) for f in sorted(path.rglob("*")) if f.is_file()}


@pytest.fixture(scope="module")
def remotes(project, tmp_path_factory) -> tuple[Path, Path]:
    """Clone A committed and pushed: git to a bare repository (`origin`), DVC-cached outputs
    to a local-folder DVC remote (the default remote, recorded in .dvc/config)."""
    project, env = project
    folder = tmp_path_factory.mktemp("remotes")
    origin, storage = folder / "origin.git", folder / "dvc-storage"
    sh("git", "init", "-q", "--bare", "-b", "main", str(origin), cwd=folder, env=env)
    sh(DVC, "remote", "add", "-d", "storage", str(storage), cwd=project, env=env)
    sh("git", "add", "-A", cwd=project, env=env)
    sh("git", "commit", "-q", "-m", "pipeline outputs; DVC remote", cwd=project, env=env)
    sh("git", "remote", "add", "origin", str(origin), cwd=project, env=env)
    sh("git", "push", "-q", "origin", "main", cwd=project, env=env)
    sh(DVC, "push", cwd=project, env=env)
    return origin, storage


@pytest.fixture(scope="module")
def clone(project, remotes, tmp_path_factory) -> Path:
    """Clone B: a fresh `git clone` of origin, with its own DVC cache, after `dvc pull`."""
    _, env = project
    origin, _ = remotes
    clone = tmp_path_factory.mktemp("clone-b") / "project"
    sh("git", "clone", "-q", str(origin), str(clone), cwd=clone.parent, env=env)
    assert not (clone / "models" / "model.keras").exists()
    sh(DVC, "pull", cwd=clone, env=env)
    return clone


def test_a_fresh_clone_pulls_every_output_bit_for_bit(project, remotes, clone):
    project, env = project
    _, storage = remotes
    assert list((storage / "files" / "md5").rglob("*")), "dvc push left the remote empty"
    lock = yaml.safe_load((clone / "dvc.lock").read_text())
    assert (clone / "dvc.lock").read_bytes() == (project / "dvc.lock").read_bytes()
    outs = [out for stage in lock["stages"].values() for out in stage.get("outs", [])]
    paths = {out["path"] for out in outs}
    assert paths >= {"data/raw", "data/processed", "models/model.keras", "metrics/evaluate.json"}
    assert list((clone / ".dvc" / "cache" / "files" / "md5").rglob("*")), "clone B's own cache"
    for out in outs:
        pulled, original = contents(clone / out["path"]), contents(project / out["path"])
        assert pulled and pulled == original, out["path"]
        if "nfiles" not in out:  # a file: DVC's md5 is that of its bytes
            assert pulled["."] == out["md5"], out["path"]
    assert "up to date" in sh(DVC, "status", cwd=clone, env=env)
    assert "Data and pipelines are up to date." in sh(DVC, "repro", cwd=clone, env=env)


def test_an_experiment_travels_through_the_git_and_dvc_remotes(project, clone):
    project, env = project
    baseline_model = file_md5(clone / "models" / "model.keras")
    sh(DVC, "exp", "run", "-n", "shared-exp", "-S", "train.epochs=1", cwd=project, env=env)
    evaluate = (project / "metrics" / "evaluate.json").read_bytes()
    model = file_md5(project / "models" / "model.keras")
    assert model != baseline_model
    sh(DVC, "exp", "push", "origin", "shared-exp", cwd=project, env=env)

    assert "shared-exp" not in experiments(clone, env)
    sh(DVC, "exp", "pull", "origin", "shared-exp", cwd=clone, env=env)
    shown = experiments(clone, env)["shared-exp"]
    assert shown["params"]["params.yaml"]["data"]["train"]["epochs"] == 1
    assert shown["metrics"]["metrics/evaluate.json"]["data"] == json.loads(evaluate)
    sh(DVC, "exp", "apply", "shared-exp", cwd=clone, env=env)
    assert (clone / "metrics" / "evaluate.json").read_bytes() == evaluate
    assert file_md5(clone / "models" / "model.keras") == model  # from the DVC remote
