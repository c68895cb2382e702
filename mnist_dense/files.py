"""Writing outputs safely: a temporary name beside the target, renamed into place when complete.

DVC caches whatever sits at an output path, so a crash or Ctrl-C must never leave a partial
file there: either the old complete output, no output, or the new complete output. A rename
alone only orders the names, not the bytes: after a power cut the kernel may have written the
new name but not the data, leaving an empty `.team/stack.json` or a pending record. So the
temporary is fsynced (every file and folder in it) before the rename, and its folder after, so
the new name itself is on disk when the write returns.
"""

import errno
import json
import os
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from mnist_dense.errors import PipelineError

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


def fsync_folder(path: Path) -> None:
    """Flush a folder's entries (a name just created, renamed or removed in it) to the disk.

    A file system that cannot fsync a folder (EINVAL: some network and FUSE file systems)
    has nothing more to flush that way, so that is not an error."""
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(descriptor)
    except OSError as error:
        if error.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(descriptor)


def fsync_file(path: Path) -> None:
    """Flush a file's bytes to the disk (any descriptor of it flushes them)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_tree(path: Path) -> None:
    """fsync a file, or every file and folder under a folder (the folder itself last), so a
    folder renamed into place afterwards holds complete files after a power cut."""
    path = Path(path)
    mode = path.lstat().st_mode
    if stat.S_ISLNK(mode):
        return  # a link's target is not ours to flush; the link's name is its folder's
    if not stat.S_ISDIR(mode):
        fsync_file(path)
        return
    for child in path.iterdir():
        fsync_tree(child)
    fsync_folder(path)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path in `path`'s folder; move it to `path` only if the block succeeds.

    The temporary name (`.tmp-<pid>-<name>`) keeps the file's suffix, so writers that insist
    on one (Keras, NumPy) accept it. Works for a file or a folder. Durable once it returns:
    the temporary is fsynced before the rename and the folder after it (the module's
    docstring says why).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    temp = path.with_name(f"{TEMP_PREFIX}{os.getpid()}-{path.name}")
    _remove(temp)
    try:
        yield temp
        if temp.exists() or temp.is_symlink():  # else os.replace says what is missing
            fsync_tree(temp)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)  # a folder cannot be replaced in one rename
        os.replace(temp, path)
        fsync_folder(path.parent)
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


def write_private(path: Path, data: str | bytes) -> None:
    """Write a file only its owner may read (a secret, a kept run log): mode 0600 from the
    moment it exists, never briefly the umask's 0644, and replaced as a whole."""
    with atomic_path(Path(path)) as temp:
        descriptor = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb" if isinstance(data, bytes) else "w") as stream:
            stream.write(data)


def private_folder(path: Path) -> Path:
    """A folder only its owner may enter (0700), made or tightened; a new one's name is
    fsynced in its parent, so what is later written durably inside it is found after a
    power cut."""
    path = Path(path)
    created = not path.exists()
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
    if created:
        fsync_folder(path.parent)
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
