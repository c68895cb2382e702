"""End to end: the real dvc.yaml on tiny data in a throwaway copy of the project.

Each test gets its own copy of the session's `dvc repro`'d project (tests/conftest.py); what is
costly and only read (a forced re-run, a queued sweep) is made once per session and shared.
"""

import json
import os
import shlex
import signal
import subprocess
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml

from mnist_dense.model.network import load_model
from mnist_dense.runtime import kernels
from mnist_dense.serving.served_model import example_image
from mnist_dense.tracking.provenance import cpu_vendor, dvc_lock_outputs, file_md5
from mnist_dense.tracking.registry import ALIAS, MODEL_NAME
from tests.conftest import (
    BIN,
    DVC,
    EXPERIMENTS,
    champion_version,
    client_of,
    exp_run,
    experiments,
    output,
    sh,
    sha256,
    tracking_store,
    versions,
    write_params,
)
from tests.servers import post


def runs(project: Path) -> list:
    client = client_of(project)
    experiment = client.get_experiment_by_name("e2e")
    return client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])


def workspace_run(project: Path):
    """The MLflow run that made the workspace's model (metrics/run.json names it)."""
    run_id = json.loads((project / "metrics" / "run.json").read_text())["mlflow_run_id"]
    return client_of(project).get_run(run_id)


def stage_outputs(project: Path) -> list[str]:
    """Every output dvc.yaml declares (outs, metrics and plots files)."""
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    return [
        next(iter(entry)) if isinstance(entry, dict) else entry
        for stage in stages.values()
        for kind in ("outs", "metrics", "plots")
        for entry in stage.get(kind, [])
    ]


def test_repro_writes_metrics_and_lock(project):
    project, _ = project
    metrics = json.loads((project / "metrics" / "evaluate.json").read_text())
    assert 0.5 < metrics["test_accuracy"] <= 1.0
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert list(lock["stages"]) == ["download", "preprocess", "train", "evaluate"]
    recorded = dvc_lock_outputs(project / "dvc.lock")
    assert sorted(recorded) == sorted(stage_outputs(project))
    assert all(len(md5.removesuffix(".dir")) == 32 for md5 in recorded.values())
    assert lock["stages"]["train"]["params"]["params.yaml"]["train"]["epochs"] == 3
    raw = lock["stages"]["download"]["outs"][0]
    assert raw["path"] == "data/raw" and raw["nfiles"] == 4


def test_mlflow_run_holds_params_curves_test_metrics_and_model(project):
    project, _ = project
    run = workspace_run(project)
    client = client_of(project)
    assert run.info.status == "FINISHED"
    assert run.data.params["train.epochs"] == "3"
    assert run.data.params["train.hidden_units"] == "[32]"
    assert run.data.params["preprocess.split"] == "stratified"
    history = client.get_metric_history(run.info.run_id, "val_accuracy")
    assert [m.step for m in history] == [1, 2, 3]
    evaluate = json.loads((project / "metrics" / "evaluate.json").read_text())
    assert run.data.metrics["test_accuracy"] == evaluate["test_accuracy"]
    assert run.data.metrics["test_loss"] == evaluate["test_loss"]
    head = sh("git", "rev-parse", "HEAD", cwd=project).stdout.strip()
    assert run.data.tags["git.commit"] == head
    assert run.info.artifact_uri.startswith((project / "mlartifacts").as_uri())
    figures = {a.path for a in client.list_artifacts(run.info.run_id, "figures")}
    assert figures == {
        "figures/training_curves.png",
        "figures/confusion_matrix.png",
        "figures/misclassified.png",
    }
    with tracking_store(f"sqlite:///{project / 'mlflow.db'}"):
        model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    assert model.metadata.signature.inputs.input_names() == ["image", "pixels"]
    x_test = np.load(project / "data" / "processed" / "x_test.npy", allow_pickle=False)[:3]
    answers = model.predict(pd.DataFrame({"pixels": [x.tolist() for x in x_test]}))
    expected = load_model(project / "models" / "model.keras").predict(x_test, verbose=0)
    assert answers["digit"].tolist() == expected.argmax(axis=1).tolist()


def test_mlflow_run_records_what_reproduces_it(project):
    project, _ = project
    run = workspace_run(project)
    tags = run.data.tags
    assert tags["git.dirty"] == "false"
    for name in ("python", "tensorflow", "keras", "numpy", "platform", "cpu", "threads"):
        assert tags[f"env.{name}"], name
    assert tags["env.cpu_caches"] == kernels.cpu_caches() != "?"  # as Eigen's cpuid reader saw
    assert tags["env.cpu_vendor"] == cpu_vendor() != "?"
    assert tags["kernels.eigen_blocking"] == kernels.eigen_blocking() == "L1 48K, L2 2M, L3 300M"
    assert tags["env.keras"] == keras_version()
    assert tags["env.threads"] == "1"  # the tiny params' train.threads
    assert tags["kernels.mode"] == "portable" and tags["kernels.onednn_rewrites"] == "off"
    machine = json.loads((project / "metrics" / "run.json").read_text())
    assert tags["kernels.path"] == machine["kernel_path"] and machine["kernel_path"].startswith(
        "portable ("
    )
    assert machine["cpu_caches"] == tags["env.cpu_caches"]
    assert machine["eigen_blocking"] == tags["kernels.eigen_blocking"]
    assert tags["env.requirements_sha256"] == sha256(project / "requirements.txt")
    lock = dvc_lock_outputs(project / "dvc.lock")
    for path in ("data/raw", "data/processed", "models/model.keras"):
        assert tags[f"dvc.md5.{path}"] == lock[path]
    command = shlex.split(tags["reproduce.command"])
    assert command[:3] == ["dvc", "exp", "run"]
    overrides = dict(arg.split("=", 1) for arg in command[4::2])
    assert overrides["train.epochs"] == "3" and overrides["train.hidden_units"] == "[32]"
    assert overrides["preprocess.split"] == "stratified"
    assert overrides["tracking.enabled"] == "true"
    assert overrides == run.data.params


def keras_version() -> str:
    import keras

    return keras.__version__


def test_the_logged_model_is_served_over_http(project, model_server):
    """The project's model server on the run's registered version answers for pixel rows and
    for image files."""
    project, env = project
    run = workspace_run(project)
    x_test = np.load(project / "data" / "processed" / "x_test.npy", allow_pickle=False)[:2]
    y_test = np.load(project / "data" / "processed" / "y_test.npy", allow_pickle=False)[:2]
    local = load_model(project / "models" / "model.keras").predict(x_test, verbose=0)
    (version,) = [v for v in versions(client_of(project)).values() if v.run_id == run.info.run_id]
    url = model_server(f"models:/{MODEL_NAME}/{version.version}", project, env)
    rows = post(url, {"dataframe_records": [{"pixels": x.tolist()} for x in x_test]})
    images = post(url, {"dataframe_records": [{"image": example_image(x)} for x in x_test]})
    served = np.array([row["probabilities"] for row in rows["predictions"]])
    np.testing.assert_allclose(served, local, rtol=1e-5, atol=1e-6)
    assert [row["digit"] for row in rows["predictions"]] == list(y_test)
    assert [row["error"] for row in images["predictions"]] == [None, None]
    assert all(row["digit"] in range(10) for row in images["predictions"])
    model_md5 = file_md5(project / "models" / "model.keras")
    assert {row["model"] for row in images["predictions"]} == {
        f"run {run.info.run_id}, model.keras md5 {model_md5}"
    }


def test_editing_the_served_model_reruns_evaluate_but_not_train(project):
    """Train depends only on training: the served model and the registry are evaluate's."""
    project, env = project
    served = project / "mnist_dense" / "serving" / "served_model.py"
    served.write_text(served.read_text() + "\n# an edit to predict-time code\n")
    changed = json.loads(sh(DVC, "status", "--json", cwd=project, env=env).stdout)
    assert "evaluate" in changed and "train" not in changed, changed


def test_dvc_exp_show_leads_with_test_then_validation_accuracy_then_training_time(
    project_with_experiments,
):
    project, env = project_with_experiments
    shown = sh(DVC, "exp", "show", "--csv", "--only-changed", cwd=project, env=env).stdout
    columns = shown.splitlines()[0].split(",")
    metrics = columns[columns.index("Created") + 1 :]
    assert metrics[:3] == ["test_accuracy", "test_loss", "test_macro_f1"], columns
    assert metrics.index("val_accuracy") < metrics.index("train_seconds")
    assert metrics.index("train_seconds") < metrics.index("train.epochs")  # params after
    assert "loss" not in columns and "accuracy" not in columns  # the training set's: history


def test_second_repro_is_a_no_op(project):
    project, env = project
    out = output(sh(DVC, "repro", cwd=project, env=env))
    assert "Data and pipelines are up to date." in out


def test_forced_rerun_reproduces_every_output_bit_for_bit(forced_rerun):
    project, before, after = (
        forced_rerun.project,
        dict(forced_rerun.lock_before),
        dict(forced_rerun.lock_after),
    )
    assert sorted(after) == sorted(stage_outputs(project))
    assert after.pop("metrics/run.json") != before.pop("metrics/run.json")  # a new MLflow run
    assert after == before
    assert forced_rerun.runs_after == forced_rerun.runs_before + 1


def test_verify_repro_reports_identical_outputs(project):
    project, env = project
    compared = [
        path for path in dvc_lock_outputs(project / "dvc.lock", ("preprocess", "train", "evaluate"))
    ]
    out = sh(str(BIN / "python"), "-m", "commands.verify_repro", cwd=project, env=env).stdout
    assert f"OK: all {len(compared) - 1} outputs bit-identical to dvc.lock" in out
    model = dvc_lock_outputs(project / "dvc.lock")["models/model.keras"]
    (row,) = [line for line in out.splitlines() if line.startswith("machine row: | ")]
    assert row.endswith(f"| {kernels.path()} | `{model[:8]}` | identical |")
    assert kernels.path().endswith("Eigen blocks for L1 48K, L2 2M, L3 300M)")
    rows = [line for line in out.splitlines() if line.split(" ", 1)[0] in compared]
    assert len(rows) == len(compared)
    assert all(row.endswith(("identical", "differs by nature (run id, wall time)")) for row in rows)


def test_verify_repro_flags_a_difference_and_names_its_likely_reason():
    from commands.verify_repro import compare, likely_reason

    recorded = {"models/model.keras": "a" * 32, "metrics/run.json": "b" * 32}
    report, mismatches, compared = compare(recorded, {"models/model.keras": "c" * 32})
    assert (mismatches, compared) == (1, 1)
    assert "DIFFERENT" in report and "differs by nature" in report
    then = {
        "machine": "x86_64",
        "kernel_path": "portable (x)",
        "eigen_blocking": "L1 48K, L2 2M, L3 300M",
        "cpu_vendor": "GenuineIntel",
        "cpu_caches": "L1 48K, L2 2M, L3 300M",
        "test_accuracy": "0.9894",
    }
    arm = then | {"machine": "aarch64", "kernel_path": "portable on aarch64 (z)"}
    assert likely_reason(then, arm | {"test_accuracy": "0.989"}) == (
        "this machine's architecture (aarch64) computes other bits than the committed lock "
        "(made on x86_64): test accuracy 98.94 % there, 98.90 % here (-0.04 points)"
    )
    here = then | {"kernel_path": "native (y)"}
    assert likely_reason(then, here) == ("another kernel path: portable (x) then, native (y) here")
    here = then | {"eigen_blocking": "L1 32K, L2 512K, L3 16M"}  # made before the pin, say
    assert likely_reason(then, here) == (
        "Eigen blocked the matrix products by other cache sizes: "
        "L1 48K, L2 2M, L3 300M then, L1 32K, L2 512K, L3 16M here"
    )
    here = then | {"cpu_caches": "L1 32K, L2 512K, L3 16M", "cpu_vendor": "AuthenticAMD"}
    assert likely_reason(then, here).startswith(
        "another CPU cache size (L2 2M then, 512K here; L1 48K then, 32K here; "
    )
    assert likely_reason(then, then).startswith("none recorded")


def test_interrupted_repro_leaves_no_partial_output_and_the_next_repro_recovers(project):
    project, env = project
    before = dvc_lock_outputs(project / "dvc.lock")
    write_params(project, tracking={"enabled": True}, train={"epochs": 1000})
    process = subprocess.Popen(
        [DVC, "repro"],
        cwd=project,
        env={**env, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    for line in process.stdout:
        if line.startswith("epoch 3/"):
            break
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    printed = process.communicate(timeout=120)[0]
    assert process.returncode != 0, printed
    assert not (project / "models" / "model.keras").exists()
    assert not list(project.glob("**/.tmp-*"))
    write_params(project, tracking={"enabled": True})
    sh(DVC, "repro", cwd=project, env=env)
    after = dvc_lock_outputs(project / "dvc.lock")
    after.pop("metrics/run.json"), before.pop("metrics/run.json")
    assert after == before
    assert "up to date" in output(sh(DVC, "status", cwd=project, env=env))


def test_exp_run_adds_an_experiment_and_a_tagged_mlflow_run(project):
    project, env = project
    runs_before = len(runs(project))
    exp_run(project, env, "one-epoch", "train.epochs=1")
    data = experiments(project, env)["one-epoch"]
    assert data["params"]["params.yaml"]["data"]["train"]["epochs"] == 1
    accuracy = data["metrics"]["metrics/evaluate.json"]["data"]["test_accuracy"]
    all_runs = runs(project)
    assert len(all_runs) == runs_before + 1
    latest = all_runs[-1]
    assert latest.data.tags["dvc.exp_name"] == "one-epoch"
    assert latest.info.run_name == "one-epoch"
    assert latest.data.metrics["test_accuracy"] == accuracy
    assert latest.data.params["train.epochs"] == "1"


def test_run_cache_restores_a_training_without_a_new_mlflow_run(project_with_experiments):
    """Back to a configuration already trained (after another): DVC restores it, and it
    still points at the MLflow run that produced its model."""
    project, env = project_with_experiments
    name, override = next(iter(EXPERIMENTS.items()))  # trained before the second experiment
    runs_before = len(runs(project))
    out = exp_run(project, env, f"{name}-again", override)
    assert "Stage 'train' is cached - skipping run" in out
    assert len(runs(project)) == runs_before
    shown = experiments(project, env)
    run_id = shown[f"{name}-again"]["metrics"]["metrics/run.json"]["data"]["mlflow_run_id"]
    assert run_id == shown[name]["metrics"]["metrics/run.json"]["data"]["mlflow_run_id"]
    assert {r.info.run_id: r.info.run_name for r in runs(project)}[run_id] == name


# whichever of the two runs first builds `swept` inside its limit: four trainings on two queue
# workers beside the other pytest worker took up to 446 s here, near the suite's 600
SWEEP_SETUP_LIMIT = pytest.mark.timeout(1200)


@SWEEP_SETUP_LIMIT
def test_queued_sweep_with_two_workers_loses_nothing(swept):
    project, env = swept.project, swept.env
    assert "Failed" not in swept.status, swept.status
    baseline = sh("git", "rev-parse", "HEAD", cwd=project, env=env).stdout.strip()
    new_runs = [run for run in runs(project) if run.info.run_id not in swept.runs_before]
    assert len(new_runs) == 4
    assert all(run.data.tags["dvc.baseline_rev"] == baseline for run in new_runs)
    shown = experiments(project, env)
    for run in new_runs:
        name = run.data.tags["dvc.exp_name"]
        assert run.info.run_name == name
        data = shown[name]
        assert data["metrics"]["metrics/run.json"]["data"]["mlflow_run_id"] == run.info.run_id
        accuracy = data["metrics"]["metrics/evaluate.json"]["data"]["test_accuracy"]
        assert run.data.metrics["test_accuracy"] == accuracy
    swept = {
        (float(run.data.params["train.learning_rate"]), int(run.data.params["train.batch_size"]))
        for run in new_runs
    }
    assert swept == {(0.002, 16), (0.002, 64), (0.02, 16), (0.02, 64)}


@SWEEP_SETUP_LIMIT
def test_two_queue_workers_registering_at_once_keep_all_versions_and_one_champion(swept):
    client = client_of(swept.project)
    added = set(versions(client)) - swept.versions_before
    assert len(added) == 4
    holders = [
        number
        for number in versions(client)
        if ALIAS in client.get_model_version(MODEL_NAME, number).aliases
    ]
    assert holders == [champion_version(client)]
    assert all("champion.decision" in versions(client)[v].tags for v in added)


def test_history_csv_is_the_per_epoch_record_of_the_run(project):
    project, _ = project
    history = pd.read_csv(project / "metrics" / "history.csv")
    run = workspace_run(project)
    logged = client_of(project).get_metric_history(run.info.run_id, "val_loss")
    assert [m.value for m in logged] == history["val_loss"].tolist()
