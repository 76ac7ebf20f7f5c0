"""Benchmark: CAM and path methods on EfficientNet-Lite0 224x224 (CPU), saliency_jax vs pytorch-grad-cam and PAIR.

Run (in the peers venv of experiments/parity_peers.py, which has torch, pytorch-grad-cam and PAIR):
    /work/peers-venv/bin/python experiments/bench_cam_path.py            # ~10 min on 2 cores
    /work/peers-venv/bin/python experiments/bench_cam_path.py --quick    # 1 repeat, Guided IG 8 steps

Side by side, in one process, one after the other (best of --repeats after a warm-up call):
  * Grad-CAM++ at batch 16: ours vs pytorch-grad-cam `GradCAMPlusPlus` (head features, as in parity_peers.py);
  * Score-CAM on one image (1280 masked forward passes): ours (chunk_size 32) vs `ScoreCAM` (batch_size 32);
  * Guided IG on one image: ours vs PAIR's `GuidedIG` driven by our jitted gradient (same logit function);
  * Score-CAM's memory at batch 16 by chunk_size: XLA's planned temporary buffers
    (`compiled.memory_analysis().temp_size_in_bytes`), which grow with the chunk, not with the 1280 channels.
PyTorch runs with glibc's default allocator and torch's default threads; JAX with the process's settings.
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import saliency_jax
from bench_common import best_rate
from parity_peers import pair_call_model_function, patch_numpy_quantile, stub_torchvision, torch_reference


def images(model, n: int):
    photos = [saliency_jax.load_image(p) for p in saliency_jax.bundled_images().values()]
    x = jnp.asarray(model.preprocess([photos[i % len(photos)] for i in range(n)]))
    return x, np.asarray(jnp.argmax(model.logits(x), axis=-1), np.int32)


def ours_rate(model, x, targets, method, repeats: int) -> float:
    def run():
        jax.block_until_ready(saliency_jax.attribute(model, x, targets, method=method))

    run()
    return best_rate(run, len(x), repeats)


def torch_cam_rate(cam_class, x, targets, repeats: int, **attributes) -> float:
    import pytorch_grad_cam
    import torch
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    net, head_relu = torch_reference()
    cam = getattr(pytorch_grad_cam, cam_class)(model=net, target_layers=[head_relu])
    for name, value in attributes.items():
        setattr(cam, name, value)
    inputs = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())
    run = lambda: cam(input_tensor=inputs, targets=[ClassifierOutputTarget(int(t)) for t in targets])  # noqa
    run()
    return best_rate(run, len(x), repeats)


def guided_ig_rates(model, x, target: int, steps: int, repeats: int) -> tuple[float, float]:
    from saliency.core import GuidedIG

    method = saliency_jax.methods.GuidedIG(num_steps=steps)
    ours = ours_rate(model, x[:1], target, method, repeats)
    call = pair_call_model_function(model, target)
    image = np.asarray(x[0], np.float64)
    run = lambda: GuidedIG().GetMask(image, call, x_steps=steps, fraction=0.25, max_dist=0.02)  # noqa
    run()
    return ours, best_rate(run, 1, repeats)


def scorecam_temp_bytes(model, x, targets, chunk: int) -> int:
    from saliency_jax import methods

    method = methods.ScoreCAM(chunk_size=chunk).prepare(model, x.shape[1:], images_per_call=len(x))
    lowered = methods.attribute_batch.lower(method, model, x, jnp.asarray(targets), jax.random.key(0))
    return lowered.compile().memory_analysis().temp_size_in_bytes


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats
    stub_torchvision()
    patch_numpy_quantile()
    model = saliency_jax.load_model()
    x16, t16 = images(model, 16)
    rows = []
    started = time.perf_counter()
    rows.append(("Grad-CAM++, batch 16", ours_rate(model, x16, t16, "gradcam_plus_plus", repeats),
                 torch_cam_rate("GradCAMPlusPlus", x16, t16, repeats), "pytorch-grad-cam"))
    score = saliency_jax.methods.ScoreCAM(chunk_size=32)
    rows.append(("Score-CAM, 1 image (1280 channels)", ours_rate(model, x16[:1], t16[:1], score, repeats),
                 torch_cam_rate("ScoreCAM", x16[:1], t16[:1], repeats, batch_size=32), "pytorch-grad-cam"))
    steps = 8 if args.quick else 50
    rows.append((f"Guided IG, 1 image, {steps} steps", *guided_ig_rates(model, x16, int(t16[0]), steps, repeats),
                 "PAIR (our gradient)"))
    print("| method | saliency_jax img/s | peer img/s | ratio | peer |\n|---|---|---|---|---|")
    for name, ours, theirs, peer in rows:
        print(f"| {name} | {ours:.3g} | {theirs:.3g} | {ours / theirs:.2f}x | {peer} |")
    print("\n| Score-CAM at batch 16, chunk_size | XLA temporary buffers |\n|---|---|")
    for chunk in (1, 2, 8):
        print(f"| {chunk}{' (default: ~32 images in flight)' if chunk == 2 else ''} | "
              f"{scorecam_temp_bytes(model, x16, t16, chunk) / 2**20:.0f} MiB |")
    print(f"\n({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
