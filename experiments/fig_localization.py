"""Figure: weakly supervised localisation (Simonyan et al. 2014, Sec. 3.2, Fig. 3) on the bundled photographs.

Run:
    pip install -e '.[localize]'
    python experiments/fig_localization.py              # -> experiments/figures/localization.png
    python experiments/fig_localization.py --quick      # two images (CI smoke)

Per photo (EfficientNet-Lite0, top-1 class): the photo; the paper's saliency map max_c |dS_c/dI|;
the seeds (red: above the 95% saliency quantile, blue: below the 30% quantile); the largest
component of the GrabCut segmentation seeded by them; and its bounding box.
"""

from __future__ import annotations

import argparse
import pathlib

import jax
import numpy as np
from PIL import Image

import saliency_jax
from saliency_jax.localize import SEGMENTATIONS, draw_boxes, localize, resize_map, seeds
from saliency_jax import render


def _fit(image: np.ndarray, height: int, resample=Image.Resampling.BILINEAR) -> np.ndarray:
    width = round(image.shape[1] * height / image.shape[0])
    return np.asarray(Image.fromarray(image).resize((width, height), resample))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(pathlib.Path(__file__).parent / "figures" / "localization.png"))
    parser.add_argument("--quick", action="store_true", help="two images")
    parser.add_argument("--method", default="vanilla", help="attribution method (default vanilla, the paper)")
    parser.add_argument("--segmentation", default="grabcut", choices=SEGMENTATIONS,
                        help="grabcut (the paper) or threshold (the seeds alone, an ablation)")
    parser.add_argument("--smooth", type=float, default=0.0, help="blur the map before seeding (default 0, the paper)")
    parser.add_argument("--height", type=int, default=150, help="tile height in pixels")
    args = parser.parse_args()

    model = saliency_jax.load_model()
    bundled = saliency_jax.bundled_images()
    names = ["chelsea", "coffee"] if args.quick else list(bundled)
    photos = [saliency_jax.load_image(bundled[n]) for n in names]
    preds = [p[0] for p in model.predict(photos, top=1)]
    targets = np.array([c for c, _, _ in preds], np.int32)
    grads = saliency_jax.attribute(model, model.preprocess(photos), targets, method=args.method,
                                   key=jax.random.key(0))  # used by the sampling methods (smoothgrad, ...)
    maps = np.asarray(saliency_jax.saliency_map(grads))

    tiles, captions = [], []
    for name, photo, (c, label, prob), smap in zip(names, photos, preds, maps):
        found = localize(photo, smap, segmentation=args.segmentation, smooth_sigma=args.smooth)
        full_map = resize_map(smap, photo.shape[:2], smooth_sigma=args.smooth)
        seed_tile = (photo * 0.35).astype(np.uint8)
        if full_map is not None:  # None: a constant map, no seeds
            fg, bg = seeds(full_map)
            seed_tile[fg], seed_tile[bg] = (255, 40, 40), (40, 90, 255)
        masked = np.where(found.mask[:, :, None], photo, (photo * 0.2).astype(np.uint8))
        tile_photo = _fit(photo, args.height)
        scale = args.height / photo.shape[0]
        box = None if found.box is None else tuple(round(v * scale) for v in found.box)
        tiles += [
            tile_photo,
            render.colorize(smap, size=tile_photo.shape[:2]),
            _fit(seed_tile, args.height, Image.Resampling.NEAREST),
            _fit(masked, args.height),
            draw_boxes(tile_photo, [box], width=2),
        ]
        captions += [f"{label} ({100 * prob:.0f}%)", f"saliency ({args.method})", "seeds: 95% / 30%",
                     "graph-cut mask", "box" if box else "no box"]
        print(f"{name}: {label} ({c}) box {found.box} mask {100 * found.mask.mean():.1f}% of the photo")
    grid = render.montage(tiles, cols=5, labels=captions)
    # A 256-colour palette keeps the committed figure small (noisy maps compress poorly).
    path = render.save_png(args.out, grid, palette=True)
    print(f"wrote {path} ({grid.shape[1]}x{grid.shape[0]}, {path.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
