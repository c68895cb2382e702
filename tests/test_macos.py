"""Where Linux's /proc is missing (macOS): what a run records about the CPU comes from
`sysctl`, or is "?", and nothing fails; the servers' processes are still found."""

import os
import subprocess

import pytest

from mnist_dense import kernels, provenance
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
