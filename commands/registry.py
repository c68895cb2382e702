"""The registered model `mnist-dense`: list its versions, or move `champion` by hand.

    python -m commands.registry list
    python -m commands.registry promote VERSION --why "reason, for the record"

Evaluate registers every model it scores and moves `champion` by the rule in
mnist_dense/tracking/registry.py (validation accuracy on the same validation set); `promote` is the
person's override, recorded on the version as `promoted.by` and `promoted.why`.
"""

import argparse

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mnist_dense.errors import PipelineError
from mnist_dense.runtime.cli import run
from mnist_dense.serving.served_model import UntrustedModel
from mnist_dense.tracking import store
from mnist_dense.tracking.registry import ALIAS, MODEL_NAME, champion, promote_by_hand


def listing(client: MlflowClient) -> list[str]:
    """One line per version, newest first: metrics, origin, and the decision recorded on it."""
    try:
        versions = client.search_model_versions(f"name='{MODEL_NAME}'")
    except MlflowException:
        versions = []
    if not versions:
        return [f"no versions of {MODEL_NAME} yet (evaluate registers each model it scores)"]
    current = champion(client)
    lines = []
    for version in sorted(versions, key=lambda v: int(v.version), reverse=True):
        tags = version.tags
        mark = f" @{ALIAS}" if current and current.version == version.version else ""
        lines.append(
            f"version {version.version}{mark}: run {tags.get('mlflow.run_name', version.run_id)}, "
            f"val_accuracy {float(tags.get('val_accuracy', 'nan')):.4f}, "
            f"test_accuracy {float(tags.get('test_accuracy', 'nan')):.4f}, "
            f"validation {tags.get('validation.digest', '?')[:12]}; "
            f"{tags.get('champion.decision', '')}"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m commands.registry", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list")
    promote = commands.add_parser("promote")
    promote.add_argument("version")
    promote.add_argument("--why", required=True, help="why this version, recorded on it")
    args = parser.parse_args()
    client = MlflowClient(store.connect())
    if args.command == "list":
        print("\n".join(listing(client)))
        return
    try:
        found = promote_by_hand(client, args.version, args.why)
    except MlflowException:
        raise PipelineError(f"{MODEL_NAME} has no version {args.version}") from None
    except UntrustedModel as error:
        raise PipelineError(f"not promoted: {error}") from None
    print(f"{MODEL_NAME} version {found.version} is now @{ALIAS}: {args.why}")


if __name__ == "__main__":
    run(main)
