"""A guard on dvc.yaml: each stage declares exactly the code it imports and the params it reads.

A stage that imports a module dvc.yaml does not list is not re-run when that module changes
(DVC would restore stale outputs); a params key read but not declared has the same effect; a
key declared but never read retrains for nothing.
"""

import pytest
import yaml

from mnist_dense import config as params_module
from mnist_dense.config import Params, load_params
from tests.conftest import ROOT, write_params
from tests.imports import closure

DVC_YAML = ROOT / "dvc.yaml"
RUN_ORDER = ("download", "preprocess", "train", "evaluate")


def dvc_stages() -> dict[str, dict]:
    return yaml.safe_load(DVC_YAML.read_text())["stages"]


def module_of(stage: dict) -> str:
    return stage["cmd"].removeprefix("python -m ").split()[0]


def python_files(dep: str) -> set[str]:
    """The Python files a dep stands for: itself, or every one in a folder."""
    path = ROOT / dep
    if path.is_dir():
        return {str(file.relative_to(ROOT)) for file in path.rglob("*.py")}
    return {dep} if dep.endswith(".py") else set()


def code_problems(declared: dict[str, dict]) -> list[str]:
    """How each stage's Python deps differ from what its module imports. A folder may stand
    for its files only where the stage imports every one of them."""
    problems = []
    for name, stage in declared.items():
        deps = set().union(*(python_files(dep) for dep in stage.get("deps", [])))
        imported = closure(ROOT, module_of(stage))
        problems += [
            f"{name}: imports {path} but dvc.yaml does not list it"
            for path in sorted(imported - deps)
        ]
        problems += [
            f"{name}: lists {path}, which it does not import" for path in sorted(deps - imported)
        ]
    return problems


def test_every_stage_lists_exactly_the_code_it_imports():
    assert sorted(dvc_stages()) == sorted(RUN_ORDER)
    assert code_problems(dvc_stages()) == []


def test_a_missing_code_dep_or_a_folder_wider_than_the_imports_is_named():
    declared = dvc_stages()
    declared["train"]["deps"].remove("mnist_dense/model")
    declared["evaluate"]["deps"].append("mnist_dense/model")
    problems = code_problems(declared)
    assert "train: imports mnist_dense/model/training.py but dvc.yaml does not list it" in problems
    assert "evaluate: lists mnist_dense/model/augment.py, which it does not import" in problems
    expected = ("train: imports mnist_dense/model/", "evaluate: lists mnist_dense/model/")
    assert all(problem.startswith(expected) for problem in problems), problems


class Recorder:
    """Wraps validated params and records every key read ("train.epochs"); reading a whole
    section (model_dump, a computed property) counts as reading each of its keys."""

    def __init__(self, model, seen: set[str], prefix: str = "") -> None:
        self._model, self._seen, self._prefix = model, seen, prefix

    def _all(self) -> None:
        for key, value in self._model.model_dump().items():
            if isinstance(value, dict):
                self._seen.update(f"{self._prefix}{key}.{inner}" for inner in value)
            else:
                self._seen.add(f"{self._prefix}{key}")

    def __getattr__(self, name: str):
        value = getattr(self._model, name)
        if name not in type(self._model).model_fields:  # model_dump, a property, ...
            self._all()
            return value
        if hasattr(value, "model_fields"):
            return Recorder(value, self._seen, f"{self._prefix}{name}.")
        self._seen.add(f"{self._prefix}{name}")
        return value


def declared_keys(stage: dict) -> set[str]:
    keys = set()
    for entry in stage.get("params", []):
        section, _, key = entry.partition(".")
        fields = Params.model_fields[section].annotation.model_fields
        keys |= {f"{section}.{key}"} if key else {f"{section}.{k}" for k in fields}
    return keys


def read_keys(stage_name: str, workdir, monkeypatch) -> set[str]:
    """The params keys the stage reads, running it on tiny data."""
    import importlib

    module = importlib.import_module(f"stages.{stage_name}")
    seen: set[str] = set()
    if hasattr(module, "load_params"):
        monkeypatch.setattr(module, "load_params", lambda: Recorder(load_params(), seen))
    monkeypatch.setattr(
        params_module, "load_params", lambda *a: pytest.fail("read behind the guard's back")
    )
    module.main()
    return seen


def test_every_stage_reads_exactly_the_params_it_declares(workdir, monkeypatch, tiny_mirror):
    _, checksums = tiny_mirror
    write_params(workdir, tracking={"enabled": True})  # tracking records every param
    (workdir / "data" / "raw").rename(workdir / "mirror")
    monkeypatch.setenv("MNIST_MIRROR", str(workdir / "mirror"))
    from stages import download

    monkeypatch.setattr(download, "read_checksums", lambda: checksums)
    problems = []
    stages = dvc_stages()
    for name in RUN_ORDER:  # dvc.yaml lists evaluate first (for `dvc exp show`); DVC runs it last
        stage = stages[name]
        read, declared = read_keys(name, workdir, monkeypatch), declared_keys(stage)
        problems += [
            f"{name}: reads {key}, not declared in dvc.yaml" for key in sorted(read - declared)
        ]
        problems += [f"{name}: declares {key}, never read" for key in sorted(declared - read)]
    assert problems == []
