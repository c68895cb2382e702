"""The run logs kept on disk, in `.mlflow-pending/<time>-<run id>/`, so that no record is lost
to a crash or an outage, and `make sync-runs` (commands/sync_runs.py) sends them later.

Memory alone would lose a RunLog's queue to a SIGKILL or the out-of-memory killer in an
outage, and leave the run RUNNING forever; so every record is also written, before the call
that made it returns, to the log's journal: `journal.jsonl`, one JSON object a line, appended
(O_APPEND, never rewritten) and fsynced line by line; a file's bytes go to `files/` (fsynced)
before the line that names them. Its first line says which store and run it is for and which
process writes it (pid, the process's start time, the boot and the host), so `make sync-runs`
can tell a live writer, left alone, from a dead one. The sending thread appends a
`{"sent": n}` line for each record the store took (no fsync: sending one again is harmless).

A log closed with records unsent keeps only those, as `records.json`; so does save_pending,
for records kept before they are sent (publish). The journal of a process that died is
turned into one too (adopt): what the store had not taken, oldest first (a partial last line,
the record the process died writing, is left out with a warning), then a "killed" record that
marks the run KILLED when it is still RUNNING, since nobody else will end it. The folder is
its owner's alone, and the store's URI is saved without its password.
"""

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from mnist_dense.files import TEMP_PREFIX, atomic_path, fsync_folder, private_folder, write_private
from mnist_dense.tracking.provenance import project_root
from mnist_dense.tracking.records import (
    EndRecord,
    KilledRecord,
    Record,
    WithFile,
    from_json,
    send,
    to_json,
)
from mnist_dense.tracking.store import masked

PENDING_DIR = ".mlflow-pending"
JOURNAL = "journal.jsonl"  # a live (or crashed) RunLog's records, as they were made
RECORDS = "records.json"  # what is left to send of a log that was closed (or adopted)
FILES = "files"
JOURNAL_FORMAT = 1
SYNC_COMMAND = "make sync-runs"


def pending_root() -> Path:
    return project_root() / PENDING_DIR


class PendingError(Exception):
    """A kept log that cannot be sent as things are (the message says what to change)."""


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


def _line(entry: dict[str, Any]) -> bytes:
    return (json.dumps(entry, separators=(",", ":")) + "\n").encode()


def _saved(uri: str, run_id: str, records: list[Record]) -> dict[str, Any]:
    """records.json's content; the store's URI without its password."""
    return {"uri": masked(uri), "run_id": run_id, "records": [to_json(r) for r in records]}


def _write_records(folder: Path, saved: dict[str, Any]) -> None:
    write_private(folder / RECORDS, json.dumps(saved, indent=2) + "\n")


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
            write_private(temp / JOURNAL, _line(header))
        return cls(folder, os.open(folder / JOURNAL, os.O_WRONLY | os.O_APPEND))

    def record(self, seq: int, record: Record, files: dict[str, bytes]) -> None:
        """Append record number `seq`, on disk when this returns; its file's bytes first."""
        if isinstance(record, WithFile):
            write_private(self.folder / FILES / record.key, files[record.key])
        self._append(_line({"seq": seq, "record": to_json(record)}), sync=True)

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

    def settle(self, uri: str, run_id: str, unsent: list[Record]) -> Path:
        """Keep only what is left to send, as `records.json` (written, fsynced, then the
        journal removed), for `make sync-runs`; the files no record needs go too."""
        self.close()
        _keep_records(self.folder, uri, run_id, unsent)
        return self.folder


def _keep_records(folder: Path, uri: str, run_id: str, records: list[Record]) -> None:
    """Replace a journal by records.json holding `records`, dropping the files they do not
    need. A crash before the journal is removed leaves both: records.json wins."""
    _write_records(folder, _saved(uri, run_id, records))
    (folder / JOURNAL).unlink(missing_ok=True)
    needed = {record.key for record in records if isinstance(record, WithFile)}
    for path in (folder / FILES).iterdir():
        if path.name not in needed:
            path.unlink()
    fsync_folder(folder)


def read_journal(folder: Path) -> tuple[dict[str, Any], list[Record], list[str]]:
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
    unsent = [from_json(records[seq]) for seq in sorted(records) if seq not in sent]
    return header, unsent, warnings


def adopt(folder: Path) -> tuple[dict[str, Any], list[Record], list[str]]:
    """Take over the journal of a process that died: keep what the store did not take as
    records.json, followed by a KilledRecord when the process never ended its run (it marks
    the run KILLED if still RUNNING, once the rest is sent). The journal's first line, the
    records kept and warnings (read_journal)."""
    header, records, warnings = read_journal(folder)
    if not _ended(folder):
        records.append(KilledRecord())
    _keep_records(folder, header["uri"], header["run_id"], records)
    return header, records, warnings


def _ended(folder: Path) -> bool:
    """Whether a journal holds its run's end, sent or not (a partial or unreadable line
    left out)."""
    for line in (folder / JOURNAL).read_bytes().split(b"\n")[:-1]:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if "seq" in entry and entry["record"]["kind"] == EndRecord.kind:
            return True
    return False


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


# Logs kept before they are sent, and sending what was kept ---------------------------------


def save_pending(
    uri: str,
    run_id: str,
    records: list[Record],
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
            if isinstance(record, WithFile):
                write_private(temp / FILES / record.key, files[record.key])
        saved = _saved(uri, run_id, records)
        if writer:
            saved["writer"] = writer
        _write_records(temp, saved)
    return folder


def release(folder: Path) -> None:
    """Leave a folder save_pending wrote with a writer to `make sync-runs`, even while its
    writer still runs."""
    saved = json.loads((folder / RECORDS).read_text())
    saved.pop("writer", None)
    _write_records(folder, saved)


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


def send_pending(folder: Path) -> int:
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
            send(client, saved["run_id"], from_json(record), files)
        except Exception:
            left = {key: value for key, value in saved.items() if key != "writer"}
            left["records"] = records[sent:]
            _write_records(folder, left)
            raise
    shutil.rmtree(folder)
    return len(records)
