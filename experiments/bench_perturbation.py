"""Speed of the perturbation family on EfficientNet-Lite0 224x224 (CPU): occlusion and RISE vs plain forwards.

    . /work/venv/bin/activate && python experiments/bench_perturbation.py [--masks 2000] [--batch 1]

Reports seconds per image for occlusion (window 16, stride 8: 729 perturbations), RISE with
`--masks` masks, and `--masks` plain forward passes of the same model in chunks of the same size
(RISE's target: within 1.2x of them); the peak resident memory of the process at the end.
Captum's and shap's times come from experiments/parity_perturbation.py and the peers venv.
"""

from __future__ import annotations

import argparse
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np

from saliency_jax import load_model, methods


def seconds(fn, repeats: int = 2) -> float:
    fn()  # compile
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--masks", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--chunk", type=int, default=32)
    args = parser.parse_args()
    model = load_model("efficientnet_lite0")
    x = jnp.asarray(np.random.default_rng(0).normal(size=(args.batch, 224, 224, 3)), jnp.float32)
    key = jax.random.key(0)
    occ = methods.Occlusion(window=16, stride=8, chunk_size=args.chunk)
    rise = methods.RISE(num_masks=args.masks, chunk_size=args.chunk)
    forward = jax.jit(lambda xs: jax.lax.map(lambda c: model.apply(c)[0], xs))
    chunks = jnp.broadcast_to(x[:1], (args.masks // args.chunk, args.chunk, 224, 224, 3))
    t_occ = seconds(lambda: methods.attribute(model, x, 0, method=occ))
    t_rise = seconds(lambda: methods.attribute(model, x, 0, method=rise, key=key))
    t_fwd = seconds(lambda: forward(chunks)) * args.masks / (chunks.shape[0] * args.chunk)
    print(f"occlusion 729 perturbations: {t_occ / args.batch:.2f} s/image (batch {args.batch}, chunk {args.chunk})")
    print(f"RISE {args.masks} masks: {t_rise / args.batch:.2f} s/image; {args.masks} forwards: {t_fwd:.2f} s "
          f"(ratio {t_rise / args.batch / t_fwd:.2f})")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
