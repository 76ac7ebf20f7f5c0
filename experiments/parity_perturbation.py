"""Parity of the perturbation family with its peers on one small ConvNet built twice (JAX and PyTorch).

    . /work/venv/bin/activate && python experiments/parity_perturbation.py [--peers-python /work/peers-venv/bin/python]

Run it in the project's venv (jax, torch CPU, scikit-image). The peers run in a subprocess of the
peers venv (torch==2.13.0 CPU, captum==0.9.0, saliency==0.2.1, shap; created by hand, this script
installs nothing): the same weights and inputs go there in an .npz, their results come back in one.

  - Captum 0.9 `Occlusion` (window (3, w, w), strides (3, s, s), zero baseline) and `FeatureAblation`
    (feature_mask = a SLIC map) vs ours: max relative difference (target 1e-3).
  - PAIR saliency 0.2.1 `XRAI`: its greedy `_xrai` on our IG attribution and our masks, and its full
    `GetMask` driven by the PyTorch twin's gradients, vs ours: IoU of the top-20% regions (target 0.9).
  - shap's `KernelExplainer` on the same coalition function (M segments, 1000 samples) vs our
    KernelSHAP: relative L2 difference of the estimates.
Prints one markdown table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time

import numpy as np

SIZE, K, SEED = 32, 5, 0
OCCLUSIONS = ((8, 4), (6, 4), (5, 3))  # (window, stride); 6/4 and 5/3 crop the last window at the edge


def weights():
    rng = np.random.default_rng(SEED)
    return {"w1": rng.normal(0, 0.4, (8, 3, 3, 3)).astype(np.float32), "b1": rng.normal(0, 0.1, 8).astype(np.float32),
            "w2": rng.normal(0, 0.3, (8, 8, 3, 3)).astype(np.float32), "b2": rng.normal(0, 0.1, 8).astype(np.float32),
            "w3": rng.normal(0, 0.5, (K, 8)).astype(np.float32), "b3": rng.normal(0, 0.1, K).astype(np.float32)}


def jax_logit_fn(p):
    """The twin in JAX: conv3x3-relu, conv3x3/2-relu, mean, dense; one image [H,W,3] -> [K]."""
    import jax
    import jax.numpy as jnp

    def conv(x, w, b, stride):
        y = jax.lax.conv_general_dilated(x[None], jnp.transpose(w, (2, 3, 1, 0)), (stride, stride), ((1, 1), (1, 1)),
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))[0]
        return jax.nn.relu(y + b)

    def fn(x):
        y = conv(conv(x, p["w1"], p["b1"], 1), p["w2"], p["b2"], 2)
        return p["w3"] @ y.mean(axis=(0, 1)) + p["b3"]

    return fn


def torch_net(p):
    """The twin in PyTorch (NCHW)."""
    import torch

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(8, 8, 3, stride=2, padding=1), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, K))
    for layer, (w, b) in zip((net[0], net[2], net[6]), (("w1", "b1"), ("w2", "b2"), ("w3", "b3"))):
        layer.weight.data, layer.bias.data = torch.tensor(p[w]), torch.tensor(p[b])
    return net.eval()


# ---- peers (peers venv) --------------------------------------------------------------------------
def run_peers(path: str) -> None:
    import torch
    from captum.attr import FeatureAblation, Occlusion

    d = dict(np.load(path))
    net, x, target = torch_net(d), d["x"], int(d["target"])
    xt = torch.tensor(x.transpose(2, 0, 1)[None])
    out = {}
    for window, stride in OCCLUSIONS:
        occ = Occlusion(net).attribute(xt, sliding_window_shapes=(3, window, window), strides=(3, stride, stride),
                                       baselines=0.0, target=target, perturbations_per_eval=16)
        out[f"occlusion_{window}_{stride}"] = occ[0].numpy().transpose(1, 2, 0)
    mask = torch.tensor(d["slic"][None, None]).expand(1, 3, SIZE, SIZE)
    abl = FeatureAblation(net).attribute(xt, baselines=0.0, target=target, feature_mask=mask, perturbations_per_eval=8)
    out["feature_ablation"] = abl[0].numpy().transpose(1, 2, 0)
    out.update(pair_xrai(net, d, target))
    out.update(shap_kernel(net, d, target))
    np.savez(path, **{**d, **{f"peer_{k}": v for k, v in out.items()}})


def pair_xrai(net, d, target) -> dict:
    import torch
    from saliency.core import xrai

    def call_model(images, call_model_args=None, expected_keys=None):
        t = torch.tensor(np.asarray(images, np.float32).transpose(0, 3, 1, 2), requires_grad=True)
        net(t)[:, target].sum().backward()
        return {"INPUT_OUTPUT_GRADIENTS": t.grad.numpy().transpose(0, 2, 3, 1)}

    on_ours, _ = xrai.XRAI._xrai(attr=d["ig"].max(axis=-1), segs=list(d["masks"]), min_pixel_diff=50)
    params = xrai.XRAIParameters(steps=d["steps"].item())
    full = xrai.XRAI().GetMask(d["x"], call_model, batch_size=20, extra_parameters=params)
    return {"xrai_on_our_ig": on_ours, "xrai_full": full}


def shap_kernel(net, d, target) -> dict:
    import time

    import torch
    try:
        import shap
    except ImportError:
        return {}
    seg, x = d["slic"], d["x"]
    m = int(seg.max()) + 1

    def coalitions(z):
        images = z[:, seg][..., None] * x[None]
        with torch.no_grad():
            return net(torch.tensor(images.transpose(0, 3, 1, 2).astype(np.float32)))[:, target].numpy()

    start = time.perf_counter()
    # l1_reg=False: the plain weighted least squares that ours solves (shap 0.51's default keeps 10 features)
    values = shap.KernelExplainer(coalitions, np.zeros((1, m))).shap_values(np.ones((1, m)), nsamples=1000,
                                                                           l1_reg=False, silent=True)
    return {"shap": np.asarray(values).reshape(m), "shap_seconds": np.array(time.perf_counter() - start)}


# ---- ours (project venv) -------------------------------------------------------------------------
def ours(p, x, target, steps: int) -> dict:
    import jax
    import jax.numpy as jnp

    from saliency_jax import methods
    from saliency_jax.segments import segment, xrai_masks

    fn, xb, out = jax_logit_fn(p), jnp.asarray(x)[None], {}
    for window, stride in OCCLUSIONS:
        out[f"occlusion_{window}_{stride}"] = methods.attribute(fn, xb, target, method=methods.Occlusion(
            window=window, stride=stride))[0]
    slic = segment(x, "slic", num_segments=12)
    out["feature_ablation"] = methods.attribute(fn, xb, target, method=methods.FeatureAblation(segments=slic))[0]
    masks = xrai_masks(x[None])[0]
    ig = 0.5 * sum(methods.attribute(fn, xb, target, method="ig", num_steps=steps, baseline=b)[0]
                   for b in (float(x.min()), float(x.max())))
    out["xrai"] = methods.attribute(fn, xb, target, method=methods.XRAI(num_steps=steps))[0, ..., 0]
    ks = methods.KernelSHAP(segments=slic, num_samples=1000)
    out["kernel_shap"] = methods.attribute(fn, xb, target, method=ks, key=jax.random.key(0))[0, ..., 0]
    start = time.perf_counter()  # compiled above: the second call is the run time
    jax.block_until_ready(methods.attribute(fn, xb, target, method=ks, key=jax.random.key(0)))
    out["kernel_shap_seconds"] = np.array(time.perf_counter() - start)
    return {k: np.asarray(v) for k, v in out.items()} | {"slic": slic, "masks": masks, "ig": np.asarray(ig)}


def iou(a, b, fraction=0.2) -> float:
    from saliency_jax.methods.xrai import top_region

    ra, rb = top_region(a, fraction), top_region(b, fraction)
    return float((ra & rb).sum() / (ra | rb).sum())


def rel(a, b) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def report(ours_out: dict, d: dict) -> None:
    print("| method | peer | measure | value | target |\n|---|---|---|---|---|")
    for window, stride in OCCLUSIONS:
        key = f"occlusion_{window}_{stride}"
        print(f"| occlusion window {window} stride {stride} | Captum 0.9 Occlusion | max rel. diff | "
              f"{rel(ours_out[key], d['peer_' + key]):.1e} | 1e-3 |")
    print(f"| feature_ablation (SLIC, {int(ours_out['slic'].max()) + 1} segments) | Captum 0.9 FeatureAblation | "
          f"max rel. diff | {rel(ours_out['feature_ablation'], d['peer_feature_ablation']):.1e} | 1e-3 |")
    from saliency_jax.methods.xrai import xrai_regions

    ours_on_ig = xrai_regions(ours_out["ig"].max(axis=-1), ours_out["masks"], min_pixel_diff=50)
    print(f"| xrai greedy on the same IG and masks | PAIR 0.2.1 XRAI._xrai | top-20% IoU | "
          f"{iou(np.asarray(ours_on_ig), d['peer_xrai_on_our_ig']):.3f} | 0.9 |")
    print(f"| xrai end to end (IG black+white, Felzenszwalb) | PAIR 0.2.1 XRAI.GetMask (torch twin's gradients) | "
          f"top-20% IoU | {iou(ours_out['xrai'], d['peer_xrai_full']):.3f} | 0.9 |")
    if "peer_shap" in d:
        seg = ours_out["slic"]
        mine = np.array([ours_out["kernel_shap"][seg == k][0] for k in range(seg.max() + 1)])
        print(f"| kernel_shap 1000 samples | shap KernelExplainer nsamples=1000 | rel. L2 diff | "
              f"{np.linalg.norm(mine - d['peer_shap']) / np.linalg.norm(d['peer_shap']):.3f} | (both estimates) |")
        print(f"| kernel_shap 1000 samples, time | shap KernelExplainer | ours / shap seconds | "
              f"{float(ours_out['kernel_shap_seconds']):.3f} / {float(d['peer_shap_seconds']):.3f} | >= 5x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers-python", default="/work/peers-venv/bin/python")
    parser.add_argument("--peer", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=32, help="IG steps per baseline for XRAI (default 32)")
    args = parser.parse_args()
    if args.peer:
        return run_peers(args.peer)
    from skimage import data, transform

    p = weights()
    x = (transform.resize(data.chelsea(), (SIZE, SIZE), anti_aliasing=True).astype(np.float32) - 0.5) * 2
    import jax.numpy as jnp

    target = int(np.argmax(jax_logit_fn(p)(jnp.asarray(x))))
    mine = ours(p, x, target, args.steps)
    with tempfile.NamedTemporaryFile(suffix=".npz", delete=False) as f:
        np.savez(f, x=x, target=target, steps=args.steps, slic=mine["slic"], masks=mine["masks"], ig=mine["ig"], **p)
    subprocess.run([args.peers_python, __file__, "--peer", f.name], check=True)
    report(mine, dict(np.load(f.name)))


if __name__ == "__main__":
    main()
