"""Shared fixtures and helpers: a mirror of tiny synthetic MNIST files
(tooling/synthetic_mnist.py); throwaway git + DVC copies of the project, built once per test
run and shared by the xdist workers; command runners; the test tiers; and the CI rule on skips.

Tiers (docs/testing.md): `make test` runs what is left after deselecting the markers below,
`make test-all` everything. A test is marked by the heavy fixtures it uses (HEAVY_FIXTURES),
so nobody has to remember to mark it.
"""

import json
import os
import platform
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from filelock import FileLock

from mnist_dense.tracking.provenance import file_sha256 as sha256
from tests.servers import chromium, mlflow_server, model_server, postgres  # noqa: F401 (fixtures)
from tooling.processes import clean_environment, sh
from tooling.project_copy import copy_project
from tooling.synthetic_mnist import FILES, write_mnist

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's bin: dvc, mlflow
DVC = str(BIN / "dvc")
SHARED_MIRROR = ROOT.parent / "shared" / "data" / "mnist"  # the real MNIST, beside the checkout
IN_CI = os.environ.get("CI", "") not in ("", "0", "false")
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@t",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@t",
}
TINY_PARAMS = {
    "preprocess": {
        "val_fraction": 0.2,
        "split": "stratified",
        "seed": 0,
        "deskew": False,
        "stroke_width": 0.0,
        "crossed_sevens": 0.0,
    },
    "train": {
        "hidden_units": [32],
        "activation": "relu",
        "dropout": 0.1,
        "optimizer": "adam",
        "fused_adam": True,
        "learning_rate": 0.01,
        "weight_decay": 0.0,
        "ema": 0.0,
        "lr_schedule": "constant",
        "warmup_epochs": 0,
        "loss": "sparse_categorical_crossentropy",
        "label_smoothing": 0.0,
        "batch_norm": False,
        "batch_size": 32,
        "epochs": 3,
        "seed": 0,
        "threads": 1,
        "precision": "float32",
        "kernels": "portable",
    },
    "augment": {
        "rotation": 0.0,
        "scale": 0.0,
        "shift": 0.0,
        "elastic_alpha": 0.0,
        "elastic_sigma": 4.0,
        "shear": 0.0,
        "stroke": 0.0,
        "low_res": 0.0,
    },
    "tracking": {"enabled": False},
}

# Tiers: a test using one of these fixtures (directly or through another) gets its marker.
HEAVY_FIXTURES = {
    "built_project": "slow",  # git + `dvc repro` of a project copy, stages as processes
    "run_stage": "slow",  # a stage as its own process (TensorFlow and MLflow start up)
    "start_stage": "slow",  # the same, left running for the test to signal
    "run_command": "slow",  # a command as its own process
    "postgres": "services",  # a real PostgreSQL cluster
    "mlflow_server": "services",  # a real `mlflow server`
    "model_server": "services",  # the project's model server (commands/serve.py)
    "started_stack": "services",  # make team-up: PostgreSQL + SeaweedFS + mlflow server
    "stack": "services",  # the same, up for the test
    "chromium": "browser",  # headless Chromium through chromedriver
    "real_mnist": "real_data",  # the real MNIST files in ../shared
    "qemu": "emulated",  # programs run under QEMU's emulated CPUs (qemu-user)
    "qemu_aarch64": "arm64",  # the project on 64-bit ARM, emulated (qemu-user, Debian's arm64)
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for fixture in getattr(item, "fixturenames", ()):
            if fixture in HEAVY_FIXTURES:
                item.add_marker(HEAVY_FIXTURES[fixture])


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In CI a skip is a failure: a green run must mean that every test ran."""
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where every test must run: {reason}"


# Data ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_mirror(tmp_path_factory, worker_id) -> tuple[Path, dict[str, str]]:
    """A folder holding tiny MNIST files, and their checksums."""
    folder = once_per_run(tmp_path_factory, worker_id, "mirror", write_mnist)
    return folder, {name: sha256(folder / name) for names in FILES.values() for name in names}


@pytest.fixture(scope="session")
def real_mnist() -> Path:
    """The real MNIST files beside the checkout (skipped, so failed in CI, without them)."""
    if not SHARED_MIRROR.is_dir():
        pytest.skip(f"no MNIST mirror at {SHARED_MIRROR}")
    return SHARED_MIRROR


@pytest.fixture(scope="session")
def qemu() -> str:
    """QEMU's user-mode x86-64 emulator, Debian's qemu-user (skipped, so failed in CI, without)."""
    path = shutil.which("qemu-x86_64")
    if path is None or platform.machine() != "x86_64":
        pytest.skip("needs qemu-x86_64 (Debian's qemu-user) on an x86-64 machine")
    return path


@pytest.fixture(scope="session")
def qemu_aarch64() -> str:
    """QEMU's user-mode aarch64 emulator, with Debian's arm64 packages enabled (skipped, so
    failed in CI, without)."""
    path = shutil.which("qemu-aarch64")
    foreign = subprocess.run(
        ["dpkg", "--print-foreign-architectures"], capture_output=True, text=True
    ).stdout.split()
    if path is None or "arm64" not in foreign:
        pytest.skip("needs qemu-aarch64 (qemu-user) and `dpkg --add-architecture arm64`")
    return path


def tiny_params(**overrides: dict) -> dict:
    """TINY_PARAMS with some keys changed, e.g. tiny_params(train={"epochs": 1})."""
    params = {section: dict(values) for section, values in TINY_PARAMS.items()}
    for section, values in overrides.items():
        params[section].update(values)
    return params


def write_params(folder: Path, **overrides: dict) -> dict:
    params = tiny_params(**overrides)
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return params


@pytest.fixture
def workdir(tmp_path, monkeypatch, tiny_mirror) -> Path:
    """A working folder set up like the project root: tiny raw data and tiny params.

    Stages read and write relative to the working folder, as under DVC.
    """
    mirror, _ = tiny_mirror
    shutil.copytree(mirror, tmp_path / "data" / "raw")
    write_params(tmp_path)
    monkeypatch.chdir(tmp_path)
    for variable in os.environ:
        if variable.startswith(("MLFLOW_", "DVC_")):
            monkeypatch.delenv(variable)
    return tmp_path


@pytest.fixture
def trained(workdir):
    """A training logged to the working folder's own SQLite store; its run id and a client."""
    from mlflow.tracking import MlflowClient

    from mnist_dense.config import RUN_INFO, load_params
    from stages import preprocess, train

    write_params(workdir, tracking={"enabled": True})
    preprocess.preprocess(load_params().preprocess)
    train.main()
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    with tracking_store(uri):
        yield json.loads(RUN_INFO.read_text())["mlflow_run_id"], MlflowClient(uri)


# Running commands ----------------------------------------------------------------------------


def output(result: subprocess.CompletedProcess) -> str:
    """What a command printed, stdout then stderr (DVC writes some of its lines to each)."""
    return result.stdout + result.stderr


def python_module(
    module: str, *args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 240
) -> subprocess.CompletedProcess:
    """`python -m module args...` as its own process (the project is installed: editable)."""
    env = os.environ if env is None else env
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def run_stage() -> Callable[..., subprocess.CompletedProcess]:
    """`run_stage("train", env_extra={...})`: the stage as DVC runs it, in the working folder."""

    def run(name: str, env_extra: dict | None = None, timeout: float = 240):
        return python_module(f"stages.{name}", env=os.environ | (env_extra or {}), timeout=timeout)

    return run


@pytest.fixture
def start_stage() -> Iterator[Callable[..., subprocess.Popen]]:
    """`start_stage("train")`: the stage started as its own process in the working folder, its
    stdout and stderr piped (unbuffered); killed at the end of the test if still running."""
    started: list[subprocess.Popen] = []

    def start(name: str, env_extra: dict | None = None) -> subprocess.Popen:
        env = os.environ | {"PYTHONUNBUFFERED": "1"} | (env_extra or {})
        process = subprocess.Popen(
            [sys.executable, "-m", f"stages.{name}"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.communicate()


@pytest.fixture
def run_command() -> Callable[..., subprocess.CompletedProcess]:
    """`run_command("commands.predict", *args, cwd=..., env=...)`: a command as its own process."""
    return python_module


@dataclass
class Finished:
    """What an in-process run of a command's main left: exit code and output."""

    code: int
    out: str
    err: str

    def errors(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.startswith("error:")]


@pytest.fixture
def call_main(capsys, monkeypatch) -> Callable[..., Finished]:
    """`call_main(module.main, *argv)`: the command as mnist_dense.runtime.cli.run runs it, in this
    process (no start-up cost): its exit code and output. Signal handlers are put back."""
    from mnist_dense.runtime.cli import run

    def call(main: Callable[[], None], *argv: str) -> Finished:
        handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        monkeypatch.setattr(sys, "argv", ["command", *argv])
        capsys.readouterr()
        try:
            run(main)
            code = 0
        except SystemExit as exit_info:
            code = exit_info.code if isinstance(exit_info.code, int) else 1
            if isinstance(exit_info.code, str):
                print(exit_info.code, file=sys.stderr)
        finally:
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
        captured = capsys.readouterr()
        return Finished(code, captured.out, captured.err)

    return call


@contextmanager
def tracking_store(uri: str) -> Iterator[None]:
    """MLflow's global store set to `uri` for the block (models:/ and runs:/ URIs resolve
    through it), and set back after."""
    import mlflow

    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)


def client_of(project: Path):
    """An MLflow client on a project's own SQLite store."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{project / 'mlflow.db'}")


def versions(client) -> dict[str, object]:
    """The registered model's versions, by number."""
    from mnist_dense.tracking.registry import MODEL_NAME

    return {str(v.version): v for v in client.search_model_versions(f"name='{MODEL_NAME}'")}


def champion_version(client) -> str:
    from mnist_dense.tracking.registry import ALIAS, MODEL_NAME

    return str(client.get_model_version_by_alias(MODEL_NAME, ALIAS).version)


# Built once per test run -------------------------------------------------------------------


def once_per_run(
    tmp_path_factory: pytest.TempPathFactory,
    worker_id: str,
    name: str,
    build: Callable[[Path], object],
) -> Path:
    """The folder `name`, made by `build` once per test run and shared by all pytest-xdist
    workers (xdist's documented FileLock pattern): the first worker to need it builds it, any
    other waits for it. Session fixtures would build it once per worker, on both cores at
    once. Tests only read it or copy it."""
    root = tmp_path_factory.getbasetemp()
    if worker_id != "master":
        root = root.parent  # the run's folder, above each worker's own
    folder, built = root / name, root / f"{name}.built"
    with FileLock(root / f"{name}.lock"):
        if not built.exists():
            shutil.rmtree(folder, ignore_errors=True)  # what a failed build left
            build(folder)
            built.touch()
    return folder


# Projects ----------------------------------------------------------------------------------


def make_project(folder: Path, mirror: Path, checksums: dict[str, str]) -> dict[str, str]:
    """A git + DVC copy of this project in `folder` whose download stage reads the tiny mirror,
    with tiny params (tracking on, MLflow experiment "e2e"); returns the environment to run it
    in. Nothing is run yet."""
    copy_project(ROOT, folder, skip=("metrics/", "dvc.lock"))
    (folder / "stages" / "mnist.sha256").write_text(
        "".join(f"{digest}  {name}\n" for name, digest in checksums.items())
    )
    write_params(folder, tracking={"enabled": True})
    env = project_environment(mirror)
    sh("git", "init", "-q", "-b", "main", cwd=folder, env=env)
    sh("git", "add", "-A", cwd=folder, env=env)
    sh("git", "commit", "-q", "-m", "copy", cwd=folder, env=env)
    return env


def project_environment(mirror: Path) -> dict[str, str]:
    return clean_environment(
        PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}",
        MNIST_MIRROR=str(mirror),
        MLFLOW_EXPERIMENT_NAME="e2e",
        **GIT_IDENTITY,
    )


def copy_of(source: Path, dest: Path) -> Path:
    """A copy of a built project that works on its own: files, git, DVC cache, and an MLflow
    store whose artifact locations point at the copy's own mlartifacts."""
    shutil.copytree(source, dest, symlinks=True)
    database = dest / "mlflow.db"
    if database.is_file():
        with closing(sqlite3.connect(database)) as connection:
            tables = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            for (table,) in tables.fetchall():
                for _, column, kind, *_ in connection.execute(f"PRAGMA table_info('{table}')"):
                    if kind.upper().startswith(("VARCHAR", "TEXT", "CHAR")):
                        connection.execute(
                            f'UPDATE "{table}" SET "{column}" = replace("{column}", ?, ?) '
                            f'WHERE instr("{column}", ?) > 0',
                            (str(source), str(dest), str(source)),
                        )
            connection.commit()
    return dest


def experiments(project: Path, env: dict) -> dict[str, dict]:
    """{name: data} of every experiment `dvc exp show` lists."""
    shown = json.loads(sh(DVC, "exp", "show", "--json", cwd=project, env=env).stdout)
    return {
        exp["name"]: exp["revs"][0]["data"]
        for rev in shown
        for exp in (rev.get("experiments") or [])
    }


def exp_run(project: Path, env: dict, name: str, *overrides: str) -> str:
    """`dvc exp run --temp -n NAME -S ...`: an experiment that leaves the workspace as it was."""
    sets = [arg for override in overrides for arg in ("-S", override)]
    return output(sh(DVC, "exp", "run", "--temp", "-n", name, *sets, cwd=project, env=env))


@pytest.fixture(scope="session")
def built_project(tmp_path_factory, worker_id, tiny_mirror) -> tuple[Path, dict]:
    """make_project, committed and `dvc repro`'d, once per run: tests get copies."""

    def build(folder: Path) -> None:
        sh(DVC, "repro", cwd=folder, env=make_project(folder, *tiny_mirror))

    folder = once_per_run(tmp_path_factory, worker_id, "built-project", build)
    return folder, project_environment(tiny_mirror[0])


@pytest.fixture
def project(built_project, tmp_path) -> tuple[Path, dict]:
    """This test's own copy of the built project, and the environment to run it in."""
    folder, env = built_project
    return copy_of(folder, tmp_path / "project"), env


EXPERIMENTS = {"one-epoch": "train.epochs=1", "two-epochs": "train.epochs=2"}


@pytest.fixture(scope="session")
def built_experiments(built_project, tmp_path_factory, worker_id) -> tuple[Path, dict]:
    """The built project plus two DVC experiments (EXPERIMENTS), each an MLflow run named
    after it, made once per run."""
    source, env = built_project

    def build(folder: Path) -> None:
        copy_of(source, folder)
        for name, override in EXPERIMENTS.items():
            exp_run(folder, env, name, override)

    return once_per_run(tmp_path_factory, worker_id, "built-experiments", build), env


@pytest.fixture
def project_with_experiments(built_experiments, tmp_path) -> tuple[Path, dict]:
    """This test's own copy of the project with EXPERIMENTS."""
    folder, env = built_experiments
    return copy_of(folder, tmp_path / "project"), env


@dataclass
class ForcedRerun:
    """The built project re-run from scratch (`dvc repro --force --no-run-cache`)."""

    project: Path
    lock_before: dict[str, str]
    lock_after: dict[str, str]
    runs_before: int
    runs_after: int
    files_before: dict[str, bytes]  # every output file's bytes (folders left out)
    files_after: dict[str, bytes]


def _run_count(project: Path) -> int:
    client = client_of(project)
    experiment = client.get_experiment_by_name("e2e")
    return len(client.search_runs([experiment.experiment_id])) if experiment else 0


def _output_files(project: Path, lock: dict[str, str]) -> dict[str, bytes]:
    return {path: (project / path).read_bytes() for path in lock if (project / path).is_file()}


@pytest.fixture(scope="session")
def forced_rerun(built_project, tmp_path_factory, worker_id) -> ForcedRerun:
    """A copy of the built project forced to re-run every stage, once per run. "Before" is
    the built project, which the copy was until the re-run."""
    from mnist_dense.tracking.provenance import dvc_lock_outputs

    source, env = built_project

    def build(folder: Path) -> None:
        project = copy_of(source, folder / "project")
        (folder / "runs-before.txt").write_text(str(_run_count(project)))
        sh(DVC, "repro", "--force", "--no-run-cache", cwd=project, env=env)

    built = once_per_run(tmp_path_factory, worker_id, "forced-rerun", build)
    folder = built / "project"
    before, after = dvc_lock_outputs(source / "dvc.lock"), dvc_lock_outputs(folder / "dvc.lock")
    return ForcedRerun(
        folder, before, after, int((built / "runs-before.txt").read_text()), _run_count(folder),
        _output_files(source, before), _output_files(folder, after),
    )  # fmt: skip


@dataclass
class Sweep:
    """A queued 2x2 sweep run by two queue workers at once."""

    project: Path
    env: dict
    status: str
    runs_before: set[str]
    versions_before: set[str]


SWEEP = ("train.learning_rate=0.002,0.02", "train.batch_size=16,64", "train.epochs=1")


@pytest.fixture(scope="session")
def swept(built_project, tmp_path_factory) -> Sweep:
    """A copy of the built project after `dvc exp run --queue` of SWEEP and `dvc queue start
    -j 2`, once per session: test_pipeline.py's tests read it (only they, so that one
    pytest-xdist worker builds it)."""
    from mnist_dense.tracking.registry import MODEL_NAME
    from tooling.dvc_queue import run_queue

    source, env = built_project
    folder = copy_of(source, tmp_path_factory.mktemp("sweep") / "project")
    client = client_of(folder)
    experiment = client.get_experiment_by_name("e2e").experiment_id
    runs_before = {run.info.run_id for run in client.search_runs([experiment])}
    versions = {str(v.version) for v in client.search_model_versions(f"name='{MODEL_NAME}'")}
    sh(DVC, "exp", "run", "--queue", *(a for s in SWEEP for a in ("-S", s)), cwd=folder, env=env)
    status = run_queue(DVC, 2, cwd=folder, env=env, timeout=600)
    return Sweep(folder, env, status, runs_before, versions)
