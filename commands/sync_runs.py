"""Send the run logs kept in .mlflow-pending/ while the tracking store was unreachable.

    make sync-runs          (or: python -m commands.sync_runs)

A stage that outlived a tracking outage wrote its outputs as usual and kept what it could not
log in `.mlflow-pending/<time>-<run id>/`; this sends each such log to the store it was meant
for, in the order it was made, and removes it once every record went through. Run it again after a
failure: it resumes where it stopped.

A stage killed outright (SIGKILL, the out-of-memory killer, a power cut) left its journal
instead (mnist_dense/tracking/journal.py): when the process that wrote it is gone, its
records that the store had not taken are sent and its run, if still RUNNING, is marked KILLED;
a journal whose process still runs (a training in progress) is left alone, since it is still
being written.
"""

import sys
from pathlib import Path

from mnist_dense.errors import PipelineError, first_line
from mnist_dense.files import TEMP_PREFIX
from mnist_dense.runtime.cli import run
from mnist_dense.tracking import (
    publish,  # noqa: F401  (adds the publish kind to records.KINDS)
    store,
)
from mnist_dense.tracking.journal import (
    JOURNAL,
    RECORDS,
    adopt,
    pending_busy,
    pending_root,
    send_pending,
)
from mnist_dense.tracking.records import KilledRecord
from mnist_dense.tracking.store import scrubbed


def main() -> None:
    folders = sorted(
        p
        for p in pending_root().glob("*")
        if not p.name.startswith(TEMP_PREFIX)  # one being written, or left by a kill mid-write
        and ((p / RECORDS).is_file() or (p / JOURNAL).is_file())
    )
    if not folders:
        print(f"nothing to send: no run logs in {pending_root()}")
        return
    failed = 0
    for folder in folders:
        try:
            busy = pending_busy(folder)
            if busy:
                print(f"{folder.name}: left for a later `make sync-runs`: {busy}")
                continue
            if not (folder / RECORDS).is_file():
                _adopt(folder)
            sent = send_pending(folder)
            print(f"{folder.name}: {sent} records sent")
        except Exception as error:  # one line per run that could not be sent
            failed += 1
            print(
                f"error: run {folder.name}: not sent "
                f"({scrubbed(first_line(error, limit=1000), store.tracking_uri())}); "
                f"kept in {folder}",
                file=sys.stderr,
            )
    if failed:
        raise PipelineError(
            f"{failed} of {len(folders)} run logs not sent; run `make sync-runs` again"
        )


def _adopt(folder: Path) -> None:
    """Take over the journal of a process that died, saying so."""
    header, records, warnings = adopt(folder)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    writer = header.get("writer") or {}
    killed = [record for record in records if isinstance(record, KilledRecord)]
    unsent = len(records) - len(killed)
    ending = f", then run {header['run_id']} marked KILLED if still RUNNING" if killed else ""
    print(
        f"{folder.name}: process {writer.get('pid')} died leaving {unsent} records of its "
        f"journal unsent; sending them{ending}"
    )


if __name__ == "__main__":
    run(main)
