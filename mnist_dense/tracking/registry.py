"""The model registry: every evaluated model is a version of `mnist-dense`; the alias
`champion` marks the one to use, and moves only by a fair comparison or by a person.

The rule (docs/tracking.md): a new version takes `champion` when its validation accuracy is
higher than the champion's **on the same validation digits** (the same raw files and the same
validation indices: mnist_dense/tracking/runs.py, validation_set; each model sees them normalized
as it was trained, as predict does); a tie keeps the champion. Every preset validates on the
same digits (presets.yaml), so the best of them becomes the champion by this rule. Versions
validated on other digits (another split, another `val_fraction`) are not compared
automatically, since their validation accuracies measure different things; the reason is
recorded on the version and a person can
promote it (`python -m commands.registry promote VERSION --why ...`). The test accuracy is
recorded on every version but never chooses: choosing on it would make the test set a
selection set.

The rule checks rather than believes: anyone who can write to the store can tag a version, so
before the alias moves, the candidate and the champion are both scored again on those
validation digits from their weights (tracking/validation_digits.py), the champion's weights
fetched only after their sha256 matched the one evaluate recorded (served_model.weights_of).
A champion whose weights cannot be fetched or checked cannot defend the title; a candidate
that cannot be scored never takes it, so a `nan` is never compared. The alias moves first and
the decision is tagged after, so an attempt cut off in between is decided again.

The decision is made under a lock: a file lock beside a local store, and a check-and-retry on a
remote one, so two queue workers evaluating at once keep both versions and one champion.
"""

import getpass
import math
import os
import tempfile
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mnist_dense.serving.served_model import UntrustedModel, weights_of
from mnist_dense.tracking.provenance import project_root
from mnist_dense.tracking.store import is_local

MODEL_NAME = "mnist-dense"
ALIAS = "champion"
SELECTION_TAG = "validation.digest"  # the validation data set a version was chosen on
LOCK_TIMEOUT_S = 120
Scorer = Callable[[Path], float]  # a .keras file -> its accuracy on the validation digits


@dataclass
class Standing:
    """What the rule compares: a version's validation accuracy, measured from its weights
    (nan when they could not be, with the reason in `problem`), and the data it names."""

    version: str
    val_accuracy: float
    validation: str
    problem: str = ""


def scored(
    client: MlflowClient, version: ModelVersion, score: Scorer, weights: Path | None = None
) -> Standing:
    """The version's standing, from `weights` (a file at hand) or from its checked weights."""
    validation = version.tags.get(SELECTION_TAG, "")
    try:
        if weights is not None:
            return Standing(version.version, score(weights), validation)
        with tempfile.TemporaryDirectory(prefix="mnist-champion-") as folder:
            accuracy = score(weights_of(client, version, Path(folder)))
        return Standing(version.version, accuracy, validation)
    except (UntrustedModel, MlflowException, OSError, ValueError) as error:
        problem = str(error).splitlines()[0] if str(error) else type(error).__name__
        return Standing(version.version, math.nan, validation, problem)


def decide(challenger: Standing, champion: Standing | None) -> tuple[bool, str]:
    """Whether `challenger` takes the alias from `champion`, and why (recorded on the version)."""
    if math.isnan(challenger.val_accuracy):
        return (
            False,
            f"not compared: its validation accuracy could not be measured ({challenger.problem})",
        )
    if champion is None:
        return True, "promoted: the first version"
    if challenger.validation != champion.validation:
        return False, (
            f"not compared with champion version {champion.version}: validated on other data "
            f"({challenger.validation} against {champion.validation}); promote by hand if wanted"
        )
    if math.isnan(champion.val_accuracy):
        return True, (
            f"promoted: champion version {champion.version} could not be scored from its "
            f"weights ({champion.problem})"
        )
    if challenger.val_accuracy > champion.val_accuracy:
        return True, (
            f"promoted: val_accuracy {challenger.val_accuracy:.4f} > {champion.val_accuracy:.4f} "
            f"of version {champion.version} on the same validation set"
        )
    return False, (
        f"kept version {champion.version}: val_accuracy {challenger.val_accuracy:.4f} <= "
        f"{champion.val_accuracy:.4f} on the same validation set (ties keep the champion)"
    )


def champion(client: MlflowClient) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(MODEL_NAME, ALIAS)
    except MlflowException:
        return None


def register(
    client: MlflowClient, run_id: str, model_id: str, tags: dict[str, str]
) -> ModelVersion:
    """The run's logged model `model_id` as a version of MODEL_NAME, with `tags`: the version
    an earlier attempt made for the run, or a new one."""
    with suppress(MlflowException):  # it exists (perhaps created meanwhile by another worker)
        client.create_registered_model(
            MODEL_NAME,
            description="The dense MNIST classifier. Each version is a model the pipeline "
            f"evaluated; the alias `{ALIAS}` marks the one to use (see the project's README).",
        )
    earlier = client.search_model_versions(f"name = '{MODEL_NAME}' AND run_id = '{run_id}'")
    if earlier:
        return min(earlier, key=lambda version: int(version.version))
    return client.create_model_version(
        MODEL_NAME, f"models:/{model_id}", run_id=run_id, tags=tags, model_id=model_id
    )


def register_and_gate(
    client: MlflowClient,
    run_id: str,
    model_id: str,
    tags: dict[str, str],
    weights: Path,
    score: Scorer,
) -> str:
    """Register the run's model (its .keras file: `weights`) and apply the rule, scoring with
    `score` (once: a version decided before keeps its decision); the decision as recorded."""
    version = register(client, run_id, model_id, tags)
    if "champion.decision" in version.tags:
        return version.tags["champion.decision"]
    challenger = scored(client, version, score, weights)
    why = ""
    with _decision_lock(client):
        for _ in range(5):  # a remote store has no lock: re-check what another worker did
            incumbent = champion(client)
            if incumbent is not None and incumbent.version == version.version:
                why = why or "promoted (the alias had moved before the decision was recorded)"
                break
            defender = incumbent and scored(client, incumbent, score)
            promote, why = decide(challenger, defender)
            if not promote:
                break
            try:
                client.set_registered_model_alias(MODEL_NAME, ALIAS, version.version)
            except MlflowException as error:
                if error.error_code != "PERMISSION_DENIED":
                    raise
                why = _awaiting_release(why, version.version, client.tracking_uri)
                break
            if is_local(client.tracking_uri):
                break
            time.sleep(1.0)
        client.set_model_version_tag(MODEL_NAME, version.version, "champion.decision", why)
    return why


def _awaiting_release(why: str, version: str, uri: str) -> str:
    """The decision of a version the rule would promote, evaluated by someone the team's
    server does not let move the alias (docs/team.md: the release role)."""
    return (
        f"not promoted yet: {why.removeprefix('promoted: ')}, but {promoter(uri)} may not move "
        f"@{ALIAS} (the release role does: `make registry ARGS='promote {version} --why ...'`)"
    )


def promote_by_hand(client: MlflowClient, version: str, why: str) -> ModelVersion:
    """Move the alias to `version` because a person says so, once its weights are checked
    against their record (UntrustedModel otherwise); record who and why."""
    found = client.get_model_version(MODEL_NAME, version)
    with tempfile.TemporaryDirectory(prefix="mnist-promote-") as folder:
        weights_of(client, found, Path(folder))
    with _decision_lock(client):
        client.set_registered_model_alias(MODEL_NAME, ALIAS, found.version)
    who = promoter(client.tracking_uri)
    client.set_model_version_tag(MODEL_NAME, found.version, "promoted.by", who)
    client.set_model_version_tag(MODEL_NAME, found.version, "promoted.why", why)
    client.set_model_version_tag(
        MODEL_NAME, found.version, "champion.decision", f"promoted by hand by {who}: {why}"
    )
    return found


def promoter(uri: str) -> str:
    """Who moves the alias: on a tracking server, the user it authenticated (the request that
    moved the alias carried that user's password); on a local store, the account running this
    process, from its user id ($USER is whatever the caller sets)."""
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    if user and not is_local(uri):
        return user
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError):
        return getpass.getuser()


def _decision_lock(client: MlflowClient) -> FileLock:
    """A lock all workers of a local store share (beside the project's store)."""
    name = project_root() / "mlflow.db.registry.lock"
    return FileLock(str(name), timeout=LOCK_TIMEOUT_S)
