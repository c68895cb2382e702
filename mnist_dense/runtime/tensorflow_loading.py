"""What runs around `import tensorflow`, whoever imports it first.

Two things can only be done while TensorFlow loads: its start-up notes are written to the
terminal as it loads (mnist_dense/runtime/quiet.py filters them), and Eigen's cache sizes must be
pinned after its libraries load and before its first product (mnist_dense/runtime/kernels.py). A
meta-path finder wraps TensorFlow's own loader: the registered contexts are entered around
it, the registered callbacks run after it.
"""

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack

_around: list[Callable[[], AbstractContextManager]] = []
_after: list[Callable[[], None]] = []


def around(context: Callable[[], AbstractContextManager]) -> None:
    """Enter `context()` for as long as `import tensorflow` runs (once per context)."""
    if context not in _around:
        _around.append(context)
    _install()


def after(callback: Callable[[], None]) -> None:
    """Call `callback()` once TensorFlow has loaded, before anything uses it."""
    if callback not in _after:
        _after.append(callback)
    _install()


class _Loader(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        with ExitStack() as stack:
            for context in _around:
                stack.enter_context(context())
            self.loader.exec_module(module)
        for callback in _after:
            callback()


class _Finder(importlib.abc.MetaPathFinder):
    """Finds `tensorflow` as Python would, and loads it through _Loader."""

    def find_spec(self, name, path, target=None):
        if name != "tensorflow":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader)
        return spec


def _install() -> None:
    if not any(isinstance(finder, _Finder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
