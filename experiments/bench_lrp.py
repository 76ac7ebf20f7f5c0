"""Cost of LRP / DeepLift against a vanilla gradient on the same model, same run (CPU).

Run (our venv; noisy on a shared machine: compare the ratios of one run):

    python experiments/bench_lrp.py [--model efficientnet_lite0] [--batch 32] [--repeats 3]
        [--methods vanilla,lrp:epsilon,lrp:epsilon_plus_flat,lrp:epsilon_gamma_box,deeplift]
    python experiments/bench_lrp.py --vs-zennit [--batch 8]     # VGG16 224^2, EpsilonPlusFlat
    python experiments/bench_lrp.py --model vgg16 --size 64      # the parity VGG16 (random weights)

--model vgg16 (no weights ship) times the torchvision-layout VGG16 of parity_lrp.py, its random
weights written by the peers' python and read by our reader; --size sets the image size.
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


def rates(model, specs, batch: int, repeats: int, size=None) -> dict:
    """{spec: (images/s, XLA's GFLOP per image)} of each method on random inputs at `batch`: all compiled
    (and warmed up) first, then timed in `repeats` rounds of one call each, methods interleaved (a shared
    machine's load drifts; the best round of each method is kept). The FLOP count (the compiled
    program's `cost_analysis`) does not depend on the machine."""
    x = jax.random.normal(jax.random.key(0), (batch, *((size, size) if size else model.input_size), model.channels))
    targets = jnp.zeros((batch,), jnp.int32)
    runs, flops = {}, {}
    for spec in specs:
        value = method_value(spec).prepare(model, x.shape[1:], images_per_call=batch)
        run = jax.jit(lambda m, x, t, v=value: methods.attribute_batch(v, m, x, t, jax.random.key(0)))
        cost = run.lower(model, x, targets).compile().cost_analysis()
        flops[spec] = (cost[0] if isinstance(cost, list) else cost).get("flops", float("nan")) / batch / 1e9
        run(model, x, targets).block_until_ready()  # compile + warm up
        runs[spec] = run
    out = dict.fromkeys(specs, 0.0)
    for _ in range(repeats):
        for spec, run in runs.items():
            out[spec] = max(out[spec], best_rate(lambda r=run: r(model, x, targets).block_until_ready(), batch, 1))
    for spec, rate in out.items():
        print(f"{spec}: {rate:.2f} img/s, {flops[spec]:.2f} GFLOP/image", flush=True)
    return {spec: (rate, flops[spec]) for spec, rate in out.items()}


def parity_vgg16(folder: pathlib.Path):
    """parity_lrp.py's torchvision-layout VGG16 (random weights saved by the peers' python), read by our reader."""
    from parity_lrp import PEERS_PYTHON

    script = str(pathlib.Path(__file__).with_name("parity_lrp.py"))
    subprocess.run([PEERS_PYTHON, script, "--peer", str(folder), "--size", "32", "--images", "1"], check=True,
                   stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    return saliency_jax.load_model("vgg16", weights=folder / "vgg16.pth", use_cache=False)


def vs_zennit(batch: int, repeats: int) -> None:
    from parity_lrp import PEERS_PYTHON

    with tempfile.TemporaryDirectory() as tmp:
        script = str(pathlib.Path(__file__).with_name("parity_lrp.py"))
        subprocess.run([PEERS_PYTHON, script, "--peer-time", tmp, "--size", "224", "--images", str(batch)], check=True,
                       stderr=subprocess.DEVNULL)
        theirs = batch / float(pathlib.Path(tmp, "time.txt").read_text())
        model = saliency_jax.load_model("vgg16", weights=pathlib.Path(tmp) / "vgg16.pth", use_cache=False)
        ours = rates(model, ["lrp:epsilon_plus_flat"], batch, repeats)["lrp:epsilon_plus_flat"][0]
    print(f"VGG16 224^2 batch {batch}, EpsilonPlusFlat: zennit {theirs:.2f} img/s, ours {ours:.2f} img/s "
          f"({ours / theirs:.2f}x)")


def main() -> None:
    hugepages_for_this_script()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--methods", default="vanilla,lrp:epsilon,lrp:epsilon_plus_flat,lrp:epsilon_gamma_box,deeplift")
    parser.add_argument("--size", type=int, help="image size (default: the model's)")
    parser.add_argument("--vs-zennit", action="store_true")
    args = parser.parse_args()
    if args.vs_zennit:
        return vs_zennit(args.batch, args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        model = parity_vgg16(pathlib.Path(tmp)) if args.model == "vgg16" else saliency_jax.load_model(args.model)
    table = rates(model, args.methods.split(","), args.batch, args.repeats, args.size)
    rate0, flops0 = table.get("vanilla", (None, None))
    print(f"\n{args.model} {args.size or ''}, batch {args.batch}, CPU ({jax.device_count()} device)")
    print("| method | img/s | cost vs vanilla | GFLOP/image (XLA) | FLOPs vs vanilla |")
    print("|---|---|---|---|---|")
    for spec, (rate, flops) in table.items():
        ratios = f"{rate0 / rate:.2f}x | {flops:.2f} | {flops / flops0:.2f}x" if rate0 else f"- | {flops:.2f} | -"
        print(f"| {spec} | {rate:.2f} | {ratios} |")


if __name__ == "__main__":
    main()
