"""Running DVC's experiment queue to the end: the presets table, bench-tune and the tests."""

import re
import subprocess
import time
from pathlib import Path

from tooling.processes import ServiceError


def run_queue(dvc: str, jobs: int, cwd: Path, env: dict | None = None, timeout: float = 0) -> str:
    """Run every queued DVC experiment on `jobs` workers and wait until none is queued or
    running (at most `timeout` seconds, 0: no limit); stop the workers; the final
    `dvc queue status`. Workers are started with their output in a file, never a pipe: they
    inherit it, and a caller reading that pipe would wait as long as an idle worker stays up."""
    folder = Path(cwd) / ".dvc" / "tmp"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "queue-start.log", "w+") as log:
        started = subprocess.run(
            [dvc, "queue", "start", "-j", str(jobs)], cwd=cwd, env=env, stdout=log, stderr=log
        )
        log.seek(0)
        if started.returncode != 0:
            raise ServiceError(f"dvc queue start failed: {log.read().strip()}")
    deadline = time.monotonic() + timeout
    try:
        while True:
            status = subprocess.run(
                [dvc, "queue", "status"], cwd=cwd, env=env, capture_output=True, text=True
            ).stdout
            if not re.search(r"\b(Queued|Running)\b", status):
                return status
            if timeout and time.monotonic() > deadline:
                raise ServiceError(f"the DVC queue did not finish in {timeout:.0f} s")
            time.sleep(2)
    finally:
        subprocess.run([dvc, "queue", "stop"], cwd=cwd, env=env, capture_output=True, timeout=120)
