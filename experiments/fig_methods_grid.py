"""Figure: every attribution method on the bundled photographs (rows: images; columns: methods).

Run:
    python experiments/fig_methods_grid.py                 # -> experiments/figures/methods_grid.png
    python experiments/fig_methods_grid.py --quick         # two images, cheap settings (CI smoke)

Column 2 is the paper's image-specific class saliency (Simonyan et al. 2014, Fig. 2):
max over colour channels of |dS_c/dI| for the top-1 class, one backward pass.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import jax
import numpy as np

import saliency_jax
from PIL import Image
from tqdm import tqdm

from saliency_jax import render

METHODS = ("vanilla", "deconvnet", "guided", "smoothgrad", "ig", "guided_ig", "blur_ig", "expected_gradients",
           "lrp", "deeplift", "gradcam", "guided_gradcam", "gradcam_plus_plus", "xgradcam", "layercam", "hirescam",
           "eigencam", "scorecam", "ablationcam", "occlusion", "rise", "kernel_shap", "lime", "xrai")
OPTIONS = {"smoothgrad": {"num_samples": 25}, "ig": {"num_steps": 50}, "guided_ig": {"num_steps": 100},
           "blur_ig": {"num_steps": 50}, "expected_gradients": {"num_samples": 25},
           "occlusion": {"window": 16, "stride": 8}, "rise": {"num_masks": 2000},
           "kernel_shap": {"num_segments": 49, "num_samples": 1000}, "lime": {"num_segments": 49, "num_samples": 1000},
           "xrai": {"num_steps": 50}}
QUICK = {"smoothgrad": {"num_samples": 4}, "ig": {"num_steps": 4}, "guided_ig": {"num_steps": 4},
         "blur_ig": {"num_steps": 4}, "expected_gradients": {"num_samples": 4}, "occlusion": {"window": 56, "stride": 56},
         "rise": {"num_masks": 32}, "kernel_shap": {"num_segments": 16, "num_samples": 64},
         "lime": {"num_segments": 16, "num_samples": 64}, "xrai": {"num_steps": 4}}

def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(pathlib.Path(__file__).parent / "figures" / "methods_grid.png"))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--tile", type=int, default=144, help="tile size in pixels")
    args = parser.parse_args()

    model = saliency_jax.load_model()
    names = ["chelsea", "coffee"] if args.quick else list(saliency_jax.bundled_images())
    photos = [saliency_jax.load_image(saliency_jax.bundled_images()[n]) for n in names]
    x = model.preprocess(photos)
    preds = [p[0] for p in model.predict(photos, top=1)]
    targets = np.array([p[0] for p in preds], np.int32)
    key = jax.random.key(0)
    columns = {}
    for method in tqdm(METHODS, desc="methods", file=sys.stderr):
        opts = (QUICK if args.quick else OPTIONS).get(method, {})
        value = saliency_jax.methods.get(method, **opts)
        grads = saliency_jax.attribute(model, x, targets, method=value, key=key)
        columns[method] = np.asarray(saliency_jax.saliency_map(grads, relative=value.display_relative))
    size = (args.tile, args.tile)
    tiles, labels = [], []
    for i, (photo, (_, label, prob)) in enumerate(zip(photos, preds)):
        tiles.append(np.asarray(Image.fromarray(photo).resize(size[::-1], Image.Resampling.BILINEAR)))
        labels.append(f"{label} ({100 * prob:.0f}%)")
        for method in METHODS:
            tiles.append(render.colorize(columns[method][i], size=size))
            labels.append(method)
    grid = render.montage(tiles, cols=len(METHODS) + 1, labels=labels)
    # A 256-colour palette keeps the committed figure small (noisy maps compress poorly).
    path = render.save_png(args.out, grid, palette=True)
    print(f"wrote {path} ({grid.shape[1]}x{grid.shape[0]}, {path.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
