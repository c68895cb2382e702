"""Nothing kept is lost: every record a run logs is in an fsynced, append-only journal before
the call returns, and `make sync-runs` sends the journal of a process that died (a partial last
line left out, with a warning) and marks its run KILLED, while a live process's is left alone.

The journals here are written in this process, with the writer they name chosen by the test
(a dead pid, or this live process); tests/test_tracking_outage.py kills a real training.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from commands import sync_runs
from mnist_dense.tracking import run_log
from mnist_dense.tracking.journal import (
    FILES,
    JOURNAL,
    RECORDS,
    Journal,
    _process_state,
    adopt,
    pending_root,
    read_journal,
    this_process,
    writer_busy,
)
from mnist_dense.tracking.records import (
    EndRecord,
    FileRecord,
    InputsRecord,
    KilledRecord,
    MetricsRecord,
    TagsRecord,
)
from mnist_dense.tracking.run_log import RunLog

DOWN = "http://127.0.0.1:9"  # a store the tests never reach: run_log.send is made to fail


@pytest.fixture
def in_project(tmp_path, monkeypatch) -> Path:
    """An empty project folder as the working folder, no store set in the environment."""
    monkeypatch.chdir(tmp_path)
    for variable in list(os.environ):
        if variable.startswith(("MLFLOW_", "DVC_")):
            monkeypatch.delenv(variable)
    return tmp_path


@pytest.fixture
def store_down(monkeypatch) -> None:
    """Every record a RunLog sends fails at once, as with a server that is down."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise ConnectionError("Connection refused")

    monkeypatch.setattr(run_log, "send", refuse)


@pytest.fixture
def store(in_project) -> tuple[str, MlflowClient, str]:
    """A SQLite store in the project, holding one RUNNING run: its URI, a client, the run id."""
    uri = f"sqlite:///{in_project / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("journal")
    return uri, client, client.create_run(experiment).info.run_id


def dead_writer() -> dict[str, object]:
    """The identity of a process that has exited (and been reaped)."""
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return this_process() | {"pid": int(gone.stdout), "started": "long ago"}


def metrics(step: int) -> MetricsRecord:
    return MetricsRecord({"val_accuracy": step / 10}, step=step, timestamp=step)


def steps(client: MlflowClient, run_id: str) -> list[int]:
    return [m.step for m in client.get_metric_history(run_id, "val_accuracy")]


# Writing ---------------------------------------------------------------------------------------


def test_every_record_is_fsynced_into_the_journal_before_the_call_returns(
    in_project, store_down, monkeypatch
):
    synced: list[tuple[int, int]] = []  # (inode, size) of each file at each fsync
    real_fsync = os.fsync

    def recording_fsync(descriptor: int) -> None:
        status = os.fstat(descriptor)
        synced.append((status.st_ino, status.st_size))
        real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    log = RunLog(DOWN, "0" * 32)
    try:
        (folder,) = pending_root().iterdir()
        journal = folder / JOURNAL
        log.metrics({"val_accuracy": 0.5}, step=1)
        on_disk = journal.stat()
        assert (on_disk.st_ino, on_disk.st_size) in synced  # the whole file, this line included
        assert json.loads(journal.read_text().splitlines()[-1])["record"]["step"] == 1

        log.file(b"png bytes", "figures/curves.png")
        (blob,) = (folder / FILES).iterdir()
        assert blob.read_bytes() == b"png bytes"
        assert (blob.stat().st_ino, len(b"png bytes")) in synced  # its bytes before its line
        on_disk = journal.stat()
        assert (on_disk.st_ino, on_disk.st_size) in synced
    finally:
        log.close(wait_s=0)


def test_the_journal_is_only_appended_to(in_project, store_down):
    log = RunLog(DOWN, "0" * 32)
    try:
        (folder,) = pending_root().iterdir()
        journal = folder / JOURNAL
        before, inode = journal.read_bytes(), journal.stat().st_ino
        for step in range(1, 4):
            log.metrics({"val_accuracy": step / 10}, step=step)
            after = journal.read_bytes()
            assert after.startswith(before) and len(after) > len(before)
            assert journal.stat().st_ino == inode  # the same file: never replaced
            before = after
        header, records, warnings = read_journal(folder)
        assert header["run_id"] == "0" * 32 and header["writer"]["pid"] == os.getpid()
        assert [r.step for r in records] == [1, 2, 3] and warnings == []
    finally:
        log.close(wait_s=0)
    # closed with records unsent: only what is left, as records.json; the journal is gone
    assert sorted(p.name for p in folder.iterdir()) == [FILES, RECORDS]


def test_a_log_the_store_took_entirely_leaves_no_journal(store):
    uri, client, run_id = store
    log = RunLog(uri, run_id)
    log.metrics({"val_accuracy": 0.5}, step=1)
    log.finish("FINISHED")
    assert log.close() is True
    assert list(pending_root().iterdir()) == []
    assert steps(client, run_id) == [1]


def test_a_torn_last_line_is_left_out_with_a_warning_and_sent_records_are_not_sent_again(
    in_project,
):
    journal = Journal.create(DOWN, "0" * 32, writer=dead_writer())
    for seq in range(3):
        journal.record(seq, metrics(seq + 1), {})
    journal.sent(0)
    journal.close()
    with open(journal.folder / JOURNAL, "ab") as torn:  # the process died in mid-line
        torn.write(b'{"seq":3,"record":{"kind":"metr')
    _, records, warnings = read_journal(journal.folder)
    assert records == [metrics(2), metrics(3)]
    (warning,) = warnings
    assert "left out a partial last line (31 bytes)" in warning


# Each kind of record on disk: {"kind": ..., its fields}, as kept logs already hold them
SAVED = [
    {"kind": "metrics", "values": {"val_accuracy": 0.5}, "step": 1, "timestamp": 1700000000000},
    {"kind": "tags", "tags": {"git.commit": "abc"}},
    {"kind": "file", "key": "0-curves.png", "artifact_file": "figures/curves.png"},
    {
        "kind": "inputs",
        "datasets": [
            {"name": "mnist-train", "digest": "d", "source": "s", "context": "training",
             "profile": '{"num_rows": 2}'}
        ],
    },
    {"kind": "end", "status": "FINISHED"},
]  # fmt: skip
TYPED = [
    MetricsRecord({"val_accuracy": 0.5}, step=1, timestamp=1700000000000),
    TagsRecord({"git.commit": "abc"}),
    FileRecord(key="0-curves.png", artifact_file="figures/curves.png"),
    InputsRecord(
        [{"name": "mnist-train", "digest": "d", "source": "s", "context": "training",
          "profile": '{"num_rows": 2}'}]
    ),
    EndRecord("FINISHED"),
]  # fmt: skip


def test_records_are_kept_and_read_back_in_the_journals_json_format(in_project):
    journal = Journal.create(DOWN, "0" * 32, writer=dead_writer())
    for seq, record in enumerate(TYPED):
        journal.record(seq, record, {"0-curves.png": b"png bytes"})
    journal.close()
    lines = (journal.folder / JOURNAL).read_text().splitlines()
    assert [json.loads(line) for line in lines[1:]] == [
        {"seq": seq, "record": saved} for seq, saved in enumerate(SAVED)
    ]
    assert lines[1] == json.dumps({"seq": 0, "record": SAVED[0]}, separators=(",", ":"))
    _, records, _ = read_journal(journal.folder)
    assert records == TYPED

    # without its last line, the run's end: a process that died before it ended its run
    with open(journal.folder / JOURNAL, "w") as rewritten:
        rewritten.write("\n".join(lines[:-1]) + "\n")
    _, kept, _ = adopt(journal.folder)
    assert kept == [*TYPED[:-1], KilledRecord()]
    saved = json.loads((journal.folder / RECORDS).read_text())
    assert saved["records"] == [*SAVED[:-1], {"kind": "killed"}]
    assert [p.name for p in (journal.folder / FILES).iterdir()] == ["0-curves.png"]


# Sending the journal of a process that died ------------------------------------------------


def test_a_dead_processs_journal_is_sent_and_its_run_marked_killed(store, call_main):
    uri, client, run_id = store
    journal = Journal.create(uri, run_id, writer=dead_writer())
    journal.record(0, metrics(1), {})
    client.log_metric(run_id, "val_accuracy", 0.1, timestamp=1, step=1)  # the store took it...
    journal.sent(0)  # ...and said so
    journal.record(1, metrics(2), {})
    file_record = FileRecord(key="0-curves.png", artifact_file="figures/curves.png")
    journal.record(2, file_record, {"0-curves.png": b"png bytes"})
    journal.record(3, metrics(3), {})
    journal.close()
    with open(journal.folder / JOURNAL, "ab") as torn:
        torn.write(b'{"seq":4,"rec')
    assert client.get_run(run_id).info.status == "RUNNING"

    result = call_main(sync_runs.main)
    assert result.code == 0, result.err
    assert "left out a partial last line" in result.err
    assert f"then run {run_id} marked KILLED if still RUNNING" in result.out
    assert steps(client, run_id) == [1, 2, 3]
    assert client.get_run(run_id).info.status == "KILLED"
    assert [a.path for a in client.list_artifacts(run_id, "figures")] == ["figures/curves.png"]
    assert list(pending_root().iterdir()) == []


@pytest.mark.parametrize(
    ("journaled_end", "stored_status", "final"),
    [
        ("FINISHED", "RUNNING", "FINISHED"),  # it ended the run, the store had not heard yet
        (None, "FINISHED", "FINISHED"),  # evaluate's log: the training had ended the run
    ],
)
def test_a_run_that_was_ended_is_not_marked_killed(
    store, call_main, journaled_end, stored_status, final
):
    uri, client, run_id = store
    if stored_status != "RUNNING":
        client.set_terminated(run_id, stored_status)
    journal = Journal.create(uri, run_id, writer=dead_writer())
    journal.record(0, metrics(1), {})
    if journaled_end:
        journal.record(1, EndRecord(journaled_end), {})
    journal.close()
    result = call_main(sync_runs.main)
    assert result.code == 0, result.err
    assert client.get_run(run_id).info.status == final
    assert steps(client, run_id) == [1]


def test_a_journal_whose_process_still_runs_is_left_alone(store, call_main):
    uri, client, run_id = store
    journal = Journal.create(uri, run_id)  # written by this process, which is alive
    journal.record(0, metrics(1), {})
    before = (journal.folder / JOURNAL).read_bytes()
    try:
        result = call_main(sync_runs.main)
    finally:
        journal.close()
    assert result.code == 0, result.err
    assert f"process {os.getpid()} is still writing it" in result.out
    assert (journal.folder / JOURNAL).read_bytes() == before
    assert not (journal.folder / RECORDS).exists()
    assert client.get_run(run_id).info.status == "RUNNING" and steps(client, run_id) == []


def test_a_reused_pid_a_reboot_or_a_zombie_is_no_live_writer():
    me = this_process()
    assert writer_busy(me) == f"process {os.getpid()} is still writing it"
    assert writer_busy(me | {"started": "earlier"}) is None  # the pid now names another process
    if me["boot"]:
        assert writer_busy(me | {"boot": "another boot"}) is None
    assert writer_busy(me | {"host": "elsewhere"}).startswith(
        f"written by process {os.getpid()} on host elsewhere"
    )
    assert writer_busy(dead_writer()) is None
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        started = _process_state(child.pid)[1]
        assert writer_busy(me | {"pid": child.pid, "started": started}) is not None
        os.kill(child.pid, signal.SIGKILL)  # not yet reaped: a zombie, dead all the same
        deadline = time.monotonic() + 10
        while _process_state(child.pid)[0] != "Z" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert writer_busy(me | {"pid": child.pid, "started": started}) is None
    finally:
        child.kill()
        child.wait()
