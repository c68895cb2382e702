"""What a run's log holds: one frozen dataclass per kind of record, and the one table that
says, for each kind, which class its saved form is read into and what sends it to the store.

The RunLog queues these records, the journal and records.json keep them (journal.py) and
`make sync-runs` sends what was kept, all through this table. On disk a record is the JSON
object `{"kind": <its kind>, <field>: <value>, ...}`: to_json and from_json convert at that
edge only, so the code handles typed records and a log kept by one version of it is read by
the next. Sending a record twice is harmless (metrics carry their own timestamps), which is
what lets a record be retried until the store takes it.

The publish kind's sender needs the registry and the served model, which a training never
loads (dvc.yaml lists exactly the code each stage imports): mnist_dense/tracking/publish.py
adds its kind to the table with register() when it is imported.
"""

import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, RunTag
from mlflow.tracking import MlflowClient


@dataclass(frozen=True)
class Record:
    """A record of a run's log; `kind` names its class on disk."""

    kind: ClassVar[str]


@dataclass(frozen=True)
class WithFile(Record):
    """A record that sends a file: `key` names its bytes among the log's files."""

    key: str


@dataclass(frozen=True)
class MetricsRecord(Record):
    kind: ClassVar[str] = "metrics"
    values: dict[str, float]
    step: int
    timestamp: int  # milliseconds, taken when it was logged, not when it is sent


@dataclass(frozen=True)
class TagsRecord(Record):
    kind: ClassVar[str] = "tags"
    tags: dict[str, str]


@dataclass(frozen=True)
class FileRecord(WithFile):
    kind: ClassVar[str] = "file"
    artifact_file: str  # its path among the run's artifacts, e.g. "figures/curves.png"


@dataclass(frozen=True)
class InputsRecord(Record):
    kind: ClassVar[str] = "inputs"
    datasets: list[dict[str, str]]  # runs.dataset_records: name, digest, source, context, profile


@dataclass(frozen=True)
class EndRecord(Record):
    kind: ClassVar[str] = "end"
    status: str


@dataclass(frozen=True)
class KilledRecord(Record):
    """The end of a run whose process died without one (journal.adopt)."""

    kind: ClassVar[str] = "killed"


R = TypeVar("R", bound=Record)
Sender = Callable[[MlflowClient, str, R, dict[str, bytes]], None]


def _send_metrics(
    client: MlflowClient, run_id: str, record: MetricsRecord, files: dict[str, bytes]
) -> None:
    metrics = [
        Metric(key, float(value), record.timestamp, record.step)
        for key, value in record.values.items()
    ]
    client.log_batch(run_id, metrics=metrics)


def _send_tags(
    client: MlflowClient, run_id: str, record: TagsRecord, files: dict[str, bytes]
) -> None:
    client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in record.tags.items()])


def _send_file(
    client: MlflowClient, run_id: str, record: FileRecord, files: dict[str, bytes]
) -> None:
    artifact = Path(record.artifact_file)
    with tempfile.TemporaryDirectory() as folder:
        local = Path(folder) / artifact.name
        local.write_bytes(files[record.key])
        client.log_artifact(run_id, str(local), str(artifact.parent) or None)


def _send_inputs(
    client: MlflowClient, run_id: str, record: InputsRecord, files: dict[str, bytes]
) -> None:
    inputs = [
        DatasetInput(
            Dataset(d["name"], d["digest"], "dvc", d["source"], profile=d["profile"]),
            tags=[InputTag("mlflow.data.context", d["context"])],
        )
        for d in record.datasets
    ]
    client.log_inputs(run_id, datasets=inputs)


def _send_end(
    client: MlflowClient, run_id: str, record: EndRecord, files: dict[str, bytes]
) -> None:
    client.set_terminated(run_id, record.status)


def _send_killed(
    client: MlflowClient, run_id: str, record: KilledRecord, files: dict[str, bytes]
) -> None:
    """KILLED, unless the run has ended meanwhile (another stage's log ended it, or a person
    did)."""
    if client.get_run(run_id).info.status == "RUNNING":
        client.set_terminated(run_id, "KILLED")


@dataclass(frozen=True)
class Kind(Generic[R]):
    """A kind of record: the class its saved form is read into, and what sends one."""

    record: type[R]
    sender: Sender[R]


KINDS: dict[str, Kind[Any]] = {
    kind.record.kind: kind
    for kind in (
        Kind(MetricsRecord, _send_metrics),
        Kind(TagsRecord, _send_tags),
        Kind(FileRecord, _send_file),
        Kind(InputsRecord, _send_inputs),
        Kind(EndRecord, _send_end),
        Kind(KilledRecord, _send_killed),
    )
}


def register(kind: Kind[Any]) -> None:
    """Add a kind whose sender needs more than a training loads (publish's; the module's
    docstring)."""
    KINDS[kind.record.kind] = kind


def _kind(name: str) -> Kind[Any]:
    kind = KINDS.get(name)
    if kind is None:
        raise ValueError(f"unknown record kind {name!r}")
    return kind


def to_json(record: Record) -> dict[str, Any]:
    """The record as the journal and records.json keep it: its kind, then its fields."""
    return {"kind": record.kind} | asdict(record)


def from_json(saved: dict[str, Any]) -> Record:
    """A record kept by to_json; ValueError for a kind this process has no class for."""
    fields = dict(saved)
    return _kind(fields.pop("kind")).record(**fields)


def send(client: MlflowClient, run_id: str, record: Record, files: dict[str, bytes]) -> None:
    """Send one record to the store (raises if the store does not take it)."""
    _kind(record.kind).sender(client, run_id, record, files)
