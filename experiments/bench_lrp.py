"""Cost of LRP / DeepLift against a vanilla gradient on the same model, same run (CPU).

Run (our venv; noisy on a shared machine: compare the ratios of one run):

    python experiments/bench_lrp.py [--model efficientnet_lite0] [--batch 32] [--repeats 3]
        [--methods vanilla,lrp:epsilon,lrp:epsilon_plus_flat,lrp:epsilon_gamma_box,deeplift]

Each method is one compiled `attribute_batch` call with the Model passed as an
argument (its weights are data, never compile-time constants); the table gives
images/s (the best of `repeats` after a warm-up) and the cost relative to the
vanilla gradient.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
from bench_common import best_rate, hugepages_for_this_script

import saliency_jax
from saliency_jax import methods


def method_value(spec: str):
    """'vanilla' | 'lrp:<composite>' | 'deeplift' -> a method value."""
    name, _, composite = spec.partition(":")
    return methods.LRP(composite=composite) if name == "lrp" else methods.get(name)


def main() -> None:
    hugepages_for_this_script()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--methods", default="vanilla,lrp:epsilon,lrp:epsilon_plus_flat,lrp:epsilon_gamma_box,deeplift")
    args = parser.parse_args()
    model = saliency_jax.load_model(args.model)
    x = jax.random.normal(jax.random.key(0), (args.batch, *model.input_size, model.channels))
    targets = jnp.zeros((args.batch,), jnp.int32)
    rates = {}
    for spec in args.methods.split(","):
        value = method_value(spec).prepare(model, x.shape[1:], images_per_call=args.batch)
        run = jax.jit(lambda m, x, t, v=value: methods.attribute_batch(v, m, x, t, jax.random.key(0)))
        run(model, x, targets).block_until_ready()  # compile + warm up
        rates[spec] = best_rate(lambda r=run: r(model, x, targets).block_until_ready(), args.batch, args.repeats)
        print(f"{spec}: {rates[spec]:.2f} img/s", flush=True)
    base = rates.get("vanilla")
    print(f"\n{args.model}, batch {args.batch}, CPU ({jax.device_count()} device)\n| method | img/s | cost vs vanilla |")
    print("|---|---|---|")
    for spec, rate in rates.items():
        print(f"| {spec} | {rate:.2f} | {base / rate:.2f}x |" if base else f"| {spec} | {rate:.2f} | - |")


if __name__ == "__main__":
    main()
