"""Table: are the maps faithful? Deletion/insertion AUC per method and the randomisation check.

Run:
    python experiments/metrics_table.py                 # the bundled photographs, 32 steps
    python experiments/metrics_table.py --quick         # two images, three methods, 8 steps (CI smoke)
    python experiments/metrics_table.py --out experiments/figures/metrics_table.md

EfficientNet-Lite0, each photo's top-1 class. Deletion (Petsiuk et al. 2018): pixels replaced
by zeros in model space (grey), most salient first, in equal steps; the AUC of the softmax
probability (lower is better). Insertion: pixels of the photo put back into a blurred copy
(sigma 5 px), most salient first (higher is better). "random" is a uniform random map, the
floor a method must beat. Randomisation check (Adebayo et al. 2018): the layers are redrawn
from the classifier down; Spearman rank correlation and SSIM between the trained model's map
and the randomised model's, at a few stages of the cascade (1 = unchanged; a faithful map
should fall towards 0 as layers are randomised; "k flat": k images whose randomised map was
constant, e.g. an all-zero Grad-CAM, which has no rank correlation).

Deletion replaces pixels one by one in saliency order, so a scattered map (a random one, or a
gradient) turns the photo into grey speckle that no classifier has seen and the score collapses
early, while a smooth map (Grad-CAM) deletes one coherent region and the rest of the object still
gets classified: read deletion next to insertion, not alone.
"""

from __future__ import annotations

import argparse
import pathlib
import time

import jax
import numpy as np

import saliency_jax
from saliency_jax import metrics

METHODS = ("vanilla", "gradient_x_input", "guided", "smoothgrad", "ig", "gradcam")
OPTIONS = {"smoothgrad": {"num_samples": 25}, "ig": {"num_steps": 50}}
RANDOMIZED = ("vanilla", "guided", "gradcam")
SHOWN_STAGES = ("none", "classifier", "head_conv", "mbconv15", "mbconv11", "mbconv7", "mbconv3", "stem_conv")


def _maps(model, x, targets, method, quick):
    if method == "random":
        return np.asarray(jax.random.uniform(jax.random.key(1), x.shape[:3]))
    options = {k: (4 if quick else v) for k, v in OPTIONS.get(method, {}).items()}
    grads = saliency_jax.attribute(model, x, targets, method=method, key=jax.random.key(0), **options)
    return np.asarray(saliency_jax.saliency_map(grads))


def _cell(values: np.ndarray) -> str:
    """Mean over images; a map that became constant has no rank correlation (NaN): counted apart."""
    flat = int(np.isnan(values).sum())
    if flat == len(values):
        return "flat"
    mean = f"{np.nanmean(values):.2f}"
    return f"{mean} ({flat} flat)" if flat else mean


def _table(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two images, three methods, 8 steps")
    parser.add_argument("--steps", type=int, default=None, help="deletion/insertion steps (default 32; quick 8)")
    parser.add_argument("--out", default=None, help="also write the tables to this Markdown file")
    args = parser.parse_args()
    steps = args.steps or (8 if args.quick else 32)
    methods = ("vanilla", "gradcam") if args.quick else METHODS
    randomized = ("vanilla",) if args.quick else RANDOMIZED

    start = time.perf_counter()
    model = saliency_jax.load_model()
    bundled = saliency_jax.bundled_images()
    names = ["chelsea", "coffee"] if args.quick else list(bundled)
    photos = [saliency_jax.load_image(bundled[n]) for n in names]
    x = model.preprocess(photos)
    targets = np.asarray(np.argmax(model(x), -1), np.int32)

    rows = []
    for method in (*methods, "random"):
        maps = _maps(model, x, targets, method, args.quick)
        deletion = np.asarray(metrics.deletion_auc(model, x, maps, targets, num_steps=steps))
        insertion = np.asarray(metrics.insertion_auc(model, x, maps, targets, num_steps=steps))
        rows.append([method, f"{deletion.mean():.3f}", f"{insertion.mean():.3f}",
                     f"{insertion.mean() - deletion.mean():+.3f}"])
    faithfulness = _table(["method", "deletion AUC (lower better)", "insertion AUC (higher better)",
                           "insertion - deletion"], rows)

    rho_rows, ssim_rows = [], []
    for method in randomized:
        options = {k: (4 if args.quick else v) for k, v in OPTIONS.get(method, {}).items()}
        check = metrics.cascading_randomization(model, x, targets, key=jax.random.key(0), method=method, **options)
        index = [check.stages.index(s) for s in SHOWN_STAGES]
        rho_rows.append([method] + [_cell(check.spearman[i]) for i in index])
        ssim_rows.append([method] + [_cell(check.ssim[i]) for i in index])
    header = ["method"] + ["trained" if s == "none" else f"to {s}" for s in SHOWN_STAGES]

    text = "\n\n".join([
        f"Deletion / insertion, {len(names)} bundled photos ({', '.join(names)}), top-1 class, "
        f"{steps} steps, mean over images:",
        faithfulness,
        "Cascading randomisation (classifier first; 'to L' = every layer from the classifier down to L "
        "redrawn), Spearman rank correlation with the trained model's map, mean over images "
        "('k flat': k randomised maps were constant, so had no ranking):",
        _table(header, rho_rows),
        "SSIM with the trained model's map:",
        _table(header, ssim_rows),
    ])
    print(text)
    print(f"\n({time.perf_counter() - start:.0f} s)")
    if args.out:
        path = pathlib.Path(args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
