"""Start the MLflow UI or tracking server, opening on this project's training runs.

    python -m commands.ui --port 5000              (make ui)
    python -m commands.ui --serve --port 5002      (make mlflow-server)

The store is MLFLOW_BACKEND_STORE_URI, else the project's own (mnist_dense/tracking/store.py); a
server's artifacts go to MLFLOW_ARTIFACTS_DESTINATION, else ./mlartifacts. Both are read from
the environment, so no password appears on a command line. The first line printed is the
address of experiment `mnist-dense` (MLFLOW_EXPERIMENT_NAME) in the runs view; MLflow 3's UI
opens on its GenAI view otherwise. Where a desktop browser exists the address is opened in it.
Then `mlflow ui` or `mlflow server` takes over the process, on 127.0.0.1 unless --host says
otherwise.

Neither asks who you are: whoever reaches the port may write runs and move the `champion`
alias, whose version the served model runs. So the tracking server (--serve) listens on a
loopback address only (127.0.0.1, ::1, localhost); a server others share is the team stack's,
which asks for credentials (make team-up, docs/team.md). The UI takes another --host only with
--public-because "why", a reason said out loud rather than a flag typed by habit.
"""

import argparse
import os
import sys
import webbrowser

from mlflow.tracking import MlflowClient

from mnist_dense.errors import PipelineError
from mnist_dense.runtime.cli import run
from mnist_dense.tracking import store
from tooling.processes import is_loopback, tool


def has_desktop() -> bool:
    return sys.platform == "darwin" or bool(
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    )


def check_host(host: str, serve: bool, public_because: str | None) -> None:
    """Refuse a host other machines could reach, before anything starts (one line)."""
    if is_loopback(host):
        return
    if serve:
        raise PipelineError(
            f"--host {host}: `make mlflow-server` asks no one for credentials, so it listens on "
            "127.0.0.1, ::1 or localhost only; for a server others use, run the team stack "
            "(make team-up, docs/team.md)"
        )
    if not (public_because or "").strip():
        raise PipelineError(
            f"--host {host}: the UI asks no one for credentials and anyone who reaches it can "
            'move the champion; say why it must be reachable with --public-because "..." '
            "(or use the team stack: make team-up, docs/team.md)"
        )
    print(f"warning: the UI on {host}, unauthenticated, because: {public_because}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m commands.ui", description=__doc__)
    parser.add_argument("--serve", action="store_true", help="a tracking server, not the UI only")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument(
        "--public-because", metavar="WHY", help="the UI only: why a non-loopback --host"
    )
    args = parser.parse_args()
    check_host(args.host, args.serve, args.public_because)
    # From the environment, never the command line, where any user could read a password.
    backend = os.environ.get("MLFLOW_BACKEND_STORE_URI") or store.tracking_uri()
    if backend.startswith(("http://", "https://")):
        raise PipelineError(
            f"{store.masked(backend)}: is a tracking server already; open it in a browser"
        )
    # Created in the store before the server starts; a server proxies artifacts itself.
    location = f"mlflow-artifacts:/{store.experiment_name()}" if args.serve else None
    experiment = store.experiment_id(MlflowClient(backend), store.experiment_name(), location)
    url = store.ui_url(f"http://{args.host}:{args.port}", experiment)
    print(url, flush=True)
    if has_desktop():
        webbrowser.open(url)
    mlflow = tool("mlflow")
    command = [mlflow, "server" if args.serve else "ui", "--host", args.host]
    command += ["--port", str(args.port)]
    # a server takes MLflow's 4 workers; one person's UI needs one, which starts far sooner
    command += ["--serve-artifacts"] if args.serve else ["--workers", "1"]
    os.execve(mlflow, command, os.environ | {"MLFLOW_BACKEND_STORE_URI": backend})


if __name__ == "__main__":
    run(main)
