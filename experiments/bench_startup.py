"""Start-up: `saliency-jax explain --method vanilla,smoothgrad` of the bundled photos, first vs second process.

    . /work/venv/bin/activate && python experiments/bench_startup.py [--repeats 2] [--method vanilla,smoothgrad]

Each row is a new process timed from the outside (wall clock), in a fresh cache folder
(`SALIENCY_JAX_CACHE`) whose converted params are made once beforehand, so every row pays the
same imports and model load:
  * no caches (`--no-compile-cache`): trace, compile and run everything;
  * first: the same, filling XLA's persistent compilation cache and the stored programs;
  * second and later: the stored programs are loaded (no tracing) and compiled from XLA's cache.
Prints a Markdown table with each run's time and its ratio to the first (the issue's target:
second <= 0.6x first), then where a second run spends its time (imports, model load, predict,
each method's call) from one in-process run.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys
import tempfile
import time

PHASES = """
import time, sys
t0 = time.perf_counter()
import jax, numpy as np
from saliency_jax.compile_cache import enable_compile_cache
from saliency_jax import methods, images
from saliency_jax.models import load_model
enable_compile_cache()
t1 = time.perf_counter(); print(f"| imports | {t1 - t0:.2f} |")
model = load_model("efficientnet_lite0")
photos = [images.load_image(p) for p in images.bundled_images().values()]
x = model.preprocess(photos)
t2 = time.perf_counter(); print(f"| model load + preprocess | {t2 - t1:.2f} |")
model.predict(photos, top=1, batch_size=len(photos))
t3 = time.perf_counter(); print(f"| predict | {t3 - t2:.2f} |")
for name in sys.argv[1].split(","):
    a = time.perf_counter()
    methods.attribute(model, x, "top1", method=name, key=jax.random.key(0), batch_size=len(x))
    b = time.perf_counter()
    methods.attribute(model, x, "top1", method=name, key=jax.random.key(0), batch_size=len(x))
    c = time.perf_counter()
    print(f"| {name}: first call in the process (of which running it: {c - b:.2f}) | {b - a:.2f} |")
"""


def timed(cmd: list[str], env: dict) -> float:
    start = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stderr[-2000:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="second-and-later runs (default 2)")
    parser.add_argument("--method", default="vanilla,smoothgrad")
    args = parser.parse_args()
    cli = [str(pathlib.Path(sys.executable).parent / "saliency-jax")]  # the console script, as users run it
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "SALIENCY_JAX_CACHE": tmp}
        env.pop("SALIENCY_JAX_NO_COMPILE_CACHE", None)
        out = str(pathlib.Path(tmp) / "out")
        explain = ["explain", "--method", args.method, "--out", out]
        timed([*cli, "--no-compile-cache", "predict"], env)  # converts the params once
        rows = [("no caches (--no-compile-cache)", timed([*cli, "--no-compile-cache", *explain], env))]
        rows.append(("first (fills the caches)", timed([*cli, *explain], env)))
        for i in range(args.repeats):
            rows.append((f"{'second' if i == 0 else f'run {i + 2}'}", timed([*cli, *explain], env)))
        first = rows[1][1]
        print(f"`saliency-jax explain --method {args.method}`, 4 bundled photos, new process each row\n")
        print("| run | seconds | / first |\n|---|---|---|")
        for name, seconds in rows:
            print(f"| {name} | {seconds:.1f} | {seconds / first:.2f}x |")
        print("\nWhere a warm process spends its time (in-process, caches filled above)\n")
        print("| phase | seconds |\n|---|---|")
        phases = subprocess.run([sys.executable, "-c", PHASES, args.method], env=env, capture_output=True, text=True)
        print(phases.stdout.strip() or phases.stderr[-2000:])


if __name__ == "__main__":
    main()
