"""Huge pages for XLA's CPU buffers: environment merging, when to re-execute, and the re-execution itself."""

import os
import subprocess
import sys

import pytest

from saliency_jax import allocator
from saliency_jax.allocator import HUGEPAGE_TUNABLE, should_reexec, thp_mode, with_hugepages

LINUX = dict(system="Linux", libc=("glibc", "2.36"), thp="madvise")


def test_with_hugepages_keeps_other_tunables_and_replaces_an_old_setting():
    assert with_hugepages({})["GLIBC_TUNABLES"] == HUGEPAGE_TUNABLE
    env = {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1:glibc.malloc.hugetlb=0", "PATH": "/bin"}
    out = with_hugepages(env)
    assert out["GLIBC_TUNABLES"] == "glibc.malloc.trim_threshold=1:glibc.malloc.hugetlb=1"
    assert out["PATH"] == "/bin" and env["GLIBC_TUNABLES"].endswith("hugetlb=0")  # input untouched


def test_thp_mode_reads_the_bracketed_choice(tmp_path):
    path = tmp_path / "enabled"
    path.write_text("always [madvise] never\n")
    assert thp_mode(path) == "madvise"
    path.write_text("[always] madvise never\n")
    assert thp_mode(path) == "always"
    assert thp_mode(tmp_path / "missing") is None


@pytest.mark.parametrize(
    "env, overrides, expected",
    [
        ({}, {}, True),
        ({"GLIBC_TUNABLES": HUGEPAGE_TUNABLE}, {}, False),  # already on
        ({"SALIENCY_JAX_NO_REEXEC": "1"}, {}, False),  # opted out
        ({"SALIENCY_JAX_REEXECUTED": "1"}, {}, False),  # never twice
        ({}, {"thp": "always"}, False),  # the kernel does it anyway
        ({}, {"thp": "never"}, False),
        ({}, {"thp": None}, False),
        ({}, {"libc": ("glibc", "2.31")}, False),  # no hugetlb tunable before 2.35
        ({}, {"libc": ("", "")}, False),  # musl
        ({}, {"system": "Darwin"}, False),
    ],
)
def test_should_reexec(env, overrides, expected):
    assert should_reexec(env, **{**LINUX, **overrides}) is expected


def test_reexec_replaces_the_process_with_the_tunable_set():
    import platform

    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "SALIENCY_JAX_NO_REEXEC")}
    if not should_reexec(env, system=platform.system(), libc=platform.libc_ver(), thp=thp_mode()):
        pytest.skip("huge pages would not help on this machine (no glibc >= 2.35 or THP mode is not madvise)")
    code = "from saliency_jax.allocator import reexec_with_hugepages as r; r(['-m', 'saliency_jax.allocator'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == HUGEPAGE_TUNABLE
    env["SALIENCY_JAX_NO_REEXEC"] = "1"  # opted out: the -c program just returns, printing nothing
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout == ""


def test_console_script_entry_runs_main(monkeypatch, capsys):
    monkeypatch.setenv("SALIENCY_JAX_NO_REEXEC", "1")
    monkeypatch.setattr(sys, "argv", ["saliency-jax", "--version"])
    from saliency_jax import cli

    with pytest.raises(SystemExit) as info:
        cli.entry()
    assert info.value.code == 0 and capsys.readouterr().out.startswith("saliency-jax ")
    assert allocator.NO_REEXEC_VAR == "SALIENCY_JAX_NO_REEXEC"
