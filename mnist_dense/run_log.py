"""Logging to one MLflow run without ever making training wait for the tracking store, and
without losing a record to a crash.

Each call (metrics of an epoch, tags, a file, the datasets, the run's end) becomes a record in
an ordered queue that a background thread sends one by one. A record that fails (a server being
restarted, a store locked) is retried every RETRY_S until it goes through, so a short outage
loses nothing and costs the training loop no time. Records are idempotent (metrics carry their
own timestamps), so sending one twice is harmless.

Memory alone would lose the queue to a SIGKILL or the out-of-memory killer in an outage, and
leave the run RUNNING forever; so every record is also written, before the call returns, to
the log's journal: `.mlflow-pending/<time>-<run id>/journal.jsonl`, one JSON object a line,
appended (O_APPEND, never rewritten) and fsynced line by line; a file's bytes go to `files/`
(fsynced) before the line that names them. Its first line says which store and run it is for
and which process writes it (pid, the process's start time, the boot and the host), so
`make sync-runs` can tell a live writer, left alone, from a dead one. The thread appends a
`{"sent": n}` line for each record the store took (no fsync: sending one again is harmless).

`close()` waits up to MNIST_TRACKING_WAIT_S (default 30 s) for the rest; when everything went
it removes the journal, else it turns it into `records.json` (only what is left to send) and
`make sync-runs` (commands/sync_runs.py) sends it later. The journal of a process that died
is sent by `make sync-runs` too: what the store had not taken, oldest first (a partial last
line, the record the process died writing, is left out with a warning), then the run is marked
KILLED when it is still RUNNING, since nobody else will end it.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, RunTag
from mlflow.tracking import MlflowClient

from mnist_dense.cli import first_line
from mnist_dense.files import (
    TEMP_PREFIX,
    atomic_path,
    fsync_folder,
    private_folder,
    write_private,
)
from mnist_dense.provenance import project_root
from mnist_dense.store import masked

PENDING_DIR = ".mlflow-pending"
JOURNAL = "journal.jsonl"  # a live (or crashed) RunLog's records, as they were made
RECORDS = "records.json"  # what is left to send of a log that was closed (or adopted)
FILES = "files"
JOURNAL_FORMAT = 1
RETRY_S = 2.0
WAIT_S = float(os.environ.get("MNIST_TRACKING_WAIT_S", "30"))
SYNC_COMMAND = "make sync-runs"


def pending_root() -> Path:
    return project_root() / PENDING_DIR


# Who writes a log ------------------------------------------------------------------------------


def _process_state(pid: int) -> tuple[str, str] | None:
    """(state, start time) of a live process, None when there is none. The start time tells
    the process from a later one given the same pid; state "Z" is a zombie: dead, not yet
    reaped by its parent. Linux's /proc, else `ps` (macOS)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        if Path("/proc/self/stat").exists():
            return None  # /proc exists: no such process
    except OSError:
        return None
    else:
        fields = text.rsplit(")", 1)[1].split()  # after the command's name, which may hold ")"
        return fields[0], fields[19]  # fields 3 (state) and 22 (start time, in clock ticks)
    try:
        shown = subprocess.run(
            ["ps", "-o", "stat=,lstart=", "-p", str(pid)],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    if not shown:
        return None
    state, _, started = shown.partition(" ")
    return state[:1], started.strip()


def _boot_id() -> str | None:
    """This boot of the machine (Linux): a log written before a reboot has no live writer."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def this_process() -> dict[str, object]:
    """What identifies the calling process to `make sync-runs`, even after its pid is reused."""
    state = _process_state(os.getpid())
    return {
        "pid": os.getpid(),
        "started": state[1] if state else None,
        "boot": _boot_id(),
        "host": socket.gethostname(),
    }


def writer_busy(writer: dict | None) -> str | None:
    """Why the process that wrote a pending log may still be writing it, so it must be left
    alone; None when it is gone (or the log names none) and the log may be sent."""
    if not writer:
        return None
    pid = int(writer["pid"])
    if writer.get("host") != socket.gethostname():
        return (
            f"written by process {pid} on host {writer.get('host')}; only there can "
            f"`{SYNC_COMMAND}` tell whether it still runs"
        )
    if writer.get("boot") and _boot_id() and writer["boot"] != _boot_id():
        return None  # the machine restarted since
    state = _process_state(pid)
    if state is None or state[0] == "Z":
        return None
    if writer.get("started") and state[1] != writer["started"]:
        return None  # the pid now belongs to a later process
    return f"process {pid} is still writing it"


# The journal -----------------------------------------------------------------------------------


def _line(entry: dict) -> bytes:
    return (json.dumps(entry, separators=(",", ":")) + "\n").encode()


def write_private_bytes(path: Path, data: bytes) -> None:
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
        out.write(data)


class Journal:
    """The append-only, fsynced file of one RunLog's records (the module's docstring).

    Both the training thread (records) and the sending thread (`sent` lines) append; a lock
    keeps their lines whole, and a closed journal ignores late `sent` lines rather than
    writing into whatever file reuses its descriptor."""

    def __init__(self, folder: Path, descriptor: int) -> None:
        self.folder = folder
        self._descriptor: int | None = descriptor
        self._lock = threading.Lock()

    @classmethod
    def create(cls, uri: str, run_id: str, writer: dict | None = None) -> "Journal":
        """A new journal for run `run_id`, its first line in place and on disk before any
        record (so no journal is found without one); the store's URI without its password."""
        header = {
            "journal": JOURNAL_FORMAT,
            "uri": masked(uri),
            "run_id": run_id,
            "writer": writer or this_process(),
        }
        folder = private_folder(pending_root()) / f"{time.time_ns()}-{run_id}"
        with atomic_path(folder) as temp:
            private_folder(temp / FILES)
            temp.chmod(0o700)
            write_private_bytes(temp / JOURNAL, _line(header))
        return cls(folder, os.open(folder / JOURNAL, os.O_WRONLY | os.O_APPEND))

    def record(self, seq: int, record: dict, files: dict[str, bytes]) -> None:
        """Append record number `seq`, on disk when this returns; its file's bytes first."""
        if "key" in record:
            with atomic_path(self.folder / FILES / record["key"]) as temp:
                write_private_bytes(temp, files[record["key"]])
        self._append(_line({"seq": seq, "record": record}), sync=True)

    def sent(self, seq: int) -> None:
        """Note that the store took record `seq` (not fsynced: at worst it is sent again)."""
        self._append(_line({"sent": seq}), sync=False)

    def _append(self, data: bytes, sync: bool) -> None:
        with self._lock:
            if self._descriptor is None:
                return
            view = memoryview(data)
            while view:  # a short write (a signal, a full disk) goes on where it stopped
                view = view[os.write(self._descriptor, view) :]
            if sync:
                os.fsync(self._descriptor)

    def close(self) -> None:
        with self._lock:
            if self._descriptor is not None:
                os.close(self._descriptor)
                self._descriptor = None

    def remove(self) -> None:
        """Everything reached the store: nothing to keep."""
        self.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    def settle(self, uri: str, run_id: str, unsent: list[dict]) -> Path:
        """Keep only what is left to send, as `records.json` (written, fsynced, then the
        journal removed), for `make sync-runs`; the files no record needs go too."""
        self.close()
        _keep_records(self.folder, uri, run_id, unsent)
        return self.folder


def _keep_records(folder: Path, uri: str, run_id: str, records: list[dict]) -> None:
    """Replace a journal by records.json holding `records`, dropping the files they do not
    need. A crash before the journal is removed leaves both: records.json wins."""
    saved = {"uri": masked(uri), "run_id": run_id, "records": records}
    write_private(folder / RECORDS, json.dumps(saved, indent=2) + "\n")
    (folder / JOURNAL).unlink(missing_ok=True)
    needed = {record["key"] for record in records if "key" in record}
    for path in (folder / FILES).iterdir():
        if path.name not in needed:
            path.unlink()
    fsync_folder(folder)


def read_journal(folder: Path) -> tuple[dict, list[dict], list[str]]:
    """A journal's first line, its records the store did not take (oldest first), and
    warnings: a partial last line (the record a killed process was writing: it never
    returned to its caller, so nothing relied on it) or an unreadable line is left out."""
    path = folder / JOURNAL
    *lines, torn = path.read_bytes().split(b"\n")
    warnings = []
    if torn:
        warnings.append(
            f"{path}: left out a partial last line ({len(torn)} bytes): the record its "
            "process was writing when it died"
        )
    entries = []
    for number, line in enumerate(lines, start=1):
        try:
            entries.append(json.loads(line))
        except ValueError:
            warnings.append(f"{path}: line {number} is not a record and was left out")
    if not entries or entries[0].get("journal") != JOURNAL_FORMAT:
        raise PendingError(f"{path}: no journal header on its first line; not sent")
    header, records, sent = entries[0], {}, set()
    for entry in entries[1:]:
        if "seq" in entry:
            records[entry["seq"]] = entry["record"]
        elif "sent" in entry:
            sent.add(entry["sent"])
    return header, [records[seq] for seq in sorted(records) if seq not in sent], warnings


def adopt(folder: Path) -> tuple[dict, list[dict], list[str]]:
    """Take over the journal of a process that died: keep what the store did not take as
    records.json, followed by a "killed" record when the process never ended its run (it
    marks the run KILLED if still RUNNING, once the rest is sent). The journal's first line,
    the records kept and warnings (read_journal)."""
    header, records, warnings = read_journal(folder)
    ended = any(record["kind"] == "end" for record in _all_records(folder))
    if not ended:
        records.append({"kind": "killed"})
    _keep_records(folder, header["uri"], header["run_id"], records)
    return header, records, warnings


def _all_records(folder: Path) -> list[dict]:
    """Every record a journal holds, sent or not (a partial or unreadable line left out)."""
    found = []
    for line in (folder / JOURNAL).read_bytes().split(b"\n")[:-1]:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if "seq" in entry:
            found.append(entry["record"])
    return found


def pending_busy(folder: Path) -> str | None:
    """Why a pending log must be left alone now (a live process still writes it), or None."""
    if (folder / RECORDS).is_file():
        return writer_busy(json.loads((folder / RECORDS).read_text()).get("writer"))
    with open(folder / JOURNAL, "rb") as journal:
        first = journal.readline()
    try:
        header = json.loads(first)
    except ValueError:
        return None  # no header: adopt() says so
    return writer_busy(header.get("writer"))


# The log of a run ------------------------------------------------------------------------------


class RunLog:
    """An ordered, non-blocking log of one MLflow run, journaled (see the module's docstring)."""

    def __init__(self, uri: str, run_id: str) -> None:
        self.uri, self.run_id = uri, run_id
        self._records: deque[tuple[int, dict]] = deque()  # not yet taken by the store, oldest first
        self._files: dict[str, bytes] = {}
        self._count = 0
        self._adding = threading.Lock()
        self._condition = threading.Condition()
        self._stopping = False
        self._outage_reported = False
        self._journal = self._open_journal()
        self._thread = threading.Thread(target=self._send_all, name="mlflow-run-log", daemon=True)
        self._thread.start()

    def _open_journal(self) -> Journal | None:
        try:
            return Journal.create(self.uri, self.run_id)
        except OSError as error:
            self._journal_lost(error)
            return None

    def _journal_lost(self, error: OSError) -> None:
        print(
            f"warning: run {self.run_id}'s journal cannot be written ({first_line(error)}); "
            "its records are kept in memory only, and lost if the process is killed",
            file=sys.stderr,
            flush=True,
        )

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
        """Journal the record (on disk when this returns), then queue it for sending; one
        caller at a time, so the journal's order is the queue's."""
        with self._adding:
            seq, self._count = self._count, self._count + 1
            if self._journal is not None:
                try:
                    self._journal.record(seq, record, self._files)
                except OSError as error:  # a full disk must not stop the training
                    self._journal.close()
                    self._journal = None
                    self._journal_lost(error)
            with self._condition:
                self._records.append((seq, record))
                self._condition.notify_all()

    def _send_all(self) -> None:
        client = MlflowClient(self.uri)
        while True:
            with self._condition:
                while not self._records and not self._stopping:
                    self._condition.wait()
                if self._stopping:
                    return
                seq, record = self._records[0]
            try:
                send(client, self.run_id, record, self._files)
            except Exception as error:  # the store is down or busy: try again shortly
                self._report_outage(error)
                with self._condition:
                    self._condition.wait(RETRY_S)
                continue
            journal = self._journal
            if journal is not None:
                with suppress(OSError):  # not noted: make sync-runs sends it again, harmlessly
                    journal.sent(seq)
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
            unsent = [record for _, record in self._records]
        journal, self._journal = self._journal, None
        if not unsent:
            if journal is not None:
                journal.remove()
            return True
        if journal is not None:
            folder = journal.settle(self.uri, self.run_id, unsent)
        else:
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


def _send_killed(client: MlflowClient, run_id: str, record: dict, files: dict) -> None:
    """The end of a run whose process died without one (adopt): KILLED, unless the run has
    ended meanwhile (another stage's log ended it, or a person did)."""
    if client.get_run(run_id).info.status == "RUNNING":
        client.set_terminated(run_id, "KILLED")


SENDERS: dict[str, Sender] = {
    "metrics": _send_metrics,
    "tags": _send_tags,
    "file": _send_file,
    "inputs": _send_inputs,
    "end": _send_end,
    "killed": _send_killed,
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


def save_pending(
    uri: str,
    run_id: str,
    records: list[dict],
    files: dict[str, bytes],
    writer: dict | None = None,
) -> Path:
    """Write unsent records and the files they need to .mlflow-pending/<time>-<run id>/ (the
    time orders two stages' logs of one run), only the owner's to read, on disk when this
    returns; the store's URI saved without its password (sync-runs takes it from
    MLFLOW_TRACKING_URI again). With `writer` (this_process()), `make sync-runs` leaves the
    folder alone while that process lives: it is kept before it is sent (publish), not yet
    given up on; release() gives it up."""
    folder = private_folder(pending_root()) / f"{time.time_ns()}-{run_id}"
    with atomic_path(folder) as temp:
        private_folder(temp / FILES)
        temp.chmod(0o700)
        for record in records:
            if "key" in record:
                write_private_bytes(temp / FILES / record["key"], files[record["key"]])
        saved = {"uri": masked(uri), "run_id": run_id, "records": records}
        if writer:
            saved["writer"] = writer
        write_private(temp / RECORDS, json.dumps(saved, indent=2) + "\n")
    return folder


def release(folder: Path) -> None:
    """Leave a folder save_pending wrote with a writer to `make sync-runs`, even while its
    writer still runs."""
    saved = json.loads((folder / RECORDS).read_text())
    saved.pop("writer", None)
    write_private(folder / RECORDS, json.dumps(saved, indent=2) + "\n")


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
    """Send a folder written by save_pending, RunLog.close or adopt, oldest record first;
    remove it when all went.

    Returns the number of records sent; raises on the first that fails (after recording
    which are left, so a second call resumes there).
    """
    saved = json.loads((folder / RECORDS).read_text())
    client = MlflowClient(unmasked(saved["uri"]))
    files = {
        path.name: path.read_bytes()
        for path in (folder / FILES).iterdir()
        if not path.name.startswith(TEMP_PREFIX)  # a file a killed process was writing
    }
    records = saved["records"]
    for sent, record in enumerate(records):
        try:
            send(client, saved["run_id"], record, files, senders)
        except Exception:
            left = {key: value for key, value in saved.items() if key != "writer"}
            left["records"] = records[sent:]
            write_private(folder / RECORDS, json.dumps(left, indent=2) + "\n")
            raise
    shutil.rmtree(folder)
    return len(records)
