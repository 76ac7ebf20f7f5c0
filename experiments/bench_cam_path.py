"""Benchmark: CAM and path methods on EfficientNet-Lite0 224x224 (CPU), saliency_jax vs pytorch-grad-cam and PAIR.

Run (in the peers venv of experiments/parity_peers.py, which has torch, pytorch-grad-cam and PAIR):
    /work/peers-venv/bin/python experiments/bench_cam_path.py            # ~10 min on 2 cores
    /work/peers-venv/bin/python experiments/bench_cam_path.py --quick    # 1 repeat, Guided IG on Lite0 8 steps
    /work/peers-venv/bin/python experiments/bench_cam_path.py --only guided_ig   # sections: cam,guided_ig,memory

Side by side, in one process, one after the other (best of --repeats after a warm-up call):
  * Grad-CAM++ at batch 16: ours vs pytorch-grad-cam `GradCAMPlusPlus` (head features, as in parity_peers.py);
  * Score-CAM on one image (1280 masked forward passes): ours (chunk_size 32) vs `ScoreCAM` (batch_size 32);
  * Guided IG on one image: ours vs PAIR's `GuidedIG` driven by our jitted gradient (same logit function);
  * Guided IG, where the time goes: on EfficientNet-Lite0 (--steps, default 50) and on a small smooth
    CNN at 224x224 (two convolutions with tanh / softplus and a dense head, random weights, a plain JAX
    logit function; 50 steps), each at batch 1 and batch 16 (ours: one vmapped call; PAIR: its
    per-image loop over the 16 images), beside floors of the same number of bare jitted gradient
    calls of the same function (batch 1, and batch 16 per image). On Lite0 both sides are bounded by
    the gradients; on the small CNN the gradient is cheap and PAIR's per-step NumPy work shows;
  * Score-CAM's memory at batch 16 by chunk_size: XLA's planned temporary buffers
    (`compiled.memory_analysis().temp_size_in_bytes`), which grow with the chunk, not with the 1280 channels.
PyTorch runs with glibc's default allocator and torch's default threads; JAX with the process's settings.
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import time
import types

import jax
import jax.numpy as jnp
import numpy as np

import saliency_jax
from bench_common import best_rate
from parity_peers import pair_call_model_function, patch_numpy_quantile, stub_torchvision, torch_reference
from saliency_jax.attribution.gradients import class_gradient


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


def small_cnn():
    """A smooth CNN logit function [224,224,3] -> [10] with random weights, whose gradient is cheap:
    conv 3x3/2 to 8 channels, tanh, conv 3x3/2 to 16, softplus, spatial mean, dense to 10."""
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    w1 = jax.random.normal(k1, (3, 3, 3, 8)) / np.sqrt(27)
    w2 = jax.random.normal(k2, (3, 3, 8, 16)) / np.sqrt(72)
    w3 = jax.random.normal(k3, (16, 10))

    def conv(z, w):
        return jax.lax.conv_general_dilated(z, w, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def logit_fn(image):
        z = jax.nn.softplus(conv(jnp.tanh(conv(image[None], w1)), w2))
        return z.mean(axis=(1, 2))[0] @ w3

    return logit_fn


def guided_ig_seconds(model_or_fn, logit_fn, x, targets, steps: int, repeats: int) -> dict:
    """Seconds per image of Guided IG (`steps` steps) for x [B,...]: ours at batch 1 and B, PAIR's GuidedIG on
    `logit_fn`'s jitted gradient (one image, and its loop over the B images), and `steps` bare calls of that
    gradient at batch 1 and B."""
    from saliency.core import GuidedIG

    n = len(x)
    method = saliency_jax.methods.GuidedIG(num_steps=steps)
    out = {("ours", b): 1 / ours_rate(model_or_fn, x[:b], targets[:b], method, repeats) for b in (1, n)}
    shim = types.SimpleNamespace(logit_fn=logit_fn)
    calls = [pair_call_model_function(shim, int(t)) for t in targets]  # one compilation per target
    images = [np.asarray(xi, np.float64) for xi in x]

    def pair(b):
        for image, call in zip(images[:b], calls[:b]):
            GuidedIG().GetMask(image, call, x_steps=steps, fraction=0.25, max_dist=0.02)

    for b in (1, n):
        pair(b)  # warm-up (compiles each target's gradient)
        out["PAIR", b] = 1 / best_rate(lambda b=b: pair(b), b, repeats)
    grad = jax.jit(jax.vmap(lambda z, t: class_gradient(logit_fn, z, t)))
    for b in (1, n):
        xb, tb = x[:b], jnp.asarray(targets[:b])

        def gradients(xb=xb, tb=tb):
            for _ in range(steps):
                jax.block_until_ready(grad(xb, tb))

        gradients()
        out["gradients", b] = 1 / best_rate(gradients, b, repeats)
    return out


def scorecam_temp_bytes(model, x, targets, chunk: int) -> int:
    from saliency_jax import methods

    method = methods.ScoreCAM(chunk_size=chunk).prepare(model, x.shape[1:], images_per_call=len(x))
    lowered = methods.attribute_batch.lower(method, model, x, jnp.asarray(targets), jax.random.key(0))
    return lowered.compile().memory_analysis().temp_size_in_bytes


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=50, help="Guided IG steps (Lite0: 8 with --quick)")
    parser.add_argument("--only", default="cam,guided_ig,memory", help="comma-separated sections")
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats
    stub_torchvision()
    patch_numpy_quantile()
    model = saliency_jax.load_model()
    x16, t16 = images(model, 16)
    rows, guided = [], {}
    started = time.perf_counter()
    sections = args.only.split(",")
    if "cam" in sections:
        rows.append(("Grad-CAM++, batch 16", ours_rate(model, x16, t16, "gradcam_plus_plus", repeats),
                     torch_cam_rate("GradCAMPlusPlus", x16, t16, repeats), "pytorch-grad-cam"))
        score = saliency_jax.methods.ScoreCAM(chunk_size=32)
        rows.append(("Score-CAM, 1 image (1280 channels)", ours_rate(model, x16[:1], t16[:1], score, repeats),
                     torch_cam_rate("ScoreCAM", x16[:1], t16[:1], repeats, batch_size=32), "pytorch-grad-cam"))
    steps = 8 if args.quick else args.steps
    if "guided_ig" in sections:
        guided[f"EfficientNet-Lite0, {steps} steps"] = guided_ig_seconds(model, model.logit_fn, x16, t16, steps,
                                                                          repeats)
        cnn = small_cnn()
        cnn_targets = np.asarray(jnp.argmax(jax.vmap(cnn)(x16), axis=-1), np.int32)
        guided[f"small smooth CNN, {args.steps} steps"] = guided_ig_seconds(cnn, cnn, x16, cnn_targets, args.steps,
                                                                             repeats)
        lite0 = next(iter(guided.values()))
        rows.append((f"Guided IG, 1 image, {steps} steps", 1 / lite0["ours", 1], 1 / lite0["PAIR", 1],
                     "PAIR (our gradient)"))
    if rows:
        print("| method | saliency_jax img/s | peer img/s | ratio | peer |\n|---|---|---|---|---|")
    for name, ours, theirs, peer in rows:
        print(f"| {name} | {ours:.3g} | {theirs:.3g} | {ours / theirs:.2f}x | {peer} |")
    if guided:
        print("\n| Guided IG | batch | saliency_jax s/image | PAIR GuidedIG s/image | PAIR / ours | "
              "floor: the steps' bare gradient calls at this batch, s/image |\n|---|---|---|---|---|---|")
    for name, t in guided.items():
        for b, what in ((1, "1"), (len(x16), f"{len(x16)} (ours: one vmapped call; PAIR: its loop over the images)")):
            print(f"| {name} | {what} | {t['ours', b]:.3g} | {t['PAIR', b]:.3g} | {t['PAIR', b] / t['ours', b]:.2f}x | "
                  f"{t['gradients', b]:.3g} |")
    if guided:
        print("\n(floor: that many separate jitted gradient calls, what PAIR makes; ours runs its steps inside one "
              "compiled loop, selections included.)")
    if "memory" in sections:
        print("\n| Score-CAM at batch 16, chunk_size | XLA temporary buffers |\n|---|---|")
        for chunk in (1, 2, 8):
            print(f"| {chunk}{' (default: ~32 images in flight)' if chunk == 2 else ''} | "
                  f"{scorecam_temp_bytes(model, x16, t16, chunk) / 2**20:.0f} MiB |")
    print(f"\n({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
