"""Figure: what channels respond to (Zeiler & Fergus 2014, Fig. 2) from early to late layers of EfficientNet-Lite0.

Run:
    python experiments/fig_features.py            # -> experiments/figures/features_<layer>.png (4 layers)
    python experiments/fig_features.py --quick    # two layers, two channels each (CI smoke)

For each layer, every channel's top-9 activations over the bundled photographs
are found by the streaming top-k (3 positions per photo, at least 3 grid cells
apart, since there are only 4 photos); the channels with the strongest top
activation are shown. Per channel: left, the 9 activations projected to pixels
with the deconvnet rule and cropped to their receptive field; right, the same
crops of the photo (at the network's 224x224 input).

The last layer shown is block15 (the last MBConv block, a linear projection),
not "head": the head's ReLU6 saturates at 6 for its strongest activations, and
the projection through the clipped ReLU6 (whose upper clip keeps its true,
zero gradient) is then exactly zero.
"""

from __future__ import annotations

import argparse
import pathlib
import time

import saliency_jax
from saliency_jax import render
from saliency_jax.features import feature_grid, project_top, top_activations
from saliency_jax.features.topk import layer_shape


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(pathlib.Path(__file__).parent / "figures"))
    parser.add_argument("--quick", action="store_true", help="two layers, two channels")
    parser.add_argument("--layers", default=None, help="comma-separated (default block1,block5,block10,block15)")
    parser.add_argument("--channels", type=int, default=4, help="channels shown per layer (default 4)")
    parser.add_argument("--rule", default="deconvnet", help="projection rule (default deconvnet)")
    parser.add_argument("--tile", type=int, default=64, help="cell size in pixels")
    args = parser.parse_args()

    model = saliency_jax.load_model()
    layers = args.layers.split(",") if args.layers else (["block1", "block5"] if args.quick else
                                                         ["block1", "block5", "block10", "block15"])
    shown = 2 if args.quick else args.channels
    for layer in layers:
        t0 = time.perf_counter()
        num_channels = layer_shape(model, layer, [0])[-1]
        result = top_activations(model, None, layer, range(num_channels), k=9, per_image=3, min_distance=2,
                                 progress=False)
        channels = result.strongest(shown)
        tops = project_top(model, result.select(channels), rule=args.rule)
        grids = [feature_grid(p, q, tile=args.tile) for p, q in zip(tops.projections, tops.patches)]
        figure = render.montage(grids, cols=2, pad=8, labels=[f"{layer} channel {c}" for c in channels])
        path = render.save_png(pathlib.Path(args.out) / f"features_{layer}.png", figure, palette=True)
        print(f"{layer}: channels {channels}, receptive field {tops.field.size[0]} px, stride "
              f"{tops.field.stride[0]} -> {path} ({path.stat().st_size // 1024} KB, {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
