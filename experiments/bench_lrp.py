"""Cost of LRP / DeepLift against a vanilla gradient on the same model, same run (CPU).

Run (our venv; noisy on a shared machine: compare the ratios of one run):

    python experiments/bench_lrp.py [--model efficientnet_lite0] [--batch 32] [--repeats 3]
        [--methods vanilla,lrp:epsilon,lrp:epsilon_plus_flat,lrp:epsilon_gamma_box,deeplift]
    python experiments/bench_lrp.py --vs-zennit [--batch 8]     # VGG16 224^2, EpsilonPlusFlat

--vs-zennit times zennit 0.5.1 (in /work/peers-venv, via parity_lrp.py) and us on the
same torchvision-layout VGG16 (random weights, read from its .pth by our reader).

Each method is one compiled `attribute_batch` call with the Model passed as an
argument (its weights are data, never compile-time constants); the table gives
images/s (the best of `repeats` rounds, methods interleaved in each round, after
a warm-up) and the cost relative to the vanilla gradient.
"""

from __future__ import annotations

import argparse
import pathlib
import subprocess
import tempfile

import jax
import jax.numpy as jnp
from bench_common import best_rate, hugepages_for_this_script

import saliency_jax
from saliency_jax import methods


def method_value(spec: str):
    """'vanilla' | 'lrp:<composite>' | 'deeplift' -> a method value."""
    name, _, composite = spec.partition(":")
    return methods.LRP(composite=composite) if name == "lrp" else methods.get(name)


def rates(model, specs, batch: int, repeats: int) -> dict:
    """{spec: images/s} of each method on random inputs at `batch`: all compiled (and warmed up) first,
    then timed in `repeats` rounds of one call each, methods interleaved (a shared machine's load
    drifts; the best round of each method is kept)."""
    x = jax.random.normal(jax.random.key(0), (batch, *model.input_size, model.channels))
    targets = jnp.zeros((batch,), jnp.int32)
    runs = {}
    for spec in specs:
        value = method_value(spec).prepare(model, x.shape[1:], images_per_call=batch)
        run = jax.jit(lambda m, x, t, v=value: methods.attribute_batch(v, m, x, t, jax.random.key(0)))
        run(model, x, targets).block_until_ready()  # compile + warm up
        runs[spec] = run
    out = dict.fromkeys(specs, 0.0)
    for _ in range(repeats):
        for spec, run in runs.items():
            out[spec] = max(out[spec], best_rate(lambda r=run: r(model, x, targets).block_until_ready(), batch, 1))
    for spec, rate in out.items():
        print(f"{spec}: {rate:.2f} img/s", flush=True)
    return out


def vs_zennit(batch: int, repeats: int) -> None:
    from parity_lrp import PEERS_PYTHON

    with tempfile.TemporaryDirectory() as tmp:
        script = str(pathlib.Path(__file__).with_name("parity_lrp.py"))
        subprocess.run([PEERS_PYTHON, script, "--peer-time", tmp, "--size", "224", "--images", str(batch)], check=True,
                       stderr=subprocess.DEVNULL)
        theirs = batch / float(pathlib.Path(tmp, "time.txt").read_text())
        model = saliency_jax.load_model("vgg16", weights=pathlib.Path(tmp) / "vgg16.pth", use_cache=False)
        ours = rates(model, ["lrp:epsilon_plus_flat"], batch, repeats)["lrp:epsilon_plus_flat"]
    print(f"VGG16 224^2 batch {batch}, EpsilonPlusFlat: zennit {theirs:.2f} img/s, ours {ours:.2f} img/s "
          f"({ours / theirs:.2f}x)")


def main() -> None:
    hugepages_for_this_script()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--methods", default="vanilla,lrp:epsilon,lrp:epsilon_plus_flat,lrp:epsilon_gamma_box,deeplift")
    parser.add_argument("--vs-zennit", action="store_true")
    args = parser.parse_args()
    if args.vs_zennit:
        return vs_zennit(args.batch, args.repeats)
    model = saliency_jax.load_model(args.model)
    table = rates(model, args.methods.split(","), args.batch, args.repeats)
    base = table.get("vanilla")
    print(f"\n{args.model}, batch {args.batch}, CPU ({jax.device_count()} device)")
    print("| method | img/s | cost vs vanilla |")
    print("|---|---|---|")
    for spec, rate in table.items():
        print(f"| {spec} | {rate:.2f} | {base / rate:.2f}x |" if base else f"| {spec} | {rate:.2f} | - |")


if __name__ == "__main__":
    main()
