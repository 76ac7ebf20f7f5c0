"""Figure 1 of Simonyan et al. (2014): class models of the paper's twelve ImageNet classes.

Run:
    python experiments/fig1_class_models.py            # -> experiments/figures/fig1_class_models.png
    python experiments/fig1_class_models.py --quick    # 4 classes, 20 steps, no Lucid rows -> /tmp

Top rows, the paper's method (preset "paper"): argmax_I S_c(I) - l2 * ||I||^2 with the
unnormalised score S_c, by gradient ascent from the zero image of EfficientNet-Lite0's
input space (the training mean, uint8 127); the image is `model.deprocess` of the result
(mean added back), contrast-stretched per image for display only (1st..99th percentile to
0..255), as the paper's figure is. Bottom rows (unless --no-lucid), the same classes with
the "lucid" preset (Fourier/decorrelated image, random transforms), shown as they are.
Captions give the softmax probability of the class on the unstretched uint8 image; the
script prints a table with the probabilities, also on the model-space image.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import numpy as np
from PIL import Image

# The classes of the paper's Figure 1 (ImageNet indices; "washer" is the washing machine).
CLASSES = [543, 968, 251, 945, 951, 250, 897, 508, 278, 99, 9, 627]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 classes, 20 steps, written to /tmp")
    parser.add_argument("--steps", type=int, default=None, help="ascent steps (default: the paper preset's)")
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--l2", type=float, default=None)
    parser.add_argument("--tile", type=int, default=136, help="tile size in the figure (pixels)")
    parser.add_argument("--no-lucid", action="store_true", help="omit the rows made with the lucid preset")
    parser.add_argument("--no-stretch", action="store_true", help="show the paper rows without contrast stretch")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    import jax
    from tqdm import tqdm

    import saliency_jax
    from saliency_jax import render
    from saliency_jax.maximize import class_model
    from saliency_jax.maximize.presets import LUCID, PAPER

    classes = CLASSES[:4] if args.quick else CLASSES
    steps = 20 if args.quick and args.steps is None else (args.steps or PAPER["num_steps"])
    root = pathlib.Path(__file__).parent
    out = pathlib.Path(args.out or ("/tmp/fig1_class_models_quick.png" if args.quick
                                    else root / "figures" / "fig1_class_models.png"))

    model = saliency_jax.load_model()
    rows = [("paper", dict(num_steps=steps, learning_rate=args.lr, l2=args.l2))]
    if not (args.quick or args.no_lucid):
        rows.append(("lucid", {}))
    tiles, captions = [], []
    for preset, options in rows:
        t = time.perf_counter()
        n = options.get("num_steps") or LUCID["num_steps"]
        per_call = max(d for d in range(1, max(1, n // 10) + 1) if n % d == 0)  # one compilation
        with tqdm(total=len(classes) * n, unit="target-step", file=sys.stderr, desc=preset) as bar:
            vis = class_model(model, classes, preset=preset, key=jax.random.key(0), chunk_size=len(classes),
                              steps_per_call=per_call, progress=bar.update, **options)
        seconds = time.perf_counter() - t
        p_model = np.asarray(jax.nn.softmax(model(vis.images), axis=-1))
        p_uint8 = np.asarray(jax.nn.softmax(model(model.preprocess(vis.pixels)), axis=-1))
        print(f"\n{preset} preset: {len(classes)} class models, {vis.values.shape[1]} steps, "
              f"{seconds:.1f} s (with compilation)\n")
        print("| class | label | objective start -> end | p (model space) | p (uint8) | top-1 (uint8) |")
        print("|---|---|---|---|---|---|")
        for i, c in enumerate(classes):
            top = int(np.argmax(p_uint8[i]))
            print(f"| {c} | {model.labels[c]} | {vis.values[i, 0]:.2f} -> {vis.values[i, -1]:.2f} | "
                  f"{p_model[i, c]:.4f} | {p_uint8[i, c]:.4f} | {model.labels[top]} |")
            captions.append(f"{model.labels[c]} ({p_uint8[i, c]:.2f})")
        shown = vis.pixels if preset != "paper" or args.no_stretch else [_stretch(p) for p in vis.pixels]
        tiles += [np.asarray(Image.fromarray(p).resize((args.tile, args.tile), Image.Resampling.LANCZOS))
                  for p in shown]
    grid = render.montage(tiles, labels=captions, cols=6 if len(classes) > 6 else len(classes))
    # Class models are noise-like; a 256-colour palette keeps the PNG small (< 500 KB).
    render.save_png(out, grid, palette=True)
    print(f"\nwrote {out} ({out.stat().st_size // 1024} KB)")


def _stretch(pixels: np.ndarray) -> np.ndarray:
    """Display only: the 1st..99th percentile of the image mapped to 0..255."""
    low, high = np.percentile(pixels, [1, 99])
    scaled = (pixels.astype(np.float32) - low) * (255.0 / max(high - low, 1.0))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


if __name__ == "__main__":
    main()
