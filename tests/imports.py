"""Which project files a Python module loads: the import closure the dvc.yaml guard checks."""

import ast
from pathlib import Path

PACKAGES = ("stages", "mnist_dense", "commands", "bench")


def module_file(root: Path, module: str) -> Path | None:
    """The file of a project module (`mnist_dense.config` -> mnist_dense/config.py), if any."""
    parts = module.split(".")
    if parts[0] not in PACKAGES:
        return None
    for candidate in (
        root.joinpath(*parts).with_suffix(".py"),
        root.joinpath(*parts, "__init__.py"),
    ):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside functions (both run in a stage)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}  # from pkg import mod
    return found


def closure(root: Path, module: str) -> set[str]:
    """Project files (relative paths) loaded by running `python -m module`, packages included."""
    seen: set[Path] = set()
    pending = [module]
    while pending:
        name = pending.pop()
        parts = name.split(".")
        for depth in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__
            path = module_file(root, ".".join(parts[:depth]))
            if path is not None and path not in seen:
                seen.add(path)
                pending += imported_modules(path)
    return {str(path.relative_to(root)) for path in seen}
