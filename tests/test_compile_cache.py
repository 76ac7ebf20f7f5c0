"""The persistent compilation cache: on in the CLI by default, off by flag or environment."""

import os
import subprocess
import sys

SCRIPT = """
import sys, jax, jax.numpy as jnp
from saliency_jax.compile_cache import enable_compile_cache
folder = enable_compile_cache(min_compile_seconds=0.0)
print(folder)
if folder is not None:
    jax.jit(lambda x: jnp.sin(x) @ x.T)(jnp.ones((8, 8))).block_until_ready()
"""


def _run(tmp_path, **env):
    environ = {k: v for k, v in os.environ.items() if k != "SALIENCY_JAX_NO_COMPILE_CACHE"}  # conftest sets it
    environ.update({"SALIENCY_JAX_CACHE": str(tmp_path), **env})
    return subprocess.run([sys.executable, "-c", SCRIPT], env=environ, capture_output=True, text=True, timeout=120)


def test_compiled_programs_are_written_under_the_cache_folder(tmp_path):
    out = _run(tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(tmp_path / "xla")
    assert any((tmp_path / "xla").iterdir())  # at least one compiled program kept


def test_the_environment_variable_turns_it_off(tmp_path):
    out = _run(tmp_path, SALIENCY_JAX_NO_COMPILE_CACHE="1")
    assert out.returncode == 0 and out.stdout.strip() == "None"
    assert not (tmp_path / "xla").exists()


def test_the_cli_flag_is_accepted_before_the_command():
    from saliency_jax import cli

    args = cli.build_parser().parse_args(["--no-compile-cache", "predict"])
    assert args.no_compile_cache and args.command == "predict"
