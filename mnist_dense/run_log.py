"""Logging to one MLflow run without ever making training wait for the tracking store.

Each call (metrics of an epoch, tags, a file, the datasets, the run's end) becomes a record in
an ordered queue that a background thread sends one by one. A record that fails (a server being
restarted, a store locked) is retried every RETRY_S until it goes through, so a short outage
loses nothing and costs the training loop no time. `close()` waits up to MNIST_TRACKING_WAIT_S
(default 30 s) for the rest; whatever is still unsent is written to
`.mlflow-pending/<time>-<run id>/` and `make sync-runs` (commands/sync_runs.py) sends it later.
Records are idempotent (metrics carry their own timestamps), so sending one twice is harmless.
"""

import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, RunTag
from mlflow.tracking import MlflowClient

from mnist_dense.cli import first_line
from mnist_dense.files import atomic_path, private_folder, write_private
from mnist_dense.provenance import project_root
from mnist_dense.store import masked

PENDING_DIR = ".mlflow-pending"
RETRY_S = 2.0
WAIT_S = float(os.environ.get("MNIST_TRACKING_WAIT_S", "30"))
SYNC_COMMAND = "make sync-runs"


def pending_root() -> Path:
    return project_root() / PENDING_DIR


class RunLog:
    """An ordered, non-blocking log of one MLflow run (see the module's docstring)."""

    def __init__(self, uri: str, run_id: str) -> None:
        self.uri, self.run_id = uri, run_id
        self._records: deque[dict] = deque()  # not yet confirmed by the store, oldest first
        self._files: dict[str, bytes] = {}
        self._condition = threading.Condition()
        self._stopping = False
        self._outage_reported = False
        self._thread = threading.Thread(target=self._send_all, name="mlflow-run-log", daemon=True)
        self._thread.start()

    # What a run logs -------------------------------------------------------------------------

    def metrics(self, values: dict[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        self._add({"kind": "metrics", "values": values, "step": step, "timestamp": now})

    def tags(self, tags: dict[str, str]) -> None:
        self._add({"kind": "tags", "tags": tags})

    def file(self, data: bytes, artifact_file: str) -> None:
        """A file's bytes as the artifact `artifact_file` (e.g. "figures/curves.png")."""
        key = f"{len(self._files)}-{Path(artifact_file).name}"
        self._files[key] = data
        self._add({"kind": "file", "key": key, "artifact_file": artifact_file})

    def datasets(self, records: list[dict]) -> None:
        """Dataset inputs (tracking.dataset_records): what data the run saw."""
        self._add({"kind": "inputs", "datasets": records})

    def finish(self, status: str) -> None:
        self._add({"kind": "end", "status": status})

    # Sending -------------------------------------------------------------------------------

    def _add(self, record: dict) -> None:
        with self._condition:
            self._records.append(record)
            self._condition.notify_all()

    def _send_all(self) -> None:
        client = MlflowClient(self.uri)
        while True:
            with self._condition:
                while not self._records and not self._stopping:
                    self._condition.wait()
                if self._stopping:
                    return
                record = self._records[0]
            try:
                send(client, self.run_id, record, self._files)
            except Exception as error:  # the store is down or busy: try again shortly
                self._report_outage(error)
                with self._condition:
                    self._condition.wait(RETRY_S)
                continue
            with self._condition:
                self._records.popleft()
                self._condition.notify_all()

    def _report_outage(self, error: Exception) -> None:
        if not self._outage_reported:
            self._outage_reported = True
            print(
                f"warning: MLflow store {masked(self.uri)} did not take run {self.run_id}'s log "
                f"({first_line(error)}); training goes on, the log is sent when the store is back",
                file=sys.stderr,
                flush=True,
            )

    def close(self, wait_s: float = WAIT_S) -> bool:
        """Wait up to `wait_s` for every record to be sent; keep the rest on disk.

        Returns True when everything reached the store.
        """
        deadline = time.monotonic() + wait_s
        with self._condition:
            while self._records and time.monotonic() < deadline:
                self._condition.wait(deadline - time.monotonic())
            self._stopping = True
            self._condition.notify_all()
        self._thread.join(timeout=float(os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT", 20)) + 5)
        with self._condition:
            unsent = list(self._records)
        if not unsent:
            return True
        folder = save_pending(self.uri, self.run_id, unsent, self._files)
        print(
            f"warning: MLflow store {masked(self.uri)} is unreachable; {describe(unsent)} of run "
            f"{self.run_id} kept in {folder}; run `{SYNC_COMMAND}` when it is back",
            file=sys.stderr,
            flush=True,
        )
        return False


class NullRunLog:
    """A RunLog that records nothing: tracking turned off, or a run the store does not hold."""

    run_id = None

    def metrics(self, values: dict[str, float], step: int = 0) -> None:
        pass

    def tags(self, tags: dict[str, str]) -> None:
        pass

    def file(self, data: bytes, artifact_file: str) -> None:
        pass

    def datasets(self, records: list[dict]) -> None:
        pass


def describe(records: list[dict]) -> str:
    """'12 epochs of metrics, 2 files and the model' for the records not yet sent."""
    kinds = [record["kind"] for record in records]
    parts = []
    if kinds.count("metrics"):
        parts.append(f"{kinds.count('metrics')} metric records")
    if kinds.count("tags"):
        parts.append(f"{kinds.count('tags')} tag records")
    if kinds.count("file"):
        parts.append(f"{kinds.count('file')} files")
    if "inputs" in kinds:
        parts.append("the dataset inputs")
    if "publish" in kinds:
        parts.append("the model and its registration")
    if "end" in kinds:
        parts.append("the run's status")
    return ", ".join(parts) or "nothing"


Sender = Callable[[MlflowClient, str, dict, dict[str, bytes]], None]


def _send_metrics(client: MlflowClient, run_id: str, record: dict, files: dict) -> None:
    metrics = [
        Metric(key, float(value), record["timestamp"], record["step"])
        for key, value in record["values"].items()
    ]
    client.log_batch(run_id, metrics=metrics)


def _send_tags(client: MlflowClient, run_id: str, record: dict, files: dict) -> None:
    client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in record["tags"].items()])


def _send_file(client: MlflowClient, run_id: str, record: dict, files: dict) -> None:
    artifact = Path(record["artifact_file"])
    with tempfile.TemporaryDirectory() as folder:
        local = Path(folder) / artifact.name
        local.write_bytes(files[record["key"]])
        client.log_artifact(run_id, str(local), str(artifact.parent) or None)


def _send_inputs(client: MlflowClient, run_id: str, record: dict, files: dict) -> None:
    inputs = [
        DatasetInput(
            Dataset(d["name"], d["digest"], "dvc", d["source"], profile=d["profile"]),
            tags=[InputTag("mlflow.data.context", d["context"])],
        )
        for d in record["datasets"]
    ]
    client.log_inputs(run_id, datasets=inputs)


def _send_end(client: MlflowClient, run_id: str, record: dict, files: dict) -> None:
    client.set_terminated(run_id, record["status"])


SENDERS: dict[str, Sender] = {
    "metrics": _send_metrics,
    "tags": _send_tags,
    "file": _send_file,
    "inputs": _send_inputs,
    "end": _send_end,
}


def send(
    client: MlflowClient,
    run_id: str,
    record: dict,
    files: dict[str, bytes],
    senders: dict[str, Sender] = SENDERS,
) -> None:
    """Send one record to the store (raises if the store does not take it)."""
    sender = senders.get(record["kind"])
    if sender is None:
        raise ValueError(f"unknown record kind {record['kind']!r}")
    sender(client, run_id, record, files)


def save_pending(uri: str, run_id: str, records: list[dict], files: dict[str, bytes]) -> Path:
    """Write unsent records and the files they need to .mlflow-pending/<time>-<run id>/ (the
    time orders two stages' logs of one run), only the owner's to read; the store's URI saved
    without its password (sync-runs takes it from MLFLOW_TRACKING_URI again)."""
    folder = private_folder(pending_root()) / f"{time.time_ns()}-{run_id}"
    with atomic_path(folder) as temp:
        private_folder(temp / "files")
        temp.chmod(0o700)
        for record in records:
            if "key" in record:
                write_private_bytes(temp / "files" / record["key"], files[record["key"]])
        saved = {"uri": masked(uri), "run_id": run_id, "records": records}
        write_private(temp / "records.json", json.dumps(saved, indent=2) + "\n")
    return folder


def write_private_bytes(path: Path, data: bytes) -> None:
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
        out.write(data)


def unmasked(saved: str) -> str:
    """A pending log's store URI with its password again, from MLFLOW_TRACKING_URI when that
    names the same store; PendingError otherwise."""
    if "***" not in saved:
        return saved
    current = os.environ.get("MLFLOW_TRACKING_URI", "")
    if masked(current) == saved:
        return current
    raise PendingError(
        f"the log was made against {saved}; set MLFLOW_TRACKING_URI to that store, with its "
        "password, to send it"
    )


class PendingError(Exception):
    """A kept log that cannot be sent as things are (the message says what to change)."""


def send_pending(folder: Path, senders: dict[str, Sender] = SENDERS) -> int:
    """Send a folder written by save_pending, oldest record first; remove it when all went.

    Returns the number of records sent; raises on the first that fails (after recording
    which are left, so a second call resumes there).
    """
    saved = json.loads((folder / "records.json").read_text())
    client = MlflowClient(unmasked(saved["uri"]))
    files = {path.name: path.read_bytes() for path in (folder / "files").iterdir()}
    records = saved["records"]
    for sent, record in enumerate(records):
        try:
            send(client, saved["run_id"], record, files, senders)
        except Exception:
            left = saved | {"records": records[sent:]}
            write_private(folder / "records.json", json.dumps(left, indent=2) + "\n")
            raise
    shutil.rmtree(folder)
    return len(records)
