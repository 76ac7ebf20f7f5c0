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


class UsageError(CliError):
    """A flag that does not fit the command (exit 2, like argparse's usage errors, in one line)."""


EXIT_USAGE = 2


def _checked(convert, ok, description: str):
    """An argparse `type`: convert the text, check the value, or fail with 'expected <description>'."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {description}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {description}, got {value}")
        return value

    return parse


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    """--model and --weights, shared by every command that runs a model."""
    parser.add_argument("--model", default="efficientnet_lite0",
                        help="zoo model: efficientnet_lite0..2, vgg16, resnet50 (default efficientnet_lite0)")
    parser.add_argument("--weights", default=None, metavar="FILE",
                        help="checkpoint file (.pth, .safetensors, Keras .h5); required for vgg16/resnet50")


def _load_model(args):
    from saliency_jax import load_model

    return load_model(args.model, weights=args.weights)


_positive_int = _checked(int, lambda v: v >= 1, "a positive integer")
_positive_float = _checked(float, lambda v: 0 < v < float("inf"), "a positive number (not inf or nan)")
_non_negative_float = _checked(float, lambda v: 0 <= v < float("inf"), "a number >= 0 (not inf or nan)")
_fraction = _checked(float, lambda v: 0 < v < 1, "a number in (0, 1)")
_unit_interval = _checked(float, lambda v: 0 <= v <= 1, "a number in [0, 1]")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="saliency-jax",
        description="Explain what an image classifier looks at (Simonyan et al. 2014, in JAX).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--no-compile-cache", action="store_true",
                        help="do not keep compiled programs between runs (default: kept under the cache folder; "
                             "also SALIENCY_JAX_NO_COMPILE_CACHE=1)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("predict", help="top-K ImageNet classes for each image")
    p.add_argument("images", nargs="*", metavar="IMG", help="image files (default: the bundled examples)")
    p.add_argument("--top", type=_positive_int, default=5, help="classes to show per image (default 5)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_model_options(p)
    _add_input_limits(p)
    p.add_argument("--batch-size", type=_positive_int, default=32, help="images per forward pass (default 32)")
    p.set_defaults(run=run_predict)

    from saliency_jax.methods import available_methods

    e = sub.add_parser("explain", help="saliency maps (heatmap + overlay PNGs) for each image")
    e.add_argument("images", nargs="*", metavar="IMG", help="image files (default: the bundled examples)")
    e.add_argument("--method", default="vanilla", type=_methods,
                   help=f"comma-separated, from: {', '.join(available_methods())}, or 'all' (default vanilla)")
    e.add_argument("--target", default="top1", type=_target, help="'top1' or a class index (default top1)")
    e.add_argument("--out", default="saliency_out", help="output folder (default ./saliency_out)")
    _add_model_options(e)
    _add_input_limits(e)
    e.add_argument("--cmap", default="inferno", help="colormap for heatmaps and overlays (default inferno)")
    e.add_argument("--dim", type=_unit_interval, default=None,
                   help="darken the photo in overlays where the map is low, 0..1 (default 0.5, render.OVERLAY_DIM)")
    _add_method_options(e)
    e.add_argument("--seed", type=int, default=0, help="random seed for noise-based methods")
    e.add_argument("--batch-size", type=_positive_int, default=16)
    e.add_argument("--save-npz", action="store_true", help="also write raw arrays per image (<name>.npz)")
    e.set_defaults(run=run_explain)
    _add_maximize_commands(sub)
    _add_localize_command(sub)
    _add_demo_command(sub)
    _add_batch_command(sub)
    _add_features_command(sub)
    return parser


def _methods(text: str) -> tuple[str, ...]:
    from saliency_jax.methods import available_methods

    known = available_methods()
    names = tuple(known) if text == "all" else tuple(m.strip() for m in text.split(",") if m.strip())
    unknown = [m for m in names if m not in known]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown method {', '.join(unknown) or text!r}; choose from {', '.join(known)}")
    return names


def _method(text: str) -> str:
    names = _methods(text)
    if len(names) != 1:
        raise argparse.ArgumentTypeError(f"expected one method, got {text!r}")
    return names[0]


_on_off = _checked(lambda text: ("off", "on").index(text) == 1, lambda value: True, "on or off")

# The one table from flags to method options: (flag, option, type, help). An option reaches every
# chosen method that takes it; a flag that no chosen method takes is a usage error (exit 2).
METHOD_FLAGS = (
    ("--samples", "num_samples", _positive_int, "noise samples of the SmoothGrad family (default 25); "
                                                "KernelSHAP / LIME coalitions (default 1000)"),
    ("--noise-scale", "noise_scale", _non_negative_float, "SmoothGrad noise std / value range (default 0.15)"),
    ("--steps", "num_steps", _positive_int, "Integrated Gradients path steps (default 50)"),
    ("--quadrature", "quadrature", str, "Integrated Gradients quadrature: midpoint, left, right, trapezoid, "
                                        "gausslegendre (default midpoint)"),
    ("--layer", "layer", str, "layer of the CAM methods (default: the model's, e.g. head, conv5_3, layer4)"),
    ("--relu", "relu", _on_off, "CAM methods: clip the map at zero, on or off (off: the signed map; default on)"),
    ("--score", "score", str, "Score-CAM channel weights: softmax, logit, probability (default softmax)"),
    ("--fraction", "fraction", _positive_float, "Guided IG: share of features moved per selection, (0, 1] "
                                                "(default 0.25)"),
    ("--max-dist", "max_dist", _unit_interval, "Guided IG: how far the path may leave the straight line, "
                                               "[0, 1] (default 0.02)"),
    ("--max-sigma", "max_sigma", _positive_float, "Blur IG: blur std in pixels at the path's start (default 50)"),
    ("--grad-step", "grad_step", _positive_float, "Blur IG: sigma step of the blur's derivative (default 0.01)"),
    ("--composite", "composite", str, "LRP composite: epsilon, epsilon_plus, epsilon_plus_flat, epsilon_gamma_box, "
                                      "alpha_beta (default epsilon_plus_flat)"),
    ("--epsilon", "epsilon", _non_negative_float, "LRP epsilon rule's stabiliser (default 1e-6)"),
    ("--gamma", "gamma", _non_negative_float, "LRP gamma rule's weight on positive parts (default 0.25)"),
    ("--window", "window", _positive_int, "occlusion: window side in pixels (default 16)"),
    ("--stride", "stride", _positive_int, "occlusion: window step in pixels (default 8)"),
    ("--segments", "segments", str, "features of feature_ablation, shapley_sampling, kernel_shap, lime: grid, slic, "
                                    "felzenszwalb (default grid); xrai: felzenszwalb (default) or grid"),
    ("--num-segments", "num_segments", _positive_int, "segments asked of grid / slic (default 16); xrai's finest "
                                                      "grid side (default 8)"),
    ("--blur-baseline", "blur_sigma", _positive_float, "perturbation methods: the baseline is the image blurred "
                                                       "by this std in pixels (default: a zero baseline)"),
    ("--masks", "num_masks", _positive_int, "RISE: random masks (default 2000)"),
    ("--cell", "cell", _positive_int, "RISE: grid cells per side of each mask (default 7)"),
    ("--p-keep", "p_keep", _fraction, "RISE: probability a cell is kept, (0, 1) (default 0.5)"),
    ("--permutations", "num_permutations", _positive_int, "Shapley value sampling: permutations (default 25)"),
)


def _add_method_options(parser: argparse.ArgumentParser) -> None:
    for flag, option, kind, text in METHOD_FLAGS:
        parser.add_argument(flag, dest=f"method_{option}", type=kind, default=None, help=text)


def _method_values(names: Sequence[str], args) -> list:
    """Method values for `names` from the METHOD_FLAGS given on the command line (UsageError if one fits none)."""
    from saliency_jax.methods import get, option_names

    given = {option: getattr(args, f"method_{option}") for _, option, _, _ in METHOD_FLAGS}
    given = {k: v for k, v in given.items() if v is not None}
    for flag, option, _, _ in METHOD_FLAGS:
        if option in given and not any(option in option_names(n) for n in names):
            raise UsageError(f"{flag} does not apply to {', '.join(names)}")
    try:
        return [get(n, **{k: v for k, v in given.items() if k in option_names(n)}) for n in names]
    except ValueError as err:
        raise UsageError(str(err)) from None


def _target(text: str):
    if text == "top1":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'top1' or a class index, got {text!r}") from None


def _add_input_limits(parser: argparse.ArgumentParser) -> None:
    """--max-pixels and --max-bytes, shared by every command that reads image files."""
    from saliency_jax.data import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS

    parser.add_argument("--max-pixels", type=_positive_int, default=DEFAULT_MAX_PIXELS,
                        help=f"larger images are errors, never decoded (default {DEFAULT_MAX_PIXELS})")
    parser.add_argument("--max-bytes", type=_positive_int, default=DEFAULT_MAX_BYTES,
                        help=f"larger files are errors, never read (default {DEFAULT_MAX_BYTES} = 256 MiB)")


def _load_inputs(args):
    """(loaded [(name, uint8 image)], errors [(name, message)]) of args.images within args.max_pixels and
    args.max_bytes; the bundled examples if no paths."""
    from saliency_jax import images

    paths = args.images
    if not paths:
        bundled = images.bundled_images()
        print(f"no images given: using the bundled examples ({', '.join(bundled)})", file=sys.stderr)
        paths = [str(p) for p in bundled.values()]
    loaded, errors = [], []
    for path in paths:
        try:
            loaded.append((path, images.load_image(path, max_pixels=args.max_pixels, max_bytes=args.max_bytes)))
        except images.ImageError as err:
            errors.append((path, str(err)))
    return loaded, errors


def run_predict(args) -> int:
    loaded, errors = _load_inputs(args)
    for path, message in errors:
        print(f"saliency-jax: error: {message}", file=sys.stderr)
    results = []
    if loaded:
        model = _load_model(args)
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

    from saliency_jax import maps, render
    from saliency_jax.progress import open_bar
    from saliency_jax.methods import attribute

    loaded, errors = _load_inputs(args)
    for path, message in errors:
        print(f"saliency-jax: error: {message}", file=sys.stderr)
    if not loaded:
        return EXIT_INPUT_ERROR
    values = _method_values(args.method, args)
    model = _load_model(args)
    if args.cmap not in render.colormap_names():
        raise CliError(f"unknown colormap {args.cmap!r}; choose one of {', '.join(render.colormap_names())}")
    if args.target != "top1" and not 0 <= args.target < model.num_classes:
        raise CliError(f"--target must be 'top1' or a class index in [0, {model.num_classes}), got {args.target}")
    dim = render.OVERLAY_DIM if args.dim is None else args.dim
    out = pathlib.Path(args.out)
    x = model.preprocess([img for _, img in loaded])
    preds = [top[0] for top in model.predict([img for _, img in loaded], top=1, batch_size=args.batch_size)]
    targets = np.array([p[0] for p in preds] if args.target == "top1" else [args.target] * len(x), np.int32)
    results = {}
    with open_bar(len(x) * len(values), desc="explain") as bar:
        for name, method in zip(args.method, values):
            bar.set_postfix_str(name)
            # a long-running method (hundreds of passes per image) moves the bar per chunk; the others,
            # whose programs the program cache may store (it cannot store progress callbacks), once per call
            chunked = method.long_running
            grads = attribute(model, x, targets, method=method, key=jax.random.key(args.seed),
                              batch_size=min(args.batch_size, len(x)), progress=bar.update if chunked else None)
            results[name] = (grads, np.asarray(maps.saliency_map(grads, relative=method.display_relative)))
            if not chunked:
                bar.update(len(x))
    for i, (path, image) in enumerate(loaded):
        stem = pathlib.Path(path).stem
        target = int(targets[i])
        tiles, captions = [image], [f"{model.labels[preds[i][0]]} ({100 * preds[i][2]:.0f}%)"]
        for method, (grads, smaps) in results.items():
            render.save_png(out / f"{stem}_{method}_heatmap.png", render.colorize(smaps[i], cmap=args.cmap))
            overlay = render.overlay(image, smaps[i], cmap=args.cmap, dim=dim)
            render.save_png(out / f"{stem}_{method}_overlay.png", overlay)
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


# ---- class-model / neuron: activation maximisation (saliency_jax.maximize) -----------------------
def _add_maximize_commands(sub) -> None:
    from saliency_jax.maximize.presets import PRESETS

    def common(p, preset: str, out: str) -> None:
        p.add_argument("--preset", default=preset, choices=PRESETS,
                       help=f"paper: S - l2*||I||^2 from the zero image; sphere: ||I|| = radius; "
                            f"lucid: Fourier/decorrelated image + random transforms (default {preset})")
        p.add_argument("--steps", type=_positive_int, default=None, help="ascent steps (default: the preset's)")
        p.add_argument("--lr", type=_positive_float, default=None, help="Adam learning rate (default: the preset's)")
        p.add_argument("--l2", type=_non_negative_float, default=None, help="L2 penalty weight (paper preset)")
        p.add_argument("--radius", type=_positive_float, default=None, help="||I||_2 in model space (sphere preset)")
        p.add_argument("--seed", type=int, default=0, help="random seed (start image, transforms)")
        p.add_argument("--chunk-size", type=_positive_int, default=8, help="targets optimised at once (default 8)")
        _add_model_options(p)
        p.add_argument("--out", default=out, help=f"output folder (default ./{out})")

    c = sub.add_parser("class-model", help="class model visualisation: the image each class scores highest")
    c.add_argument("--classes", required=True, type=_int_list, help="comma-separated class indices, e.g. 130,285,967")
    common(c, "paper", "class_models")
    c.set_defaults(run=run_class_model)

    n = sub.add_parser("neuron", help="activation maximisation of units of a named layer")
    n.add_argument("--layer", required=True, help="layer name (see the model's layers, e.g. block9, head)")
    n.add_argument("--channel", required=True, type=_int_list, help="comma-separated channel indices")
    n.add_argument("--position", default=None, type=_position,
                   help="'ROW,COL' in the layer's grid, or 'center' (default: the channel mean)")
    common(n, "sphere", "neuron_out")
    n.set_defaults(run=run_neuron)


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def _position(text: str):
    if text == "center":
        return text
    parts = text.split(",")
    try:
        row, col = (int(v) for v in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ROW,COL or 'center', got {text!r}") from None
    return (row, col)


def _steps_per_call(steps: int) -> int:
    """A divisor of `steps` near steps / 10, so the progress bar moves ~10 times per chunk."""
    return max(d for d in range(1, max(1, steps // 10) + 1) if steps % d == 0)


def _maximize(args, run, targets: list[int], unit: str):
    """Runs `run(model, **options)` under a progress bar over target-steps; returns (model, Visualization)."""
    import jax

    from saliency_jax.maximize.presets import LUCID, PAPER, SPHERE
    from saliency_jax.progress import open_bar

    model = _load_model(args)
    steps = args.steps or {"paper": PAPER, "sphere": SPHERE, "lucid": LUCID}[args.preset]["num_steps"]
    overrides = {"num_steps": steps, "learning_rate": args.lr}
    if args.l2 is not None:
        overrides["l2"] = args.l2
    if args.radius is not None:
        overrides["radius"] = args.radius
    bars = []

    def progress(n: int) -> None:  # the bar opens when visualize has checked its inputs (bad ones: no bar)
        if not bars:
            bars.append(open_bar(len(targets) * steps, unit=unit, desc=args.command, postfix="compiling"))
        elif n and bars[0].n == 0:
            first = bars[0].format_dict["elapsed"]
            bars[0].set_postfix_str(f"first call {first:.0f} s incl. compile", refresh=False)
        bars[0].update(n)

    try:
        vis = run(model, preset=args.preset, key=jax.random.key(args.seed), chunk_size=args.chunk_size,
                  steps_per_call=_steps_per_call(steps), progress=progress, **overrides)
    finally:
        for bar in bars:
            bar.close()
    return model, vis


def _write_pngs(out, names: list[str], captions: list[str], pixels) -> None:
    from saliency_jax import render

    for name, image in zip(names, pixels):
        render.save_png(out / f"{name}.png", image)
    render.save_png(out / "montage.png", render.montage(list(pixels), labels=captions))


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in text.lower()).strip("_")[:40]


def run_class_model(args) -> int:
    import pathlib

    from saliency_jax.maximize import class_model

    model, vis = _maximize(args, lambda model, **kw: class_model(model, args.classes, **kw), args.classes,
                           "target-step")
    tops = model.predict(list(vis.pixels), top=model.num_classes, batch_size=args.chunk_size)
    out = pathlib.Path(args.out)
    names, captions = [], []
    for c, top, values in zip(args.classes, tops, vis.values):
        prob = next(p for k, _, p in top if k == c)
        names.append(f"class_{c:04d}_{_slug(model.labels[c])}")
        captions.append(f"{model.labels[c]} ({100 * prob:.0f}%)")
        print(f"class {c:>4} {model.labels[c]:<28} objective {values[0]:8.2f} -> {values[-1]:8.2f}   "
              f"p={prob:.3f}  top-1: {top[0][1]}")
    _write_pngs(out, names, captions, vis.pixels)
    print(f"wrote {len(names)} class models and montage.png to {out}/")
    return 0


def run_neuron(args) -> int:
    import pathlib

    from saliency_jax.maximize import neuron_model

    model, vis = _maximize(
        args, lambda model, **kw: neuron_model(model, args.layer, args.channel, position=args.position, **kw),
        args.channel, "target-step")
    out = pathlib.Path(args.out)
    where = "" if args.position is None else ("@center" if args.position == "center" else
                                              f"@{args.position[0]},{args.position[1]}")
    names = [f"{args.layer}_ch{k:04d}" for k in args.channel]
    captions = [f"{args.layer} ch {k}{where}" for k in args.channel]
    for k, values, norms in zip(args.channel, vis.values, vis.norms):
        print(f"{args.layer} channel {k:>4}{where}: activation {values[0]:8.3f} -> {values[-1]:8.3f}   "
              f"||I|| {norms[-1]:.1f}")
    _write_pngs(out, names, captions, vis.pixels)
    print(f"wrote {len(names)} images and montage.png to {out}/")
    return 0


# ---- localize: weakly supervised object boxes (saliency_jax.localize) ------------------------------
def _add_localize_command(sub) -> None:
    from saliency_jax.localize import SEGMENTATIONS
    from saliency_jax.methods import available_methods

    z = sub.add_parser("localize", help="object boxes from saliency maps by graph cut (paper Sec. 3.2)")
    z.add_argument("images", nargs="*", metavar="IMG", help="image files (default: the bundled examples)")
    z.add_argument("--out", default="localize_out", help="output folder (default ./localize_out)")
    z.add_argument("--top-k", type=_positive_int, default=1, help="one box per class for the top-K classes (default 1)")
    z.add_argument("--method", default="vanilla", type=_method,
                   help=f"attribution method for the maps, one of: {', '.join(available_methods())} "
                        "(default vanilla, the paper)")
    z.add_argument("--segmentation", default="grabcut", choices=SEGMENTATIONS,
                   help="grabcut: colour-model graph cut (paper; needs OpenCV); threshold: the seeds alone")
    z.add_argument("--fg-quantile", type=_fraction, default=0.95, help="foreground seeds above it (default 0.95)")
    z.add_argument("--bg-quantile", type=_fraction, default=0.30, help="background seeds below it (default 0.30)")
    z.add_argument("--smooth", type=float, default=0.0,
                   help="Gaussian blur of the map before seeding, in map pixels (default 0, the paper)")
    _add_model_options(z)
    _add_input_limits(z)
    z.add_argument("--seed", type=int, default=0, help="random seed for noise-based methods")
    z.set_defaults(run=run_localize)


def run_localize(args) -> int:
    import pathlib

    import jax
    import numpy as np

    from saliency_jax import render
    from saliency_jax.localize import draw_boxes, import_cv2, localize_topk

    if args.bg_quantile >= args.fg_quantile:
        raise CliError(f"--bg-quantile ({args.bg_quantile}) must be below --fg-quantile ({args.fg_quantile})")
    if not 0 <= args.smooth < 1e3:
        raise CliError(f"--smooth must be a number >= 0 (pixels), got {args.smooth}")
    if args.segmentation == "grabcut":
        try:
            import_cv2()
        except ImportError as err:
            raise CliError(f"{err} (or use --segmentation threshold)") from None
    loaded, errors = _load_inputs(args)
    for path, message in errors:
        print(f"saliency-jax: error: {message}", file=sys.stderr)
    if not loaded:
        return EXIT_INPUT_ERROR
    model = _load_model(args)
    if args.top_k > model.num_classes:
        raise CliError(f"--top-k must be at most {model.num_classes}, got {args.top_k}")
    out = pathlib.Path(args.out)
    failed = len(errors)
    for path, image in loaded:
        try:
            found = localize_topk(
                model, image, k=args.top_k, method=args.method, segmentation=args.segmentation,
                fg_quantile=args.fg_quantile, bg_quantile=args.bg_quantile, smooth_sigma=args.smooth,
                key=jax.random.key(args.seed),
            )
        except ValueError as err:
            print(f"saliency-jax: error: {path}: {err}", file=sys.stderr)
            failed += 1
            continue
        stem = pathlib.Path(path).stem
        captions = [f"{r}. {c.label} {100 * c.probability:.0f}%" for r, c in enumerate(found, 1)]
        render.save_png(out / f"{stem}_boxes.png",
                        draw_boxes(image, [c.localization.box for c in found], captions))
        print(path)
        for r, c in enumerate(found, 1):
            suffix = "" if r == 1 else f"_top{r}"
            render.save_png(out / f"{stem}_mask{suffix}.png", c.localization.mask.astype(np.uint8) * 255)
            where = f"box {c.localization.box}" if c.localization.box else "no box (constant saliency map)"
            print(f"  {r:>2}. {c.label:<30} class {c.target:>4}  {100 * c.probability:6.2f}%  {where}")
    if len(loaded) + len(errors) > failed:
        print(f"wrote a box image and {args.top_k} mask(s) per image to {out}/")
    return EXIT_INPUT_ERROR if failed else 0


def _add_demo_command(sub) -> None:
    d = sub.add_parser("demo", help="everything on the bundled photos, into a folder with an index.html")
    d.add_argument("--out", default="saliency_demo", help="output folder (default ./saliency_demo)")
    d.add_argument("--quick", action="store_true", help="two photos, three methods, few steps")
    d.set_defaults(run=run_demo)


def run_demo(args) -> int:
    from saliency_jax.demo import run_demo as demo

    index = demo(args.out, quick=args.quick)
    print(f"done: open {index.resolve()} in a browser (PNGs beside it)")
    return 0


# ---- batch: a whole folder / glob / TFDS split, resumable, data parallel (saliency_jax.jobs) ----
def _add_batch_command(sub) -> None:
    from saliency_jax.data import FINGERPRINTS
    from saliency_jax.methods import available_methods

    b = sub.add_parser(
        "batch", help="saliency maps for a whole folder, glob or TFDS split, in resumable NPZ shards",
        description="Streams SOURCE through the compiled attribution on all local devices and writes "
                    "OUT/shards/*.npz, OUT/index.csv and OUT/errors.txt. Run the same command again to "
                    "resume after an interruption.")
    b.add_argument("source", metavar="SOURCE",
                   help="a folder, a glob ('imgs/**/*.jpg'), tfds:NAME:SPLIT or imagefolder:ROOT:SPLIT")
    b.add_argument("--out", required=True, help="output folder (created; reused to resume)")
    b.add_argument("--method", default="vanilla", type=_method,
                   help=f"one of: {', '.join(available_methods())} (default vanilla)")
    b.add_argument("--targets", default="top1", type=_batch_targets,
                   help="'top1', 'label' (the source's labels) or a class index (default top1)")
    _add_model_options(b)
    b.add_argument("--batch-size", type=_positive_int, default=32,
                   help="images per step, rounded up to a multiple of the device count (default 32)")
    b.add_argument("--shard-size", type=_positive_int, default=1024,
                   help="source images per output shard, the resume granularity (default 1024)")
    _add_method_options(b)
    b.add_argument("--seed", type=int, default=0, help="random seed for noise-based methods")
    b.add_argument("--float16", action="store_true", help="store maps as float16")
    b.add_argument("--save-png", action="store_true", help="also write an overlay PNG per image (OUT/png/)")
    b.add_argument("--cmap", default="inferno", help="colormap of the overlays (default inferno)")
    b.add_argument("--data-dir", default=None, help="TFDS data folder (tfds: sources)")
    b.add_argument("--manual-dir", default=None, help="TFDS manual folder, to prepare e.g. imagenet2012 from tars")
    b.add_argument("--labels", default="auto", choices=("auto", "dirs", "none"),
                   help="folder labels from ROOT/<class>/<image> (default auto)")
    b.add_argument("--workers", type=_positive_int, default=None, help="decoding threads (default: CPU cores)")
    _add_input_limits(b)
    b.add_argument("--fingerprint", default="stat", choices=FINGERPRINTS,
                   help="on resume, how a changed image is told (its shard is computed again): 'stat' size and "
                        "mtime, 'content' a hash of every finished image, read again (default stat)")
    b.add_argument("--recompute-damaged", action="store_true",
                   help="on resume, compute a damaged shard again instead of stopping with its name")
    b.add_argument("--distributed", action="store_true",
                   help="multi-host: jax.distributed.initialize(); each host takes its slice of SOURCE")
    b.add_argument("--coordinator", default=None, help="with --distributed: coordinator HOST:PORT")
    b.add_argument("--num-processes", type=_positive_int, default=None, help="with --distributed")
    b.add_argument("--process-id", type=int, default=None, help="with --distributed")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    b.set_defaults(run=run_batch)


def _batch_targets(text: str):
    if text in ("top1", "label"):
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'top1', 'label' or a class index, got {text!r}") from None


def run_batch(args) -> int:
    from saliency_jax import sharding

    if args.distributed:  # before anything else touches JAX's backends
        sharding.initialize_distributed(args.coordinator, args.num_processes, args.process_id)
    elif args.coordinator or args.num_processes or args.process_id is not None:
        raise CliError("--coordinator/--num-processes/--process-id need --distributed")

    from saliency_jax import render
    from saliency_jax.data import open_source
    from saliency_jax.jobs import JobError, ensure_writable, run_batch_job

    if args.save_png and args.cmap not in render.colormap_names():
        raise CliError(f"unknown colormap {args.cmap!r}; choose one of {', '.join(render.colormap_names())}")
    (method,) = _method_values([args.method], args)
    source = open_source(args.source, data_dir=args.data_dir, manual_dir=args.manual_dir, labels=args.labels)
    try:
        ensure_writable(args.out)  # fail in one line before the model loads
    except JobError as err:
        raise CliError(str(err)) from None
    model = _load_model(args)
    print(f"{source.spec}: {source.num_examples} images -> {args.out}/ ({args.method}, targets {args.targets})",
          file=sys.stderr)
    try:
        summary = run_batch_job(
            source, model, args.out, method=method, targets=args.targets, batch_size=args.batch_size,
            shard_size=args.shard_size, seed=args.seed, float16=args.float16,
            save_png=args.save_png, cmap=args.cmap, workers=args.workers, max_pixels=args.max_pixels,
            max_bytes=args.max_bytes, fingerprint=args.fingerprint, recompute_damaged=args.recompute_damaged,
            progress=not args.no_progress,
        )
    except JobError as err:
        raise CliError(str(err)) from None
    print(summary)
    return EXIT_INPUT_ERROR if summary.errors else 0


# ---- features: what a channel responds to across a dataset (saliency_jax.features) ---------------
def _add_features_command(sub) -> None:
    from saliency_jax.attribution.rules import RULES

    f = sub.add_parser(
        "features", help="each channel's top-k activations over a dataset, projected beside their image patches",
        description="Streams SOURCE through the model, keeps each channel's k strongest activations, projects "
                    "each to pixels and writes per channel OUT/<layer>_chNNNN.png (projections left, image "
                    "patches right, Zeiler & Fergus 2014) and OUT/topk.json.")
    f.add_argument("--layer", required=True, help="spatial layer name (see the model's layers, e.g. block5, head)")
    f.add_argument("--channels", required=True, type=_int_list, help="comma-separated channel indices, e.g. 0,5,17")
    f.add_argument("--source", default=None,
                   help="a folder, a glob, tfds:NAME:SPLIT or imagefolder:ROOT:SPLIT (default: the bundled photos)")
    f.add_argument("--k", type=_positive_int, default=9, help="activations shown per channel (default 9)")
    f.add_argument("--per-image", type=_positive_int, default=None,
                   help="positions one image may contribute (default 1, or ceil(k / images) for a smaller source)")
    f.add_argument("--min-distance", type=_checked(int, lambda v: v >= 0, "an integer >= 0"), default=1,
                   help="with --per-image > 1: an image's picks differ by more than this many grid cells (default 1)")
    f.add_argument("--rule", default="deconvnet", choices=RULES, help="projection rule (default deconvnet)")
    f.add_argument("--tile", type=_positive_int, default=64, help="cell size of the grids in pixels (default 64)")
    f.add_argument("--batch-size", type=_positive_int, default=32, help="images per step (default 32)")
    _add_model_options(f)
    f.add_argument("--data-dir", default=None, help="TFDS data folder (tfds: sources)")
    f.add_argument("--workers", type=_positive_int, default=None, help="decoding threads (default: CPU cores)")
    _add_input_limits(f)
    f.add_argument("--no-progress", action="store_true", help="no progress bar")
    f.add_argument("--out", required=True, help="output folder")
    f.set_defaults(run=run_features)


def run_features(args) -> int:
    import pathlib

    from saliency_jax import render
    from saliency_jax.data import open_source
    from saliency_jax.features import feature_grid, project_top, result_table, top_activations
    from saliency_jax.features.collect import resolve_source
    from saliency_jax.features.topk import layer_shape

    source = open_source(args.source, data_dir=args.data_dir) if args.source else resolve_source(None)
    model = _load_model(args)
    layer_shape(model, args.layer, args.channels)  # bad layer or channel: fail before anything is printed
    per_image = args.per_image
    if per_image is None:
        per_image = max(1, -(-args.k // source.num_examples))
        if per_image > 1:
            print(f"{source.num_examples} images < k={args.k}: taking up to {per_image} positions per image "
                  "(--per-image)", file=sys.stderr)
    result = top_activations(model, source, args.layer, args.channels, k=args.k, per_image=per_image,
                             min_distance=args.min_distance if per_image > 1 else 0, batch_size=args.batch_size,
                             workers=args.workers, progress=not args.no_progress, max_pixels=args.max_pixels,
                             max_bytes=args.max_bytes)
    for image_id, name, reason in result.errors:
        print(f"saliency-jax: error: {name}: {reason}", file=sys.stderr)
    tops = project_top(model, result, rule=args.rule, batch_size=min(args.batch_size, 16))
    out = pathlib.Path(args.out)
    for channel, projections, patches in zip(tops.channels, tops.projections, tops.patches):
        grid = feature_grid(projections, patches, tile=args.tile, label=f"{args.layer} channel {channel} ({args.rule})")
        render.save_png(out / f"{args.layer}_ch{channel:04d}.png", grid)
    field = tops.field
    report = {
        "model": model.name, "source": args.source or "bundled", "layer": args.layer, "rule": args.rule,
        "k": args.k, "per_image": per_image, "min_distance": args.min_distance if per_image > 1 else 0,
        "grid": list(result.grid), "images": result.num_images,
        "receptive_field": {"size": list(field.size), "stride": list(field.stride), "offset": list(field.offset)},
        "channels": result_table(result, tops.windows, tops.names, tops.paths),
        "errors": [{"image_id": i, "image": name, "error": reason} for i, name, reason in result.errors],
    }
    (out / "topk.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {len(result.channels)} grids ({args.layer}, k={args.k}) and topk.json to {out}/")
    return EXIT_INPUT_ERROR if result.errors else 0


def entry() -> None:
    """The `saliency-jax` console script: huge pages on for XLA's buffers (see `allocator`), then `main`."""
    from saliency_jax.allocator import reexec_with_hugepages

    reexec_with_hugepages(["-m", "saliency_jax.cli", *sys.argv[1:]])
    sys.exit(main())


def one_line(err: BaseException, limit: int = 500) -> str:
    """An exception's message as one line of at most `limit` characters."""
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.no_compile_cache:
        from saliency_jax.compile_cache import enable_compile_cache

        enable_compile_cache()
    try:
        return args.run(args)
    except UsageError as err:
        print(f"saliency-jax {args.command}: error: {one_line(err)}", file=sys.stderr)
        return EXIT_USAGE
    except (CliError, ValueError, FileNotFoundError, OSError) as err:
        print(f"saliency-jax: error: {one_line(err)}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    except MemoryError:
        print("saliency-jax: error: out of memory (an input needs more memory than this machine has)",
              file=sys.stderr)
        return EXIT_INPUT_ERROR
    except RecursionError:
        print("saliency-jax: error: an input is nested too deeply to read", file=sys.stderr)
        return EXIT_INPUT_ERROR
    except KeyboardInterrupt:
        print("saliency-jax: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
