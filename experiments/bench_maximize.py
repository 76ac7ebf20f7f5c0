"""Benchmark: class-model optimisation throughput (target-steps/s) at 224x224, JAX vs Lucent.

Run:
    python experiments/bench_maximize.py              # JAX at 1, 8, 32 targets; Lucent at 1..32, both mallocs
    python experiments/bench_maximize.py --quick      # 1 and 4 targets, 3 steps (smoke test)

One target-step is one gradient-ascent step on one image. JAX (`saliency_jax.maximize.visualize`)
runs every target in one vmapped, jit-compiled `lax.scan`; both sides count the best of
`--repeats` timed calls, after a first call (JAX: its extra time is reported as compilation) or a
one-step warm-up (Lucent). Two settings:

- "lucid" (Fourier + decorrelated-colour image, Lucid's standard transforms, Adam 0.05), the
  like-for-like comparison with Lucent's defaults;
- "paper" (pixels, L2 penalty, no transforms), compared with Lucent on a pixel image
  (`param.image(fft=False, decorrelate=False)`, still Lucent's sigmoid into [0, 1]) and no
  transforms, its nearest setting (Lucent has no L2 penalty; its cost is negligible).

Lucent (PyPI `torch-lucent`, `render_vis` with its default image parameterisation and
`standard_transforms`, Adam 0.05) maximises the class logit of the reference PyTorch
EfficientNet-Lite0 (`efficientnet-lite-pytorch`, same weights), one target per batch image
(objective `channel("_fc", c, batch=i)` summed), input mapped to the model's (x*255-127)/128.
It runs in subprocesses with glibc's default malloc and with the allocator tuned (see
PERF_NOTES.md; plus huge pages); JAX runs with huge pages, as the saliency-jax command does. Lucent imports `torchvision.transforms.Normalize` only for preprocessing we do
not use; PyPI's torchvision wheels are CUDA builds that do not load beside the CPU torch, so a
stand-in module provides that one class when torchvision cannot be imported.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_common import best_rate, hugepages_for_this_script, json_subprocess, reference_torch_net  # noqa: E402
CLASSES = [130, 285, 967, 9, 99, 250, 251, 278, 508, 543, 627, 897, 945, 951, 968, 1,
           2, 17, 22, 80, 144, 291, 309, 340, 386, 409, 417, 430, 457, 504, 717, 980]


def bench_jax(targets, steps, presets, repeats):
    import jax

    import saliency_jax
    from saliency_jax.maximize import class_score, preset_options, visualize

    model = saliency_jax.load_model()
    out = {}
    for preset in presets:
        for t in targets:
            options = preset_options(preset, model, class_score(CLASSES[:t]), num_steps=steps)
            key = jax.random.key(0)
            start = time.perf_counter()
            visualize(model, key=key, **options)
            first = time.perf_counter() - start
            rate = best_rate(lambda: visualize(model, key=jax.random.key(1), **options), t * steps, repeats)
            run = t * steps / rate
            out[f"{preset} target-steps/s ({t})"] = rate
            out[f"{preset} compile s ({t})"] = max(first - run, 0.0)
            print(f"  jax {preset} {t} targets: {t * steps / run:.2f} target-steps/s, "
                  f"compile {first - run:.1f} s", file=sys.stderr, flush=True)
    return out


def _torchvision_stand_in():
    """Provides torchvision.transforms.Normalize if torchvision cannot be imported (see docstring)."""
    try:
        import torchvision.transforms  # noqa: F401
        return False
    except Exception:  # the CUDA wheel fails beside CPU torch (missing libc10_cuda / operators)
        pass
    import types

    import torch

    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]

    class Normalize(torch.nn.Module):
        def __init__(self, mean, std):
            super().__init__()
            self.mean = torch.tensor(mean)[:, None, None]
            self.std = torch.tensor(std)[:, None, None]

        def forward(self, x):
            return (x - self.mean) / self.std

    tv, tr = types.ModuleType("torchvision"), types.ModuleType("torchvision.transforms")
    tr.Normalize = Normalize
    tv.transforms = tr
    sys.modules["torchvision"], sys.modules["torchvision.transforms"] = tv, tr
    return True


def bench_lucent(targets, steps, repeats, device="cpu"):
    import torch

    stand_in = _torchvision_stand_in()
    from lucent.optvis import objectives, param, render, transform

    net = reference_torch_net().to(device)  # Lucent puts its image on "cuda:0" whenever CUDA is there
    to_model_space = lambda x: (x * 255.0 - 127.0) / 128.0  # noqa: E731
    out = {"threads": torch.get_num_threads(), "torchvision stand-in": stand_in}

    def run(t, n, pixels):
        objective = sum(objectives.channel("_fc", c, batch=i) for i, c in enumerate(CLASSES[:t]))
        if pixels:  # the paper preset's setting: the image's pixels, no transforms
            image, transforms = lambda: param.image(224, batch=t, fft=False, decorrelate=False), []
        else:
            image, transforms = lambda: param.image(224, batch=t), list(transform.standard_transforms)
        render.render_vis(net, objective, image, transforms=transforms + [to_model_space], thresholds=(n,),
                          preprocess=False, progress=False, show_image=False)

    for pixels, name in ((False, "lucent"), (True, "lucent pixels")):
        for t in targets:
            run(t, 1, pixels)  # warm-up
            out[f"{name} target-steps/s ({t})"] = best_rate(lambda: run(t, steps, pixels), t * steps, repeats)
    return out


def _lucent_subprocess(targets, steps, repeats, allocator: str, device: str):
    args = ["--lucent-only", "--targets", ",".join(map(str, targets)), "--steps", str(steps),
            "--repeats", str(repeats), "--torch-device", device]
    return json_subprocess(__file__, args, allocator=allocator)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="1,8,32", help="target counts for saliency_jax")
    parser.add_argument("--lucent-targets", default="1,2,4,8,16,32",
                        help="target counts (batch sizes) for Lucent, whose best batch is the reference")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per measurement")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per measurement (the best counts)")
    parser.add_argument("--presets", default="lucid,paper")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-lucent", action="store_true")
    parser.add_argument("--torch-device", default="cpu", help="where Lucent runs: cpu or cuda")
    parser.add_argument("--lucent-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    parse = lambda text: [int(t) for t in text.split(",")]  # noqa: E731
    targets = [1, 4] if args.quick else parse(args.targets)
    lucent_targets = [1, 4] if args.quick else parse(args.lucent_targets)
    steps = 3 if args.quick else args.steps
    if args.lucent_only:
        print(json.dumps(bench_lucent(targets, steps, args.repeats, args.torch_device)))
        return
    hugepages_for_this_script()

    import jax

    presets = args.presets.split(",")
    jx = bench_jax(targets, steps, presets, args.repeats)
    rows = {}
    if not args.no_lucent:
        for allocator in ("default", "tuned"):
            rows[f"Lucent, {allocator} malloc"] = _lucent_subprocess(lucent_targets, steps, args.repeats, allocator,
                                                                     args.torch_device)

    print(f"\njax {jax.__version__} on {jax.devices()[0].device_kind} ({os.cpu_count()} cores), Lucent on "
          f"{args.torch_device}, {steps} timed steps (best of {args.repeats}), "
          f"224x224, EfficientNet-Lite0\n")
    _table("saliency_jax", targets, {f"{preset} preset": {t: jx[f"{preset} target-steps/s ({t})"] for t in targets}
                                     for preset in presets})
    good = {n: r for n, r in rows.items() if "error" not in r}
    for name, r in rows.items():
        if "error" in r:
            print(f"- {name}: {r['error']}")
    if good:
        _table("Lucent", lucent_targets, {
            f"{name}, {label}": {t: r[f"{kind} target-steps/s ({t})"] for t in lucent_targets}
            for name, r in good.items()
            for kind, label in (("lucent", "defaults"), ("lucent pixels", "pixels, no transforms"))
        })
        # saliency_jax at each target count against Lucent's best batch: over both mallocs, and as installed.
        ratios = {}
        for preset, kind in (("lucid", "lucent"), ("paper", "lucent pixels")):
            label = "defaults" if kind == "lucent" else "pixels, no transforms"
            for which, subset in (("best", good), ("as installed", {n: r for n, r in good.items() if "default" in n})):
                if not subset or preset not in presets:
                    continue
                best, at = max((r[f"{kind} target-steps/s ({t})"], t) for r in subset.values() for t in lucent_targets)
                ratios[f"{preset} / Lucent {which}, {label} ({best:.2f} at {at})"] = {
                    t: f"{jx[f'{preset} target-steps/s ({t})'] / best:.2f}x" for t in targets}
        _table("saliency_jax / Lucent's best batch", targets, ratios)
    for preset in presets:
        print(f"- compile, {preset} preset: "
              + ", ".join(f"{jx[f'{preset} compile s ({t})']:.1f} s ({t})" for t in targets))
    for name, r in good.items():
        print(f"- {name}: torch threads {r['threads']}, torchvision stand-in {r['torchvision stand-in']}")


def _table(title, columns, rows):
    """Prints a Markdown table: one row per entry of `rows` ({label: {column: value}})."""
    print(f"| {title}, target-steps/s | " + " | ".join(f"{t} target{'s' * (t > 1)}" for t in columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for label, values in rows.items():
        cells = [v if isinstance(v, str) else f"{v:.2f}" for v in (values[t] for t in columns)]
        print(f"| {label} | " + " | ".join(cells) + " |")
    print()


if __name__ == "__main__":
    main()
