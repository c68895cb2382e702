"""Logging to one MLflow run without ever making training wait for the tracking store, and
without losing a record to a crash.

Each call (metrics of an epoch, tags, a file, the datasets, the run's end) becomes a record
(records.py) in an ordered queue that a background thread sends one by one. A record that
fails (a server being restarted, a store locked) is retried every RETRY_S until it goes
through, so a short outage loses nothing and costs the training loop no time; sending one
twice is harmless. Every record is also in the log's journal (journal.py) before the call
returns, so a process killed in an outage loses none.

`close()` waits up to MNIST_TRACKING_WAIT_S (default 30 s) for the rest; when everything went
it removes the journal, else it keeps only what is left to send, which `make sync-runs`
(commands/sync_runs.py) sends later.
"""

import os
import sys
import threading
import time
from collections import Counter, deque
from contextlib import suppress
from pathlib import Path

from mlflow.tracking import MlflowClient

from mnist_dense.errors import first_line
from mnist_dense.tracking.journal import SYNC_COMMAND, Journal, save_pending
from mnist_dense.tracking.records import (
    EndRecord,
    FileRecord,
    InputsRecord,
    MetricsRecord,
    Record,
    TagsRecord,
    send,
)
from mnist_dense.tracking.store import masked, scrubbed

RETRY_S = 2.0
WAIT_S = float(os.environ.get("MNIST_TRACKING_WAIT_S", "30"))


class RunLog:
    """An ordered, non-blocking log of one MLflow run, journaled (see the module's docstring)."""

    def __init__(self, uri: str, run_id: str) -> None:
        self.uri, self.run_id = uri, run_id
        # the records the store has not taken yet, oldest first
        self._records: deque[tuple[int, Record]] = deque()
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
        self._add(MetricsRecord(values, step, now))

    def tags(self, tags: dict[str, str]) -> None:
        self._add(TagsRecord(tags))

    def file(self, data: bytes, artifact_file: str) -> None:
        """A file's bytes as the artifact `artifact_file` (e.g. "figures/curves.png")."""
        key = f"{len(self._files)}-{Path(artifact_file).name}"
        self._files[key] = data
        self._add(FileRecord(key, artifact_file))

    def datasets(self, records: list[dict[str, str]]) -> None:
        """Dataset inputs (tracking.dataset_records): what data the run saw."""
        self._add(InputsRecord(records))

    def finish(self, status: str) -> None:
        self._add(EndRecord(status))

    # Sending -------------------------------------------------------------------------------

    def _add(self, record: Record) -> None:
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
                f"({scrubbed(first_line(error), self.uri)}); training goes on, the log is sent "
                "when the store is back",
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

    def datasets(self, records: list[dict[str, str]]) -> None:
        pass


def describe(records: list[Record]) -> str:
    """'12 metric records, 2 files, the run's status' for the records not yet sent."""
    count = Counter(type(record) for record in records)
    parts = []
    if count[MetricsRecord]:
        parts.append(f"{count[MetricsRecord]} metric records")
    if count[TagsRecord]:
        parts.append(f"{count[TagsRecord]} tag records")
    if count[FileRecord]:
        parts.append(f"{count[FileRecord]} files")
    if count[InputsRecord]:
        parts.append("the dataset inputs")
    if count[EndRecord]:
        parts.append("the run's status")
    return ", ".join(parts) or "nothing"
