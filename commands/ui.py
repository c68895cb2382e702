"""Start the MLflow UI or tracking server, opening on this project's training runs.

    python -m commands.ui --port 5000                         (make ui)
    python -m commands.ui --serve --port 5002 --backend-store-uri URI --artifacts-destination DEST
                                                              (make mlflow-server)

The first line printed is the address of experiment `mnist-dense` (MLFLOW_EXPERIMENT_NAME) in
the runs view; MLflow 3's UI opens on its GenAI view otherwise. Where a desktop browser exists
the address is opened in it. Then `mlflow ui` or `mlflow server` takes over the process, on
127.0.0.1 unless --host says otherwise.
"""

import argparse
import os
import shutil
import sys
import webbrowser

from mlflow.tracking import MlflowClient

from mnist_dense import tracking
from mnist_dense.cli import PipelineError, run


def has_desktop() -> bool:
    return sys.platform == "darwin" or bool(
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m commands.ui", description=__doc__)
    parser.add_argument("--serve", action="store_true", help="a tracking server, not the UI only")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--backend-store-uri", default=None, help="default: the project's store")
    parser.add_argument("--artifacts-destination", default=None)
    args = parser.parse_args()
    store = args.backend_store_uri or tracking.tracking_uri()
    if store.startswith(("http://", "https://")):
        raise PipelineError(f"{store}: is a tracking server already; open it in a browser")
    # Created in the store before the server starts; a server proxies artifacts itself.
    location = f"mlflow-artifacts:/{tracking.experiment_name()}" if args.serve else None
    experiment = tracking.experiment_id(MlflowClient(store), tracking.experiment_name(), location)
    url = tracking.ui_url(f"http://{args.host}:{args.port}", experiment)
    print(url, flush=True)
    if has_desktop():
        webbrowser.open(url)
    mlflow = shutil.which("mlflow", path=os.path.dirname(sys.executable)) or "mlflow"
    command = [mlflow, "server" if args.serve else "ui", "--backend-store-uri", store]
    command += ["--host", args.host, "--port", str(args.port)]
    if args.serve:
        command += ["--serve-artifacts"]
        if args.artifacts_destination:
            command += ["--artifacts-destination", args.artifacts_destination]
    os.execv(mlflow, command)


if __name__ == "__main__":
    run(main)
