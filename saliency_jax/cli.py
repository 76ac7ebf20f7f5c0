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
    return parser


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
