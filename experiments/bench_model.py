"""Benchmark: EfficientNet-Lite0 load, compile, forward and input-gradient throughput, JAX vs PyTorch.

Run:
    python experiments/bench_model.py            # full table (needs the [test] extra for the torch rows)
    python experiments/bench_model.py --quick    # batch 1 and 8, one repeat (CI smoke)

Each framework runs in subprocesses of its own, under two allocator settings:
JAX with glibc's defaults and with transparent huge pages
(`GLIBC_TUNABLES=glibc.malloc.hugetlb=1`, what the `saliency-jax` command sets
for itself, see saliency_jax/allocator.py); the PyTorch reference
(`efficientnet-lite-pytorch`, same weights) with glibc's defaults and with its
allocator tuned (mmap/trim thresholds, which PERF_NOTES found worth up to 2.4x
to PyTorch here, plus huge pages). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_common import best_rate, json_subprocess, reference_torch_net  # noqa: E402


def bench_jax(batches, repeats, impl):
    import jax
    import jax.numpy as jnp
    import numpy as np

    import saliency_jax

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["SALIENCY_JAX_CACHE"] = tmp
        t = time.perf_counter()
        saliency_jax.load_model(depthwise_impl=impl)
        out["first load (convert + cache) s"] = time.perf_counter() - t
        t = time.perf_counter()
        model = saliency_jax.load_model(depthwise_impl=impl)
        out["cached load s"] = time.perf_counter() - t

    fwd = jax.jit(jax.vmap(model.logit_fn))
    grad = jax.jit(jax.vmap(jax.grad(lambda x, c: model.logit_fn(x)[c])))
    for b in batches:
        x = jnp.asarray(np.random.default_rng(0).normal(size=(b, 224, 224, 3)), jnp.float32)
        c = jnp.zeros((b,), jnp.int32)
        for name, f, args in (("forward", fwd, (x,)), ("input gradient", grad, (x, c))):
            t = time.perf_counter()
            jax.block_until_ready(f(*args))
            out[f"{name} compile s (batch {b})"] = time.perf_counter() - t
            out[f"{name} img/s (batch {b})"] = best_rate(lambda: jax.block_until_ready(f(*args)), b, repeats)
    return out


def bench_torch(batches, repeats):
    import numpy as np
    import torch

    net = reference_torch_net()
    out = {"threads": torch.get_num_threads()}
    for b in batches:
        x = torch.from_numpy(np.random.default_rng(0).normal(size=(b, 3, 224, 224)).astype(np.float32))

        def forward():
            with torch.no_grad():
                net(x)

        def input_gradient():
            xg = x.clone().requires_grad_(True)
            torch.autograd.grad(net(xg)[:, 0].sum(), xg)

        for name, f in (("forward", forward), ("input gradient", input_gradient)):
            f()
            out[f"{name} img/s (batch {b})"] = best_rate(f, b, repeats)
    return out


def _subprocess(framework: str, batches, repeats, impl: str, allocator: str):
    args = [f"--{framework}-only", "--batches", ",".join(map(str, batches)), "--repeats", str(repeats),
            "--impl", impl]
    return json_subprocess(__file__, args, allocator=allocator)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--impl", default="auto", help="depthwise implementation for the JAX model")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--torch-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--jax-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    batches = [1, 8] if args.quick else [int(b) for b in args.batches.split(",")]
    repeats = 1 if args.quick else args.repeats
    if args.torch_only or args.jax_only:
        bench = bench_torch(batches, repeats) if args.torch_only else bench_jax(batches, repeats, args.impl)
        print(json.dumps(bench))
        return

    import jax

    rows = {"JAX (this library), huge pages": _subprocess("jax", batches, repeats, args.impl, "huge pages"),
            "JAX (this library), default malloc": _subprocess("jax", batches, repeats, args.impl, "default")}
    if not args.no_torch:
        rows["PyTorch reference, default malloc"] = _subprocess("torch", batches, repeats, args.impl, "default")
        rows["PyTorch reference, tuned malloc + huge pages"] = _subprocess("torch", batches, repeats, args.impl,
                                                                          "tuned")

    print(f"\njax {jax.__version__} on {jax.default_backend()} ({os.cpu_count()} cores), "
          f"depthwise impl {args.impl!r}, best of {repeats}\n")
    jx = rows["JAX (this library), huge pages"]
    if "error" in jx:
        raise SystemExit(f"the JAX benchmark failed: {jx['error']}")
    for key, value in jx.items():
        if key.endswith(" s") or " s (" in key:
            print(f"- {key}: {value:.2f}")
    print()
    cols = [f"{n} img/s (batch {b})" for b in batches for n in ("forward", "input gradient")]
    print("| | " + " | ".join(c.replace(" img/s", "") for c in cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for name, r in rows.items():
        if "error" in r:
            print(f"| {name} | {r['error']} |")
            continue
        print(f"| {name} | " + " | ".join(f"{r[c]:.1f}" for c in cols) + " |")
    jd = rows["JAX (this library), default malloc"]
    pairs = [("JAX huge pages / PyTorch tuned", jx, rows.get("PyTorch reference, tuned malloc + huge pages")),
             ("JAX default / PyTorch default", jd, rows.get("PyTorch reference, default malloc"))]
    for name, a, b in pairs:
        if b is not None and "error" not in a and "error" not in b:
            print(f"| {name} | " + " | ".join(f"{a[c] / b[c]:.2f}x" for c in cols) + " |")
    for b in batches:
        print(f"- input gradient / forward time at batch {b}: huge pages "
              f"{jx[f'forward img/s (batch {b})'] / jx[f'input gradient img/s (batch {b})']:.2f}x"
              + ("" if "error" in jd else f", default malloc "
                 f"{jd[f'forward img/s (batch {b})'] / jd[f'input gradient img/s (batch {b})']:.2f}x"))


if __name__ == "__main__":
    main()
