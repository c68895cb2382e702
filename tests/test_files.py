import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from mnist_dense.errors import PipelineError
from mnist_dense.files import (
    atomic_path,
    load_arrays,
    private_folder,
    save_arrays,
    write_private,
    write_text,
)
from tests.conftest import ROOT
from tests.imports import PACKAGES


def test_output_appears_only_when_complete(tmp_path):
    target = tmp_path / "out" / "model.keras"
    with atomic_path(target) as temp:
        assert temp.parent == target.parent  # same folder: the rename is atomic
        assert temp.name.startswith(".tmp-") and temp.suffix == ".keras"
        temp.write_text("complete")
        assert not target.exists()
    assert target.read_text() == "complete"
    assert [p.name for p in target.parent.iterdir()] == ["model.keras"]


@pytest.mark.parametrize("failure", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_failure_mid_write_keeps_the_old_output_and_no_temporary(tmp_path, failure):
    target = tmp_path / "train.json"
    write_text(target, "old")
    with pytest.raises(type(failure)), atomic_path(target) as temp:
        temp.write_text("half")
        raise failure
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["train.json"]


def test_interrupted_folder_write_leaves_no_partial_folder(tmp_path, monkeypatch):
    calls = []

    def save_then_interrupt(path, array, allow_pickle):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        with open(path, "wb") as stream:
            np.lib.format.write_array(stream, array, allow_pickle=allow_pickle)

    monkeypatch.setattr(np, "save", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        save_arrays(tmp_path / "processed", {"a": np.zeros(3), "b": np.ones(3)})
    assert list(tmp_path.iterdir()) == []


def test_folder_output_is_replaced_as_a_whole(tmp_path):
    save_arrays(tmp_path / "processed", {"a": np.zeros(3), "old": np.ones(2)})
    save_arrays(tmp_path / "processed", {"a": np.arange(4)})
    assert sorted(p.name for p in (tmp_path / "processed").iterdir()) == ["a.npy"]
    assert load_arrays(tmp_path / "processed", ["a"])["a"].tolist() == [0, 1, 2, 3]


def test_temporaries_of_a_killed_process_are_removed_on_the_next_write(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    stale = tmp_path / f".tmp-{dead.stdout.strip()}-model.keras"
    stale.write_text("partial")
    mine = tmp_path / f".tmp-{os.getppid()}-model.keras"  # a live process: left alone
    mine.write_text("in progress")
    write_text(tmp_path / "model.keras", "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == [mine.name, "model.keras"]


@pytest.fixture
def disk_events(monkeypatch) -> list[tuple[str, int]]:
    """What reaches the disk, in order: ("fsync", inode of the file or folder) for each fsync,
    ("rename", inode of what was renamed) for each os.replace."""
    events: list[tuple[str, int]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(descriptor: int) -> None:
        events.append(("fsync", os.fstat(descriptor).st_ino))
        real_fsync(descriptor)

    def replace(source, destination) -> None:
        events.append(("rename", os.lstat(source).st_ino))
        real_replace(source, destination)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


@pytest.mark.parametrize("writer", [write_text, write_private])
def test_a_file_written_atomically_is_fsynced_before_its_rename_and_its_folder_after(
    tmp_path, disk_events, writer
):
    """Without both, a power cut can leave the new name on an empty file, or the old file."""
    target = tmp_path / "stack.json"
    writer(target, "{}")
    file, folder = target.stat().st_ino, tmp_path.stat().st_ino
    rename = disk_events.index(("rename", file))
    assert ("fsync", file) in disk_events[:rename]
    assert ("fsync", folder) in disk_events[rename + 1 :]


def test_a_folder_written_atomically_has_every_file_fsynced_before_its_rename(
    tmp_path, disk_events
):
    save_arrays(tmp_path / "processed", {"a": np.zeros(3), "b": np.ones(3)})
    folder = tmp_path / "processed"
    rename = disk_events.index(("rename", folder.stat().st_ino))
    before = disk_events[:rename]
    for path in (folder / "a.npy", folder / "b.npy", folder):
        assert ("fsync", path.stat().st_ino) in before, path
    assert ("fsync", tmp_path.stat().st_ino) in disk_events[rename + 1 :]


def test_a_new_private_folder_is_fsynced_into_its_parent(tmp_path, disk_events):
    private_folder(tmp_path / "pending")
    assert disk_events == [("fsync", tmp_path.stat().st_ino)]


def test_pickled_arrays_are_refused(tmp_path):
    np.save(tmp_path / "x.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(PipelineError, match=r"x.npy: not a valid .npy array"):
        load_arrays(tmp_path, ["x"])


def calls_in_code(name: str) -> list[str]:
    return [
        line.strip()
        for folder in PACKAGES
        for path in (ROOT / folder).rglob("*.py")
        for line in path.read_text().splitlines()
        if f"{name}(" in line
    ]


def test_every_np_load_refuses_pickles_and_every_model_load_is_safe():
    assert calls_in_code("np.load")
    assert all("allow_pickle=False" in call for call in calls_in_code("np.load"))
    assert calls_in_code("keras.saving.load_model")
    assert all("safe_mode=True" in call for call in calls_in_code("keras.saving.load_model"))


WRITER = """
import sys
from pathlib import Path
from mnist_dense.runtime.cli import run
from mnist_dense.files import atomic_path

def main():
    with atomic_path(Path(sys.argv[1])) as temp, open(temp, "wb") as stream:
        for chunk in range(100_000):
            stream.write(b"x" * 4096)
            if chunk == 10:
                print("writing", flush=True)

run(main)
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_an_output_is_being_written_keeps_the_old_one(tmp_path, signum):
    """Ctrl-C in the middle of a write, not before it: the old output stays, complete."""
    target = tmp_path / "model.keras"
    write_text(target, "old, complete")
    process = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(target)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout.readline() == "writing\n"
    assert [p.name for p in tmp_path.glob(".tmp-*")]  # the write is under way
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signum, stderr
    assert "no partial output was left" in stderr
    assert target.read_text() == "old, complete"
    assert [p.name for p in tmp_path.iterdir()] == ["model.keras"]
