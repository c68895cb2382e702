"""Serve a model over HTTP: a registered version's weights, this installation's code.

    python -m commands.serve                                  (make serve: the champion)
    python -m commands.serve --model models:/mnist-dense/3 --port 5001
    python -m commands.serve --model models/model.keras

Whoever can write to the tracking store can move `@champion` or register a version carrying
any code, and `mlflow models serve` runs the code a version carries. This server runs none of
it: it fetches the version's .keras file alone, refuses it unless its sha256 is the one
evaluate recorded on the version (mnist_dense/serving/served_model.py, weights_of), and loads it in
Keras' safe mode into the DigitReader of the installed project. It speaks MLflow's scoring
protocol (`/invocations` with `dataframe_records`, `/ping`), through MLflow's own scoring app,
with limits on what one request may ask: a body of at most MAX_BODY_BYTES and MAX_ROWS rows.
It listens on 127.0.0.1 unless --host names another address and --public-because says why.
"""

import argparse
import hashlib
import sys
import tempfile
import warnings
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

from mnist_dense.errors import PipelineError, first_line
from mnist_dense.runtime.cli import run
from mnist_dense.tracking.registry import ALIAS, MODEL_NAME
from tooling.processes import is_loopback

MAX_BODY_BYTES = 32 * 2**20  # several 8 MiB images, or MAX_ROWS rows of pixels, as JSON
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]


class BodyLimit:
    """ASGI middleware: a request whose body is over `limit` bytes gets 413 before the app
    reads it (by its Content-Length, or counted as it streams in)."""

    def __init__(self, app: Callable[..., Awaitable[None]], limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.limit:
            await self._refuse(send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise _TooLarge
            return message

        try:
            await self.app(scope, counted, send)
        except _TooLarge:
            await self._refuse(send)

    async def _refuse(self, send: Callable) -> None:
        body = (
            f'{{"error_code": "BAD_REQUEST", "message": "request body over {self.limit:,} bytes"}}'
        )
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body.encode()})


class _TooLarge(Exception):
    pass


def served_files(model: str, folder: Path) -> tuple[Path, str, str, str]:
    """The model's .keras file (checked), its kernel path, the run that made it, and how to
    name it to the user."""
    from mnist_dense.runtime import kernels

    path = Path(model)
    if model.endswith(".keras"):
        if not path.is_file():
            raise PipelineError(f"{model}: no such file; train it first (`make run`)")
        md5 = hashlib.md5(path.read_bytes()).hexdigest()
        return path, kernels.DEFAULT, "local file", f"{model} (md5 {md5})"
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from mnist_dense.serving.served_model import UntrustedModel, registered_version, weights_of
    from mnist_dense.tracking import store

    client = MlflowClient(store.connect())
    try:
        version = registered_version(client, model)
        if version is None:
            raise PipelineError(
                f"--model {model}: expected models:/{MODEL_NAME}@ALIAS, models:/{MODEL_NAME}/N "
                "or a .keras file"
            )
        weights = weights_of(client, version, folder)
        run = client.get_run(version.run_id) if version.run_id else None
    except (MlflowException, UntrustedModel) as error:
        raise PipelineError(f"{model}: {first_line(error)}") from None
    mode = run.data.params.get("train.kernels", kernels.DEFAULT) if run else kernels.DEFAULT
    if mode not in kernels.MODES:
        raise PipelineError(f"{model}: run {version.run_id} names no kernel path ({mode!r})")
    sha256 = version.tags["model.sha256"]
    name = f"{model} (version {version.version}, model.keras sha256 {sha256[:16]}...)"
    return weights, mode, str(version.run_id), name


def app_for(weights: Path, mode: str, run_id: str, folder: Path) -> Callable:
    """MLflow's scoring app around this project's DigitReader on `weights`, body-limited."""
    import mlflow
    from mlflow.pyfunc import scoring_server

    from mnist_dense.serving import served_model

    (folder / "kernels.txt").write_text(f"{mode}\n")
    (folder / "run.txt").write_text(f"{run_id}\n")
    saved = folder / "served"
    with warnings.catch_warnings():  # "no input example": the folder only lives to be loaded
        warnings.simplefilter("ignore", UserWarning)
        mlflow.pyfunc.save_model(  # our own model_code.py, copied from the installed package
            str(saved),
            python_model=str(Path(served_model.__file__).parent / "model_code.py"),
            artifacts={
                served_model.KERAS_ARTIFACT: str(weights),
                served_model.KERNELS_ARTIFACT: str(folder / "kernels.txt"),
                served_model.RUN_ARTIFACT: str(folder / "run.txt"),
            },
            signature=served_model.SIGNATURE,
            pip_requirements=[],
        )
    return BodyLimit(scoring_server.init(mlflow.pyfunc.load_model(str(saved))), MAX_BODY_BYTES)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m commands.serve", description=__doc__)
    parser.add_argument(
        "--model",
        default=f"models:/{MODEL_NAME}@{ALIAS}",
        help="models:/mnist-dense@ALIAS, models:/mnist-dense/N or a .keras file "
        "(default: %(default)s)",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5001)
    parser.add_argument(
        "--public-because", metavar="WHY", help="required to listen on a non-loopback host"
    )
    args = parser.parse_args(argv)
    if not is_loopback(args.host) and not args.public_because:
        raise PipelineError(
            f"--host {args.host}: the served model has no authentication, so it listens on "
            "127.0.0.1 only; put it behind an authenticating proxy, or say why with "
            "--public-because"
        )
    with tempfile.TemporaryDirectory(prefix="mnist-serve-") as name:
        folder = Path(name)
        weights, mode, run_id, described = served_files(args.model, folder)
        app = app_for(weights, mode, run_id, folder)
        print(f"serving {described} on http://{args.host}:{args.port}", flush=True)
        import uvicorn

        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    sys.exit(0)


if __name__ == "__main__":
    run(main)
