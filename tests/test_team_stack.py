"""The team stack, real, on one machine: PostgreSQL + SeaweedFS (S3) + `mlflow server` from
`make team-up`, one for the module (tests/team_stack.py), as a team has: its servers, accounts
and doors (one line per server, secrets on no command line and in no file anyone else can
read, an account per person, only the release role moving the champion, mutual TLS on
SeaweedFS's gRPC), the pipeline logging to it, the DVC remote on its S3, two tuner workers
sharing a study in its PostgreSQL, and faults against it (the object store stopped mid-push,
the database killed mid-training, a down-up cycle). team up and down on stacks of a test's own:
tests/test_team_up_down.py.
"""

import base64
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import suppress
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import psycopg
import pytest
import yaml
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from PIL import Image

from mnist_dense.errors import PipelineError
from mnist_dense.tracking.provenance import file_md5
from mnist_dense.tracking.registry import ALIAS, MODEL_NAME
from tests.conftest import (
    DVC,
    experiments,
    output,
    python_module,
    sh,
    tracking_store,
    write_params,
)
from tests.servers import gaps, train_with_outage
from tests.team_stack import (
    MEMBER,
    RELEASE,
    TOOLS,
    as_user,
    fixture_logged_run,  # noqa: F401 (a fixture)
    fixture_stack,  # noqa: F401 (a fixture)
    fixture_started_stack,  # noqa: F401 (a fixture)
    grpc_answer,
    objects,
    passwords,
    s3_client,
    team,
    up,
)
from tooling import seaweedfs, team_people
from tooling.postgres import Postgres
from tooling.processes import command_line
from tooling.synthetic_mnist import write_mnist

# what other tests, on the other worker, make in /tmp through tempfile meanwhile: its default
# names and prefixed ones (verify-repro-, presets-, test-postgres-, team-, ...), and
# TensorFlow's autograph files, and uv's build locks (the lock and Python tests run uv); and
# the stacks tests/test_team_up_down.py starts: SeaweedFS's gRPC sockets, which are in /tmp
# whatever TMPDIR says (tooling/seaweedfs.py), and, as root, a stack's PostgreSQL cluster
# beside its folder. The cycle's own processes make theirs in a TMPDIR of
# their own, and its own stack's sockets are told apart by their ports.
OTHER_TESTS_TEMP = re.compile(
    r"(tmp|[a-z][a-z-]*-)[a-z0-9_]{8}|__autograph_generated_file[a-z0-9_]{8}\.py"
    r"|uv-[a-z0-9_-]+-[0-9a-f]{16}\.lock"
    r"|team-[a-z0-9_]{8}-postgres|seaweedfs-[a-z]+-grpc-[0-9]+\.sock"
)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("ana release\nben owner\n", r"line 2: expected `<name> release\|member`, got 'ben owner'"),
        ("admin release\n", "line 1: 'admin' is not a name for a person"),
        ("../ana release\n", "line 1: '../ana' is not a name for a person"),
        ("ana release\nana member\n", "line 2: ana is listed twice"),
        ("# nobody yet\n", "lists no one"),
    ],
)
def test_a_mistake_in_the_list_of_people_is_one_line_naming_it(tmp_path, text, error):
    listed = tmp_path / "people"
    listed.write_text(text)
    with pytest.raises(PipelineError, match=error):
        team_people.parse(text, listed)


def test_team_up_prints_one_line_per_server_and_is_idempotent(stack):
    folder, env, settings, output = stack
    lines = output.splitlines()
    assert lines[0].startswith("PostgreSQL") and "postgresql://mlflow:***@127.0.0.1:" in lines[0]
    assert lines[1] == f"S3 (SeaweedFS)  http://127.0.0.1:{settings['ports']['s3']}"
    assert lines[2] == f"MLflow server   http://127.0.0.1:{settings['ports']['mlflow']}"
    assert lines[3].endswith("?workflowType=machine_learning")
    again = team("up", env=env, cwd=folder)
    assert again.returncode == 0
    assert [line.endswith("(already running)") for line in again.stdout.splitlines()[:3]] == [
        True
    ] * 3
    local = (folder / ".dvc" / "config.local").read_text()
    assert "s3://dvc/store" in local and "endpointurl" in local
    committed = sh("git", "ls-files", cwd=folder).stdout
    assert ".dvc/config.local" not in committed and ".team" not in committed
    assert settings["s3_secret_key"] not in (folder / ".dvc" / "config").read_text()


SECRETS = ("postgres_password", "s3_secret_key", "weed_jwt_key", "weed_filer_jwt_key")


SECRETS += ("mlflow_admin_password", "mlflow_secret_key")


def command_lines() -> list[str]:
    """Every process's command line, as `ps -eo args` shows it to any user."""
    lines = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with suppress(OSError):
            lines.append(cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace"))
    return lines


def test_no_secret_of_the_stack_is_on_any_command_line(stack):
    _, env, settings, _ = stack
    home = env["MNIST_TEAM_HOME"]
    lines = command_lines()
    assert any("weed" in line and home in line for line in lines)  # the stack is running
    assert any("mlflow" in line and "basic-auth" in line for line in lines)
    secrets = [settings[name] for name in SECRETS] + list(passwords(Path(home)).values())
    leaking = [line for line in lines if any(secret in line for secret in secrets)]
    assert leaking == []


def test_every_file_of_the_stack_is_its_owners_alone(stack):
    """Folders 0700 and files 0600, but for SeaweedFS's volume-info files (.vif): SeaweedFS
    4.48 chmods them to 0644 itself, whatever the umask. They hold a volume's version and
    replication, no secret, and sit in 0700 folders that no other user can enter."""
    _, env, settings, _ = stack
    home = Path(env["MNIST_TEAM_HOME"])
    client = s3_client(env)  # SeaweedFS makes its volumes on the first write, or its filer's log
    client.put_object(Bucket="mlflow", Key="probe/owner-only", Body=b"volumes now exist")
    assert home.stat().st_mode & 0o777 == 0o700
    loose, volume_info = [], []
    for path in home.rglob("*"):
        mode = path.lstat().st_mode & 0o777
        if path.is_file() and path.suffix == ".vif" and path.parent == home / "seaweedfs":
            volume_info.append(path)
            allowed = 0o644
        else:
            allowed = 0o700 if path.is_dir() or path.is_socket() else 0o600
        if mode & ~allowed:
            loose.append(f"{path}: {mode:o}")
    assert loose == []
    assert list((home / "seaweedfs").glob("*.dat")) and volume_info  # the volumes were checked
    for path in volume_info:
        assert not any(settings[name] in path.read_text() for name in SECRETS), path
    assert {"stack.json", "s3.json", "mlflow-auth.ini"} <= {p.name for p in home.iterdir()}
    client.delete_object(Bucket="mlflow", Key="probe/owner-only")


def test_the_tracking_server_refuses_whoever_does_not_say_who_they_are(stack):
    _, env, _, _ = stack
    url = f"{env['MLFLOW_TRACKING_URI']}/api/2.0/mlflow/experiments/search?max_results=1"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url, timeout=10)
    assert refused.value.code == 401
    for person, password in passwords(Path(env["MNIST_TEAM_HOME"])).items():
        token = base64.b64encode(f"{person}:{password}".encode()).decode()
        request = urllib.request.Request(url, headers={"Authorization": f"Basic {token}"})
        with urllib.request.urlopen(request, timeout=10) as answered:
            assert answered.status == 200


def test_a_user_without_the_permission_cannot_move_the_champion(stack):
    _, env, settings, _ = stack
    uri = env["MLFLOW_TRACKING_URI"]
    client = MlflowClient(uri)
    release = passwords(Path(env["MNIST_TEAM_HOME"]))[RELEASE]
    with as_user(RELEASE, release):
        run = client.create_run(client.get_experiment_by_name("e2e").experiment_id)
        client.create_registered_model("permission-check")
        first = client.create_model_version("permission-check", "s3://x/1", run.info.run_id)
        second = client.create_model_version("permission-check", "s3://x/2", run.info.run_id)
        client.set_registered_model_alias("permission-check", "champion", first.version)
    with as_user("admin", settings["mlflow_admin_password"]):
        from mlflow.server.auth.client import AuthServiceClient

        AuthServiceClient(uri).create_user("viewer", "viewer-" + settings["mlflow_secret_key"])
    with as_user("viewer", "viewer-" + settings["mlflow_secret_key"]):
        assert client.get_registered_model("permission-check").name  # reading: allowed
        with pytest.raises(MlflowException, match="403"):
            client.set_registered_model_alias("permission-check", "champion", second.version)
    with as_user(RELEASE, release):
        champion = client.get_model_version_by_alias("permission-check", "champion")
    assert champion.version == first.version


def test_each_person_has_an_account_and_a_password_file_of_their_own(stack):
    """No shared account: team-up makes one per person of the list, each password in its own
    0600 file, and team-env speaks as the person MNIST_TEAM_USER names."""
    folder, env, settings, _ = stack
    home = Path(env["MNIST_TEAM_HOME"])
    secret = passwords(home)
    assert sorted(secret) == sorted([RELEASE, MEMBER]) and len(set(secret.values())) == 2
    for path in (home / "passwords").iterdir():
        assert path.stat().st_mode & 0o777 == 0o600
    assert (home / "passwords").stat().st_mode & 0o777 == 0o700
    exported = team("env", env=env | {"MNIST_TEAM_USER": MEMBER}, cwd=folder).stdout
    assert f"export MLFLOW_TRACKING_USERNAME='{MEMBER}'" in exported.splitlines()
    assert f"export MLFLOW_TRACKING_PASSWORD='{secret[MEMBER]}'" in exported.splitlines()
    stranger = team("env", env=env | {"MNIST_TEAM_USER": "team"}, cwd=folder)
    assert stranger.returncode == 1 and "not on the team's list" in stranger.stderr
    with as_user("admin", settings["mlflow_admin_password"]):
        from mlflow.server.auth.client import AuthServiceClient

        auth = AuthServiceClient(env["MLFLOW_TRACKING_URI"])
        with pytest.raises(MlflowException, match=r"not found|RESOURCE_DOES_NOT_EXIST"):
            auth.get_user("team")  # the shared account of before is not made
        for person, permission in ((RELEASE, "MANAGE"), (MEMBER, "EDIT")):
            granted = auth.get_user_permission(person, "registered_model", MODEL_NAME)
            assert granted.permission == permission, person


def test_a_person_taken_off_the_list_loses_their_account_at_the_next_team_up(stack):
    folder, env, _, _ = stack
    people = Path(env["MNIST_TEAM_PEOPLE"])
    listed = people.read_text()
    url = f"{env['MLFLOW_TRACKING_URI']}/api/2.0/mlflow/experiments/search?max_results=1"
    member = passwords(Path(env["MNIST_TEAM_HOME"]))[MEMBER]
    token = base64.b64encode(f"{MEMBER}:{member}".encode()).decode()
    request = urllib.request.Request(url, headers={"Authorization": f"Basic {token}"})
    try:
        people.write_text(f"{RELEASE} release\n")
        assert team("up", env=env, cwd=folder).returncode == 0
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 401
    finally:
        people.write_text(listed)
        assert team("up", env=env, cwd=folder).returncode == 0
    with urllib.request.urlopen(request, timeout=10) as answered:  # back, same password file
        assert answered.status == 200


def test_only_the_release_role_moves_the_champion_though_members_register(stack, logged_run):
    """A member logs runs and registers versions (evaluate's work) but is refused (403)
    moving `champion`, deleting it or renaming the model; the release person moves it."""
    _, env, settings, _ = stack
    secret = passwords(Path(env["MNIST_TEAM_HOME"]))
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    champion = client.get_model_version_by_alias(MODEL_NAME, ALIAS)
    candidate = None
    try:
        with as_user(MEMBER, secret[MEMBER]):
            run = client.create_run(client.get_experiment_by_name("e2e").experiment_id)
            client.log_metric(run.info.run_id, "val_accuracy", 1.0)
            candidate = client.create_model_version(MODEL_NAME, "s3://nowhere/1", run.info.run_id)
            moves = {
                "set": lambda: client.set_registered_model_alias(
                    MODEL_NAME, ALIAS, candidate.version
                ),
                "delete": lambda: client.delete_registered_model_alias(MODEL_NAME, ALIAS),
                "rename": lambda: client.rename_registered_model(MODEL_NAME, "elsewhere"),
            }
            for name, move in moves.items():
                with pytest.raises(MlflowException, match="403") as refused:
                    move()
                assert "not in the release role" in str(refused.value), name
            assert client.get_model_version_by_alias(MODEL_NAME, ALIAS).version == (
                champion.version
            )
        with as_user(RELEASE, secret[RELEASE]):
            client.set_registered_model_alias(MODEL_NAME, ALIAS, candidate.version)
            moved = client.get_model_version_by_alias(MODEL_NAME, ALIAS)
        assert moved.version == candidate.version
    finally:  # the champion as it was, the member's version gone
        with as_user("admin", settings["mlflow_admin_password"]):
            client.set_registered_model_alias(MODEL_NAME, ALIAS, champion.version)
            if candidate is not None:
                client.delete_model_version(MODEL_NAME, candidate.version)


def test_the_teams_database_writes_to_disk_fsync_on(stack):
    _, env, settings, _ = stack
    home = Path(env["MNIST_TEAM_HOME"])
    cluster = home.parent / f"{home.name}-postgres" if os.getuid() == 0 else home / "postgres"
    database = Postgres(cluster, settings["ports"]["postgres"], settings["postgres_password"])
    assert database.setting("fsync") == "on"
    assert database.setting("synchronous_commit") == "on"


def test_nothing_the_stack_starts_reports_home_or_opens_more_than_it_needs(stack):
    _, env, _, _ = stack
    home = Path(env["MNIST_TEAM_HOME"])
    mlflow_pid = int((home / "mlflow.pid").read_text().split()[0])
    environ = Path(f"/proc/{mlflow_pid}/environ").read_bytes().split(b"\0")
    assert b"MLFLOW_DISABLE_TELEMETRY=true" in environ
    weed = " ".join(command_line(int((home / "s3.pid").read_text().split()[0])))
    for flag in ("-master.telemetry=false", "-s3.port.iceberg=0", "-s3.port.lance=0"):
        assert flag in weed
    assert (home / "weed-filer.sock").is_socket() and (home / "weed-s3.sock").is_socket()


def status_of(method: str, url: str, data: bytes | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data, method=method), timeout=10):
            return 200
    except urllib.error.HTTPError as error:
        return error.code


def test_the_object_stores_own_servers_refuse_requests_without_its_keys(stack):
    """Behind the S3 gateway's keys, its filer and volume servers ask for SeaweedFS's JWTs."""
    _, _, settings, _ = stack
    ports = settings["ports"]
    filer = f"http://127.0.0.1:{ports['filer']}"
    assert status_of("PUT", f"{filer}/planted.txt", b"planted") == 401
    assert status_of("GET", f"{filer}/buckets/") == 401  # no listing, no reading
    with urllib.request.urlopen(f"http://127.0.0.1:{ports['master']}/dir/assign") as assigned:
        slot = json.load(assigned)
    assert status_of("POST", f"http://{slot['url']}/{slot['fid']}", b"planted") == 401


def test_seaweedfs_grpc_refuses_a_client_without_the_stacks_certificate(stack, tmp_path):
    """SeaweedFS's gRPC (master, volume, filer, S3) authenticates callers only by mutual TLS;
    without it any local process listed, read and deleted every object (issue 33: `weed shell`
    from a folder without security.toml listed the buckets). Now each port closes a plain
    connection, refuses TLS without the stack's certificate, and answers with it."""
    _, env, settings, _ = stack
    home, ports = Path(env["MNIST_TEAM_HOME"]), settings["ports"]
    ca, cert = home / "tls" / "ca.crt", home / "tls" / "weed.crt"
    for name in ("master", "volume", "filer", "s3"):
        port = ports[f"{name}_grpc"]
        assert grpc_answer(port) == b"", name  # plain gRPC: closed, no SETTINGS frame
        assert "CERTIFICATE_REQUIRED" in grpc_answer(port, ca), name
        answered = grpc_answer(port, ca, cert)
        assert isinstance(answered, bytes) and answered[3:4] == b"\x04", name  # SETTINGS
    weed = [str(TOOLS / "bin" / "weed"), "shell"]
    weed += [f"-master=127.0.0.1:{ports['master']}.{ports['master_grpc']}"]
    weed += [f"-filer=127.0.0.1:{ports['filer']}.{ports['filer_grpc']}"]
    outsider = {"HOME": str(tmp_path), "PATH": os.environ["PATH"]}  # no security.toml anywhere
    with pytest.raises(subprocess.TimeoutExpired) as waited:  # it retries, and lists nothing
        subprocess.run(weed, input="fs.ls /buckets\n", cwd=tmp_path, env=outsider,
                       capture_output=True, text=True, timeout=20)  # fmt: skip
    assert "mlflow" not in (waited.value.stdout or b"").decode(errors="replace")
    insider = subprocess.run(  # the stack's folder: its security.toml, with the certificate
        weed, input="fs.ls /buckets\n", cwd=home, env=outsider, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert {"dvc", "mlflow"} <= set(insider.stdout.split()), insider.stdout + insider.stderr


def test_the_pipeline_logs_to_the_stack_and_its_champion_loads_back(stack, logged_run):
    folder, env, _, _ = stack
    run_id, record = logged_run
    uri = env["MLFLOW_TRACKING_URI"]
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.data.params["train.epochs"] == "3"
    evaluate = json.loads((record / "evaluate.json").read_text())
    assert run.data.metrics["test_accuracy"] == evaluate["test_accuracy"]

    # params, per-epoch curves and test metrics are rows of the stack's PostgreSQL
    database = env["MNIST_TUNE_STORAGE"].rsplit("/", 1)[0] + "/mlflow"
    with psycopg.connect(database) as connection, connection.cursor() as cursor:
        cursor.execute(
            "SELECT value FROM params WHERE run_uuid = %s AND key = 'train.epochs'", (run_id,)
        )
        assert cursor.fetchall() == [("3",)]
        cursor.execute(
            "SELECT step FROM metrics WHERE run_uuid = %s AND key = 'val_accuracy' ORDER BY step",
            (run_id,),
        )
        assert cursor.fetchall() == [(1,), (2,), (3,)]
        cursor.execute(
            "SELECT value FROM latest_metrics WHERE run_uuid = %s AND key = 'test_accuracy'",
            (run_id,),
        )
        assert cursor.fetchall() == [(evaluate["test_accuracy"],)]

    # figures and the model are objects in the S3 bucket, put there by the server
    keys = objects(env, "mlflow")
    for figure in ("training_curves.png", "confusion_matrix.png", "misclassified.png"):
        assert any(k.endswith(f"{run_id}/artifacts/figures/{figure}") for k in keys), figure
    model_files = [k for k in keys if k.endswith("artifacts/model.keras")]
    assert model_files
    model_bytes = (record / "model.keras").read_bytes()
    s3 = s3_client(env)
    stored = [s3.get_object(Bucket="mlflow", Key=k)["Body"].read() for k in model_files]
    assert model_bytes in stored

    # the registered champion loads back through the server and predicts as the model file does
    x_test = np.load(folder / "data" / "processed" / "x_test.npy", allow_pickle=False)[:4]
    with tracking_store(uri):
        champion = client.get_model_version_by_alias(MODEL_NAME, ALIAS)
        model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@{ALIAS}")
    answers = model.predict(pd.DataFrame({"pixels": [x.tolist() for x in x_test]}))
    from mnist_dense.model.network import load_model

    expected = load_model(record / "model.keras").predict(x_test, verbose=0)
    assert champion.run_id in {r.info.run_id for r in client.search_runs([run.info.experiment_id])}
    assert answers["digit"].tolist() == expected.argmax(axis=1).tolist()


def contents(path: Path) -> dict[str, str]:
    """{relative file path: md5 of its bytes} of a file or of every file in a folder."""
    if path.is_file():
        return {".": file_md5(path)}
    return {str(f.relative_to(path)): file_md5(f) for f in sorted(path.rglob("*")) if f.is_file()}


@pytest.fixture(scope="module")
def clone(started_stack, tmp_path_factory) -> Path:
    """Clone A (the project) committed, pushed to a bare git origin and `dvc push`ed to S3;
    clone B a fresh `git clone` that ran team-up's remote set-up and `dvc pull`."""
    folder, env, _, _ = up(started_stack)
    origin = tmp_path_factory.mktemp("origin") / "origin.git"
    sh("git", "init", "-q", "--bare", "-b", "main", str(origin), cwd=folder, env=env)
    sh("git", "add", "-A", cwd=folder, env=env)
    sh("git", "commit", "-q", "-m", "pipeline outputs", cwd=folder, env=env)
    sh("git", "remote", "add", "origin", str(origin), cwd=folder, env=env)
    sh("git", "push", "-q", "origin", "main", cwd=folder, env=env)
    started = time.perf_counter()
    print(
        output(sh(DVC, "push", cwd=folder, env=env)).strip(),
        f"in {time.perf_counter() - started:.1f} s",
    )
    clone = tmp_path_factory.mktemp("clone-b") / "project"
    sh("git", "clone", "-q", str(origin), str(clone), cwd=clone.parent, env=env)
    assert team("up", env=env, cwd=clone).returncode == 0  # the stack is up: remote set-up only
    started = time.perf_counter()
    print(
        output(sh(DVC, "pull", cwd=clone, env=env)).strip(),
        f"in {time.perf_counter() - started:.1f} s",
    )
    return clone


def test_dvc_push_to_s3_and_pull_in_a_fresh_clone_is_bit_identical(stack, clone):
    folder, env, _, _ = stack
    assert any(k.startswith("store/files/md5/") for k in objects(env, "dvc"))
    lock = yaml.safe_load((clone / "dvc.lock").read_text())
    outs = [out for stage in lock["stages"].values() for out in stage.get("outs", [])]
    for out in outs:
        pulled, original = contents(clone / out["path"]), contents(folder / out["path"])
        assert pulled and pulled == original, out["path"]
    assert "Data and pipelines are up to date." in output(sh(DVC, "repro", cwd=clone, env=env))


def test_an_experiment_travels_through_git_and_the_s3_remote(stack, clone):
    folder, env, _, _ = stack
    sh(DVC, "exp", "run", "-n", "shared-exp", "-S", "train.epochs=1", cwd=folder, env=env)
    model = file_md5(folder / "models" / "model.keras")
    sh(DVC, "exp", "push", "origin", "shared-exp", cwd=folder, env=env)
    assert "shared-exp" not in experiments(clone, env)
    sh(DVC, "exp", "pull", "origin", "shared-exp", cwd=clone, env=env)
    assert (
        experiments(clone, env)["shared-exp"]["params"]["params.yaml"]["data"]["train"]["epochs"]
        == 1
    )
    sh(DVC, "exp", "apply", "shared-exp", cwd=clone, env=env)
    assert file_md5(clone / "models" / "model.keras") == model  # from the S3 remote
    sh("git", "checkout", "--", ".", cwd=folder, env=env)  # back to the committed workspace
    sh(DVC, "checkout", "--force", cwd=folder, env=env)


def test_two_tuner_workers_share_a_study_in_the_stacks_postgresql(stack):
    folder, env, _, _ = stack
    (folder / "space.yaml").write_text(
        yaml.safe_dump({"train.learning_rate": {"low": 0.003, "high": 0.03, "log": True}})
    )
    command = [sys.executable, "-m", "commands.tune", "--space", "space.yaml", "--trials", "1"]
    command += ["--study", "team-study", "-S", "train.epochs=2"]  # the storage: team-env's
    workers = [
        subprocess.Popen(
            command,
            cwd=folder,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    for worker in workers:
        output = worker.communicate(timeout=900)[0]
        assert worker.returncode == 0, output
    import optuna

    trials = optuna.load_study(study_name="team-study", storage=env["MNIST_TUNE_STORAGE"]).trials
    assert sorted(t.number for t in trials) == [0, 1]  # one each, from the one study
    names = [t.user_attrs["dvc_exp"] for t in trials]
    assert sorted(names) == ["team-study-0", "team-study-1"]
    done = {t.user_attrs["dvc_exp"] for t in trials if t.state == optuna.trial.TrialState.COMPLETE}
    assert done <= set(experiments(folder, env))  # a completed trial is a DVC experiment
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs(
        [client.get_experiment_by_name("e2e").experiment_id], "tags.`optuna.study` = 'team-study'"
    )
    assert sorted(r.info.run_name for r in runs if "optuna.trial" in r.data.tags) == sorted(names)


PUSHED_MIB = 64  # a few chunks of the object store's: the push is mid-way when it stops


def test_the_object_store_stopped_during_a_push_fails_clearly_and_a_retry_completes(stack):
    folder, env, _, _ = stack
    big = folder / "big.bin"
    big.write_bytes(os.urandom(PUSHED_MIB * 2**20))
    sh(DVC, "add", "big.bin", cwd=folder, env=env)
    home = Path(env["MNIST_TEAM_HOME"])
    store, before = home / "seaweedfs", stored_bytes(home / "seaweedfs")
    push = subprocess.Popen(
        [DVC, "push", "big.bin"],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 120
    while stored_bytes(store) <= before:  # the first chunk landed: the upload is under way
        assert push.poll() is None, "the push ended before the object store received its data"
        assert time.monotonic() < deadline, "the object store received nothing in 2 minutes"
        time.sleep(0.01)
    os.killpg(int((home / "s3.pid").read_text().split()[0]), signal.SIGKILL)  # mid-transfer
    printed = push.communicate(timeout=240)[0]
    try:
        assert push.returncode != 0, printed
        # DVC's own error line: "failed to push", or the store's 500 when its volume went first
        assert printed.startswith("ERROR") or "\nERROR" in printed, printed
    finally:
        assert team("up", env=env, cwd=folder).returncode == 0
    retried = output(sh(DVC, "push", "big.bin", cwd=folder, env=env))
    assert "1 file pushed" in retried
    status = output(sh(DVC, "status", "--cloud", "big.bin.dvc", cwd=folder, env=env))
    assert "Cache and remote 'team' are in sync" in status
    sh(DVC, "remove", "big.bin.dvc", cwd=folder, env=env)
    big.unlink()


def stored_bytes(folder: Path) -> int:
    """Bytes on disk under `folder` (blocks written, so preallocated space does not count)."""
    total = 0
    for path in folder.rglob("*"):
        with suppress(FileNotFoundError):
            total += path.lstat().st_blocks * 512 if path.is_file() else 0
    return total


class KilledDatabase:
    """The stack's PostgreSQL killed (SIGKILL, as a crash) and started again, as
    train_with_outage wants it; what the tracking server had acknowledged at the kill."""

    def __init__(self, folder: Path, env: dict, settings: dict) -> None:
        self.folder, self.env, self.settings = folder, env, settings
        self.uri, self.back_at = env["MLFLOW_TRACKING_URI"], None
        self.acknowledged: list[int] = []

    def database(self) -> Postgres:
        home = Path(self.env["MNIST_TEAM_HOME"])
        cluster = home.parent / f"{home.name}-postgres" if os.getuid() == 0 else home / "postgres"
        return Postgres(
            cluster, self.settings["ports"]["postgres"], self.settings["postgres_password"]
        )

    def stop(self) -> None:
        client = MlflowClient(self.uri)
        experiment = client.get_experiment_by_name("outage").experiment_id
        (run,) = client.search_runs([experiment], order_by=["start_time DESC"], max_results=1)
        history = client.get_metric_history(run.info.run_id, "val_accuracy")
        self.acknowledged = [metric.step for metric in history]
        os.kill(self.database().postmaster(), signal.SIGKILL)

    def start(self) -> None:
        assert team("up", env=self.env, cwd=self.folder).returncode == 0  # crash recovery
        self.back_at = time.monotonic()


def test_a_killed_database_loses_no_epoch_the_server_acknowledged(stack, tmp_path):
    """The stack's PostgreSQL killed (SIGKILL) at epoch 2 of a training logging to the stack's
    server, with its accounts, and recovered by `team up` after epoch 3: what the server had
    acknowledged is kept, the rest arrives after, and no epoch waited meanwhile. (The tracking
    server itself stopped and started again mid-training: tests/test_tracking_outage.py.)"""
    folder, env, settings, _ = stack
    write_mnist(tmp_path / "data" / "raw", train_count=10000, test_count=200)
    epochs_planned = 12
    write_params(
        tmp_path,
        train={"hidden_units": [512, 512], "epochs": epochs_planned},
        tracking={"enabled": True},
    )
    assert python_module("stages.preprocess", cwd=tmp_path, env=env).returncode == 0
    database = KilledDatabase(folder, env, settings)
    process, stderr, epochs = train_with_outage(
        tmp_path, database, restart_after=3, wait_s="120", env=env
    )
    assert process.returncode == 0, stderr
    # no epoch waited for the store (its server and database), nor for their crash recovery
    between = gaps(epochs)
    assert max(between) < 2.5 * sorted(between)[len(between) // 2] + 0.5, between
    assert database.acknowledged, "nothing had reached the store before the kill"
    run_id = json.loads((tmp_path / "metrics" / "run.json").read_text())["mlflow_run_id"]
    history = MlflowClient(env["MLFLOW_TRACKING_URI"]).get_metric_history(run_id, "val_accuracy")
    steps = [metric.step for metric in history]
    assert set(database.acknowledged) <= set(steps)  # none of what was acknowledged is lost
    assert sorted(steps) == list(range(1, epochs_planned + 1))  # and the rest arrived after


def test_data_survives_a_down_up_cycle(stack):
    folder, env, _, _ = stack
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    run = client.create_run(client.get_experiment_by_name("e2e").experiment_id, run_name="survivor")
    client.log_text(run.info.run_id, "kept", "note.txt")
    assert team("down", env=env, cwd=folder).returncode == 0
    assert team("up", env=env, cwd=folder).returncode == 0
    assert client.get_run(run.info.run_id).info.run_name == "survivor"
    assert any(k.endswith(f"{run.info.run_id}/artifacts/note.txt") for k in objects(env, "mlflow"))


def test_a_team_up_predict_team_down_cycle_leaves_tmp_as_it_was(stack, logged_run, tmp_path):
    """Down, up, predict with the champion, down: the stack ends down (`stack` brings it up
    again for a test after)."""
    folder, env, _, _ = stack
    ink = np.load(folder / "data" / "processed" / "x_test.npy", allow_pickle=False)[0]
    digit = tmp_path / "digit.png"
    Image.fromarray(np.round(255 * (1 - ink.reshape(28, 28))).astype(np.uint8)).save(digit)
    # The cycle's temporary files go to a folder of its own (TMPDIR), which must end empty; in
    # /tmp it may then make nothing, bar what other processes name through tempfile meanwhile
    # (the suite runs on two workers).
    own_tmp = tmp_path / "tmp"
    own_tmp.mkdir()
    cycle_env = env | {"TMPDIR": str(own_tmp)}
    before = set(os.listdir(tempfile.gettempdir()))
    assert team("down", env=cycle_env, cwd=folder).returncode == 0
    assert team("up", env=cycle_env, cwd=folder).returncode == 0
    predicted = python_module("commands.predict", str(digit), cwd=folder, env=cycle_env)
    assert predicted.returncode == 0, predicted.stderr
    assert f"model: models:/{MODEL_NAME}@{ALIAS} (version " in predicted.stderr
    assert team("down", env=cycle_env, cwd=folder).returncode == 0
    assert list(own_tmp.iterdir()) == []
    made = set(os.listdir(tempfile.gettempdir())) - before
    ports = json.loads((Path(env["MNIST_TEAM_HOME"]) / "stack.json").read_text())["ports"]
    own_sockets = {path.name for path in seaweedfs.grpc_sockets(ports)}
    assert {n for n in made if n in own_sockets or not OTHER_TESTS_TEMP.fullmatch(n)} == set()
