"""Send the run logs kept in .mlflow-pending/ while the tracking store was unreachable.

    make sync-runs          (or: python -m commands.sync_runs)

A stage that outlived a tracking outage wrote its outputs as usual and kept what it could not
log in `.mlflow-pending/<time>-<run id>/`; this sends each such log to the store it was meant
for, in the order it was made, and removes it once every record went through. Run it again after a
failure: it resumes where it stopped.
"""

import sys

from mnist_dense import publish
from mnist_dense.cli import PipelineError, first_line, run
from mnist_dense.run_log import SENDERS, pending_root, send_pending


def main() -> None:
    folders = sorted(p for p in pending_root().glob("*") if (p / "records.json").is_file())
    if not folders:
        print(f"nothing to send: no run logs in {pending_root()}")
        return
    failed = 0
    for folder in folders:
        try:
            sent = send_pending(folder, SENDERS | publish.SENDERS)
            print(f"{folder.name}: {sent} records sent")
        except Exception as error:  # one line per run that could not be sent
            failed += 1
            print(
                f"error: run {folder.name}: not sent ({first_line(error, limit=1000)}); "
                f"kept in {folder}",
                file=sys.stderr,
            )
    if failed:
        raise PipelineError(
            f"{failed} of {len(folders)} run logs not sent; run `make sync-runs` again"
        )


if __name__ == "__main__":
    run(main)
