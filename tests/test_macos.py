"""Where Linux's /proc is missing (macOS): what a run records about the CPU comes from
`sysctl`, or is "?", and nothing fails; the servers' processes are still found."""

import os
import subprocess

import pytest

from mnist_dense.runtime import kernels
from mnist_dense.tracking import provenance
from tests.conftest import ROOT
from tooling import processes

APPLE_M2 = {  # what `sysctl -n` answers on an Apple M2 (it has no L3 entry)
    "machdep.cpu.brand_string": "Apple M2",
    "hw.l1dcachesize": "65536",
    "hw.l2cachesize": "4194304",
}


@pytest.fixture
def macos(monkeypatch):
    """This process as on macOS: no /proc/cpuinfo, no Eigen to ask, `sysctl` answering."""

    def sysctl(command, **kwargs):
        name = command[-1]
        known = name in APPLE_M2
        return subprocess.CompletedProcess(command, 0 if known else 1, APPLE_M2.get(name, ""), "")

    monkeypatch.setattr(provenance.sys, "platform", "darwin")
    monkeypatch.setattr(provenance, "_cpuinfo", list)
    monkeypatch.setattr(provenance.subprocess, "run", sysctl)
    monkeypatch.setattr(kernels, "cpu_caches", lambda: "?")


def test_the_cpu_is_named_from_sysctl(macos):
    assert provenance.cpu_name() == "Apple M2"
    assert provenance.cpu_vendor() == "Apple"
    assert provenance.cpu_caches() == "L1 64K, L2 4M, L3 ?"


def test_without_sysctl_the_record_says_unknown(macos, monkeypatch):
    def missing(command, **kwargs):
        raise FileNotFoundError(command[0])

    monkeypatch.setattr(provenance.subprocess, "run", missing)
    assert provenance.cpu_vendor() == "?"
    assert provenance.cpu_caches() == "L1 ?, L2 ?, L3 ?"
    assert provenance.cpu_name()  # what Python knows of the processor


def test_process_groups_are_found_without_proc(monkeypatch, tmp_path):
    monkeypatch.setattr(processes, "PROC", tmp_path / "no-proc")
    assert processes.group_running(os.getpgrp())
    finished = subprocess.Popen(["true"], start_new_session=True)
    finished.wait()
    assert not processes.group_running(finished.pid)
    assert processes.start_time(os.getpid()) is None and processes.command_line(1) == []


# GNU make features newer than 3.81, the make macOS ships, and what each would break there
NEWER_THAN_MAKE_3_81 = {
    ".ONESHELL": "3.82",
    ".SHELLFLAGS": "3.82",
    ".RECIPEPREFIX": "3.82",
    "undefine ": "3.82",
    "private ": "3.82",
    " != ": "4.0",
    "::=": "4.0",
    "$(file ": "4.0",
    "&:": "4.3",
    "$(let ": "4.4",
    "$(intcmp ": "4.4",
}


def test_the_makefile_needs_nothing_newer_than_the_make_macos_ships():
    """macOS ships GNU make 3.81 (and bash 3.2 and BSD tools, which the recipes' sh, awk and
    test calls work with); the Makefile sticks to 3.81's features, so no `brew install make`."""
    text = (ROOT / "Makefile").read_text()
    used = {feature: since for feature, since in NEWER_THAN_MAKE_3_81.items() if feature in text}
    assert used == {}
    assert "grep -P" not in text and "sed -i" not in text and "nproc" not in text  # GNU-only
