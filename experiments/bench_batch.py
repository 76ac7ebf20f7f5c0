"""Benchmark: `saliency-jax batch` end to end vs pure compute, and data-parallel scaling over devices.

Run:
    python experiments/bench_batch.py                          # 512 JPEGs, vanilla, batch 32
    python experiments/bench_batch.py --images 1024 --method smoothgrad --samples 8
    python experiments/bench_batch.py --scaling-images 64      # smaller scaling table

1. A folder of ``--images`` JPEGs (random crops of the bundled photographs,
   resized to 320x240, quality 90 -- realistic decode work) is written once.
2. **End to end**: `run_batch_job` over the folder (decode threads, compiled
   sharded step, atomic NPZ shards, index), after a warm-up job has compiled
   the step, so compile time is reported apart.
3. **Pure compute**: the same compiled step on the same images pre-decoded and
   pre-resized in memory, batch after batch (device transfer and fetching the
   maps included, decoding and writing not).
   Pipeline overhead = end-to-end time / compute time - 1 (per image; best of
   ``--repeats`` interleaved runs of each, so background load hits both alike).
4. **Scaling**: in a subprocess with
   ``XLA_FLAGS=--xla_force_host_platform_device_count=8``, the compute rate on
   meshes of 1, 2, 4 and 8 devices. On a CPU the simulated devices share the
   same cores, so this table shows the mechanism (one program sharded over a
   `Mesh`, batch padded to a multiple of the device count), not a speed-up.

Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time


def make_folder(root: pathlib.Path, n: int, size=(320, 240), seed: int = 0) -> None:
    import numpy as np
    from PIL import Image

    import saliency_jax

    if root.exists() and len(list(root.glob("*.jpg"))) == n:
        return
    root.mkdir(parents=True, exist_ok=True)
    photos = [saliency_jax.load_image(p) for p in saliency_jax.bundled_images().values()]
    rng = np.random.default_rng(seed)
    for i in range(n):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        ch, cw = int(h * rng.uniform(0.5, 1)), int(w * rng.uniform(0.5, 1))
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        crop = photo[y:y + ch, x:x + cw][:, :: 1 if rng.random() < 0.5 else -1]
        Image.fromarray(np.ascontiguousarray(crop)).resize(size, Image.Resampling.BILINEAR).save(
            root / f"img{i:05d}.jpg", quality=90)


def _options(args) -> dict:
    return {"num_samples": args.samples} if args.method in ("smoothgrad", "smoothgrad_squared", "vargrad",
                                                              "guided_smoothgrad") else {}


def end_to_end_vs_compute(args, folder: pathlib.Path) -> dict:
    import numpy as np

    import saliency_jax
    from saliency_jax.data import decode_stream, open_source
    from saliency_jax.jobs import fetch, make_step, run_batch_job

    model = saliency_jax.load_model()
    source = open_source(str(folder))
    options = _options(args)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()  # warm-up: compiles the step for this batch shape (cached for the runs below)
        warm_src = open_source(str(folder) + "/img0000*.jpg")
        run_batch_job(warm_src, model, pathlib.Path(tmp) / "warm", method=args.method, options=options,
                      batch_size=args.batch_size, shard_size=args.batch_size, progress=False)
        compile_s = time.perf_counter() - t

        pixels = np.stack([ex.image for ex in decode_stream(source.records(), model.input_size)])
        step, batch = make_step(model, args.method, batch_size=args.batch_size, options=options,
                                dtype=np.float16 if args.float16 else np.float32)
        targets = np.full((batch,), -1, np.int32)
        n = len(pixels) - len(pixels) % batch

        def compute() -> float:
            t = time.perf_counter()
            pending = None
            for lo in range(0, n, batch):
                result = step(pixels[lo:lo + batch], targets)
                if pending is not None:
                    fetch(pending)
                pending = result
            fetch(pending)
            return time.perf_counter() - t

        def end_to_end(k: int) -> tuple[float, int]:
            t = time.perf_counter()
            summary = run_batch_job(source, model, pathlib.Path(tmp) / f"out{k}", method=args.method,
                                    options=options, batch_size=args.batch_size, shard_size=args.shard_size,
                                    float16=args.float16, progress=False)
            return time.perf_counter() - t, summary.images

        # Interleaved repeats, best of each: other load on the machine hits both alike.
        e2e_runs, compute_runs = [], []
        for k in range(args.repeats):
            e2e_runs.append(end_to_end(k))
            compute_runs.append(compute())
    e2e_s, images = min(e2e_runs)
    compute_s = min(compute_runs)
    return {"images": images, "e2e_rate": images / e2e_s, "compute_rate": n / compute_s,
            "overhead": (e2e_s / images) / (compute_s / n) - 1, "compile_s": compile_s}


_SCALING = """
import json, sys, time, jax, numpy as np
import saliency_jax
from saliency_jax.jobs import fetch, make_step
from saliency_jax.sharding import data_mesh
n_images, batch_size, method, samples = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
options = {"num_samples": samples} if "smoothgrad" in method or method == "vargrad" else {}
model = saliency_jax.load_model()
pixels = np.random.default_rng(0).integers(0, 256, (n_images, *model.input_size, 3), dtype=np.uint8)
rows = []
for n_dev in (1, 2, 4, 8):
    mesh = data_mesh(jax.devices()[:n_dev])
    step, batch = make_step(model, method, batch_size=batch_size, options=options, mesh=mesh)
    targets = np.full((batch,), -1, np.int32)
    t = time.perf_counter(); fetch(step(pixels[:batch], targets)); compile_s = time.perf_counter() - t
    n = n_images - n_images % batch
    t = time.perf_counter()
    for lo in range(0, n, batch):
        out = fetch(step(pixels[lo:lo + batch], targets))
    rows.append({"devices": n_dev, "batch": batch, "per_device": batch // n_dev, "rate": n / (time.perf_counter() - t),
                 "compile_s": compile_s})
print(json.dumps(rows))
"""


def scaling(args) -> list[dict]:
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    run = subprocess.run([sys.executable, "-c", _SCALING, str(args.scaling_images), str(args.batch_size),
                          args.method, str(args.samples)], env=env, capture_output=True, text=True, check=False)
    if run.returncode:
        raise SystemExit(run.stderr[-3000:])
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--method", default="vanilla")
    p.add_argument("--samples", type=int, default=8, help="SmoothGrad samples")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--shard-size", type=int, default=256)
    p.add_argument("--float16", action="store_true")
    p.add_argument("--repeats", type=int, default=2, help="interleaved end-to-end / compute runs (best of)")
    p.add_argument("--scaling-images", type=int, default=128)
    p.add_argument("--folder", default=os.path.join(tempfile.gettempdir(), "saliency_jax_bench_folder"))
    p.add_argument("--skip-scaling", action="store_true")
    args = p.parse_args()

    import jax

    folder = pathlib.Path(args.folder) / str(args.images)
    make_folder(folder, args.images)
    r = end_to_end_vs_compute(args, folder)
    device = f"{jax.devices()[0].platform} x{jax.local_device_count()}, {os.cpu_count()} CPU cores"
    print(f"\n### `batch` end to end vs pure compute ({args.method}, EfficientNet-Lite0 224², batch "
          f"{args.batch_size}, {r['images']} JPEGs 320x240, {device})\n")
    print("| end to end (images/s) | pure compute (images/s) | pipeline overhead | compile (warm-up job) |")
    print("|---|---|---|---|")
    print(f"| {r['e2e_rate']:.1f} | {r['compute_rate']:.1f} | {100 * r['overhead']:+.1f}% | {r['compile_s']:.1f} s |")
    if args.skip_scaling:
        return
    rows = scaling(args)
    print(f"\n### Data-parallel scaling, {args.scaling_images} images, simulated CPU devices "
          "(`--xla_force_host_platform_device_count=8`)\n")
    print("On CPU the simulated devices share the same cores: this shows the mechanism, not a speed-up.\n")
    print("| devices | global batch | per device | images/s | compile (s) |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['devices']} | {row['batch']} | {row['per_device']} | {row['rate']:.1f} | {row['compile_s']:.1f} |")


if __name__ == "__main__":
    main()
