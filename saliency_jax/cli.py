"""`saliency-jax` command line: a thin layer that parses, calls the library, and reports.

Every failure the user can cause (a missing or corrupt image, an unknown model,
a bad option) ends as one line on stderr and a non-zero exit, never a traceback.
With several inputs, a bad one is reported and skipped; the rest still run and
the exit status is 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from saliency_jax import __version__

EXIT_INPUT_ERROR = 1


class CliError(Exception):
    """A failure to report as one line, then exit non-zero."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="saliency-jax",
        description="Explain what an image classifier looks at (Simonyan et al. 2014, in JAX).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("predict", help="top-K ImageNet classes for each image")
    p.add_argument("images", nargs="*", metavar="IMG", help="image files (default: the bundled examples)")
    p.add_argument("--top", type=_positive_int, default=5, help="classes to show per image (default 5)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--model", default="efficientnet_lite0", help="zoo model name (default efficientnet_lite0)")
    p.add_argument("--batch-size", type=_positive_int, default=32, help="images per forward pass (default 32)")
    p.set_defaults(run=run_predict)

    from saliency_jax.attribution.api import METHODS

    e = sub.add_parser("explain", help="saliency maps (heatmap + overlay PNGs) for each image")
    e.add_argument("images", nargs="*", metavar="IMG", help="image files (default: the bundled examples)")
    e.add_argument("--method", default="vanilla", type=_methods,
                   help=f"comma-separated, from: {', '.join(METHODS)}, or 'all' (default vanilla)")
    e.add_argument("--target", default="top1", type=_target, help="'top1' or a class index (default top1)")
    e.add_argument("--out", default="saliency_out", help="output folder (default ./saliency_out)")
    e.add_argument("--model", default="efficientnet_lite0")
    e.add_argument("--cmap", default="inferno", help="colormap for heatmaps and overlays (default inferno)")
    e.add_argument("--samples", type=_positive_int, default=25, help="SmoothGrad noise samples (default 25)")
    e.add_argument("--steps", type=_positive_int, default=50, help="Integrated Gradients steps (default 50)")
    e.add_argument("--layer", default="head", help="Grad-CAM layer (default head)")
    e.add_argument("--seed", type=int, default=0, help="random seed for noise-based methods")
    e.add_argument("--batch-size", type=_positive_int, default=16)
    e.add_argument("--save-npz", action="store_true", help="also write raw arrays per image (<name>.npz)")
    e.set_defaults(run=run_explain)
    return parser


def _methods(text: str) -> tuple[str, ...]:
    from saliency_jax.attribution.api import METHODS

    names = tuple(METHODS) if text == "all" else tuple(m.strip() for m in text.split(",") if m.strip())
    unknown = [m for m in names if m not in METHODS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown method {', '.join(unknown) or text!r}; choose from {', '.join(METHODS)}")
    return names


def _target(text: str):
    if text == "top1":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'top1' or a class index, got {text!r}") from None


def _load_inputs(paths: Sequence[str]):
    """(loaded [(name, uint8 image)], errors [(name, message)]); bundled examples if no paths."""
    from saliency_jax import images

    if not paths:
        bundled = images.bundled_images()
        print(f"no images given: using the bundled examples ({', '.join(bundled)})", file=sys.stderr)
        paths = [str(p) for p in bundled.values()]
    loaded, errors = [], []
    for path in paths:
        try:
            loaded.append((path, images.load_image(path)))
        except images.ImageError as err:
            errors.append((path, str(err)))
    return loaded, errors


def run_predict(args) -> int:
    from saliency_jax import load_model

    loaded, errors = _load_inputs(args.images)
    for path, message in errors:
        print(f"saliency-jax: error: {message}", file=sys.stderr)
    results = []
    if loaded:
        model = load_model(args.model)
        tops = model.predict([img for _, img in loaded], top=args.top, batch_size=args.batch_size)
        results = [(path, top) for (path, _), top in zip(loaded, tops)]
    if args.json:
        out = [{"image": path, "top": [{"class": c, "label": l, "probability": pr} for c, l, pr in top]}
               for path, top in results]
        out += [{"image": path, "error": message} for path, message in errors]
        print(json.dumps(out, indent=2))
    else:
        for path, top in results:
            print(path)
            for rank, (c, label, prob) in enumerate(top, 1):
                print(f"  {rank:>2}. {label:<30} class {c:>4}  {100 * prob:6.2f}%")
    return EXIT_INPUT_ERROR if errors else 0


def run_explain(args) -> int:
    import pathlib

    import jax
    import numpy as np
    from tqdm import tqdm

    from saliency_jax import load_model, maps, render
    from saliency_jax.attribution.api import METHODS, attribute

    loaded, errors = _load_inputs(args.images)
    for path, message in errors:
        print(f"saliency-jax: error: {message}", file=sys.stderr)
    if not loaded:
        return EXIT_INPUT_ERROR
    model = load_model(args.model)
    if args.cmap not in render.colormap_names():
        raise CliError(f"unknown colormap {args.cmap!r}; choose one of {', '.join(render.colormap_names())}")
    if args.target != "top1" and not 0 <= args.target < model.num_classes:
        raise CliError(f"--target must be 'top1' or a class index in [0, {model.num_classes}), got {args.target}")
    out = pathlib.Path(args.out)
    x = model.preprocess([img for _, img in loaded])
    preds = [top[0] for top in model.predict([img for _, img in loaded], top=1, batch_size=args.batch_size)]
    targets = np.array([p[0] for p in preds] if args.target == "top1" else [args.target] * len(x), np.int32)
    options = {"smoothgrad": {"num_samples": args.samples}, "ig": {"num_steps": args.steps},
               "gradcam": {"layer": args.layer}}
    results = {}
    with tqdm(total=len(x) * len(args.method), unit="img", desc="explain", file=sys.stderr) as bar:
        for method in args.method:
            spec = METHODS[method]
            opts = {k: v for group in options.values() for k, v in group.items() if k in spec.options}
            bar.set_postfix_str(method)
            grads = attribute(model, x, targets, method=method, key=jax.random.key(args.seed),
                              batch_size=args.batch_size, **opts)
            results[method] = (grads, np.asarray(maps.saliency_map(grads)))
            bar.update(len(x))
    for i, (path, image) in enumerate(loaded):
        stem = pathlib.Path(path).stem
        target = int(targets[i])
        tiles, captions = [image], [f"{model.labels[preds[i][0]]} ({100 * preds[i][2]:.0f}%)"]
        for method, (grads, smaps) in results.items():
            render.save_png(out / f"{stem}_{method}_heatmap.png", render.colorize(smaps[i], cmap=args.cmap))
            render.save_png(out / f"{stem}_{method}_overlay.png", render.overlay(image, smaps[i], cmap=args.cmap))
            tiles.append(render.colorize(smaps[i], cmap=args.cmap, size=image.shape[:2]))
            captions.append(method)
        render.save_png(out / f"{stem}_montage.png", render.montage(tiles, labels=captions))
        if args.save_npz:
            np.savez_compressed(out / f"{stem}.npz", target=target, label=model.labels[target],
                                **{f"{m}_attribution": g[i] for m, (g, _) in results.items()},
                                **{f"{m}_saliency": s[i] for m, (_, s) in results.items()})
        print(f"{path}: target {target} ({model.labels[target]})")
    print(f"wrote {len(loaded)} x {len(results)} heatmaps and overlays, plus a montage per image, to {out}/")
    return EXIT_INPUT_ERROR if errors else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (CliError, ValueError, FileNotFoundError, OSError) as err:
        print(f"saliency-jax: error: {err}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    except KeyboardInterrupt:
        print("saliency-jax: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
