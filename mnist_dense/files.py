"""Writing outputs safely: a temporary name beside the target, renamed into place when complete.

DVC caches whatever sits at an output path, so a crash or Ctrl-C must never leave a partial
file there: either the old complete output, no output, or the new complete output.
"""

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from mnist_dense.cli import PipelineError

TEMP_PREFIX = ".tmp-"  # git-ignored; a leftover only appears after a hard kill


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temporaries(path: Path) -> None:
    """Delete temporaries of `path` left by a process that was killed (SIGKILL) mid-write."""
    for temp in Path(path).parent.glob(f"{TEMP_PREFIX}*-{Path(path).name}"):
        pid = temp.name.removeprefix(TEMP_PREFIX).split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            _remove(temp)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path in `path`'s folder; move it to `path` only if the block succeeds.

    The temporary name (`.tmp-<pid>-<name>`) keeps the file's suffix, so writers that insist
    on one (Keras, NumPy) accept it. Works for a file or a folder.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    temp = path.with_name(f"{TEMP_PREFIX}{os.getpid()}-{path.name}")
    _remove(temp)
    try:
        yield temp
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)  # a folder cannot be replaced in one rename
        os.replace(temp, path)
    finally:
        _remove(temp)


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as temp:
        temp.write_text(text)


def write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as temp:
        temp.write_bytes(data)


def write_json(path: Path, data: dict[str, Any]) -> None:
    write_text(path, json.dumps(data, indent=2) + "\n")


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner may read (a secret): mode 0600 from the moment it exists,
    never briefly the umask's 0644, and replaced as a whole."""
    with atomic_path(Path(path)) as temp:
        descriptor = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as stream:
            stream.write(text)


def private_folder(path: Path) -> Path:
    """A folder only its owner may enter (0700), made or tightened."""
    path = Path(path)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def save_arrays(folder: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write each array as `<name>.npy` into `folder`, replacing the folder as a whole."""
    with atomic_path(folder) as temp:
        temp.mkdir()
        for name, array in arrays.items():
            np.save(temp / f"{name}.npy", array, allow_pickle=False)


def load_arrays(folder: Path, names: list[str]) -> dict[str, np.ndarray]:
    """Read `<name>.npy` files written by save_arrays; never unpickles anything."""
    arrays = {}
    for name in names:
        path = Path(folder) / f"{name}.npy"
        try:
            arrays[name] = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise PipelineError(f"{path}: missing; run `dvc repro` to rebuild it") from None
        except ValueError as error:
            raise PipelineError(f"{path}: not a valid .npy array ({error})") from None
    return arrays
