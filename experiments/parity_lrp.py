"""Parity of our LRP / DeepLift with zennit 0.5.1 and Captum 0.9 on a torchvision-layout VGG16.

Run (from the repository root, our venv; the peers run in /work/peers-venv, which
holds torch 2.13 CPU, captum 0.9 and zennit 0.5.1 installed with --no-deps; this
script installs nothing and stubs the torchvision import zennit makes):

    GLIBC_TUNABLES=glibc.malloc.hugetlb=1 python experiments/parity_lrp.py [--size 64] [--images 2]

The peer side (the same file, run by the peers' python with --peer DIR) builds a
VGG16 in torchvision's module layout (features.N / classifier.N, non-inplace
ReLUs, AdaptiveAvgPool2d(7)) with seeded random weights, saves its state dict as
a .pth, and writes zennit's and Captum's maps in float64 and float32. Our side
loads that .pth through our checkpoint reader (`load_model("vgg16", weights=...)`)
and prints, per method, the largest relative L2 distance over the images. A
small head (256 hidden units, 10 classes) keeps the file small; the layout is
torchvision's.

Conventions: zennit's output relevance is given as one-hot times the logits
(ours); the "epsilon" composite is zennit's LayerMapComposite of its base map
and Epsilon at every Conv/Linear. DeepLift: Captum's documented max-pool rule
is what we implement; on this VGG16 Captum's own max-pool hook does not fire
(see the printed note), so the max-pool-free variant (--no-maxpool: stride-2
convs would change the layout, so pools become 2x2 average pools) is also run.
"""

from __future__ import annotations

import argparse
import pathlib
import subprocess
import sys
import tempfile
import types

import numpy as np

PEERS_PYTHON = "/work/peers-venv/bin/python"
CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
HIDDEN, CLASSES = 256, 10
EPSILON = 0.01  # the "epsilon" composite's epsilon (the named composites keep zennit's defaults)


# ---- the peer side (torch, zennit, captum) ------------------------------------------------------
def _torch_vgg(avg_pool: bool):
    import torch
    from torch import nn

    layers, cin = [], 3
    for v in CFG:
        if v == "M":
            layers.append(nn.AvgPool2d(2, 2) if avg_pool else nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU(inplace=False)]
            cin = v
    model = nn.Module()
    model.features = nn.Sequential(*layers)
    model.avgpool = nn.AdaptiveAvgPool2d((7, 7))
    model.classifier = nn.Sequential(nn.Linear(512 * 49, HIDDEN), nn.ReLU(), nn.Dropout(), nn.Linear(HIDDEN, HIDDEN),
                                     nn.ReLU(), nn.Dropout(), nn.Linear(HIDDEN, CLASSES))
    model.forward = types.MethodType(
        lambda self, x: self.classifier(torch.flatten(self.avgpool(self.features(x)), 1)), model)
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.normal_(m.bias, 0, 0.05)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.normal_(m.bias, 0, 0.05)
    return model.eval()


def _zennit_composites(low, high):
    sys.modules.setdefault("torchvision", types.ModuleType("torchvision"))  # zennit imports torchvision's blocks
    for name in ("torchvision.models", "torchvision.models.resnet"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["torchvision.models.resnet"].Bottleneck = type("Bottleneck", (), {})
    sys.modules["torchvision.models.resnet"].BasicBlock = type("BasicBlock", (), {})
    from zennit import composites as zc
    from zennit import rules as zr
    from zennit.types import Linear

    epsilon = zc.LayerMapComposite(layer_map=zc.layer_map_base() + [(Linear, zr.Epsilon(epsilon=EPSILON))])
    return {"epsilon": epsilon, "epsilon_plus_flat": zc.EpsilonPlusFlat(),
            "epsilon_gamma_box": zc.EpsilonGammaBox(low=low, high=high), "alpha_beta": zc.EpsilonAlpha2Beta1()}


def _zennit_maps(model, x, targets, composite):
    import torch
    from zennit.attribution import Gradient

    one_hot = torch.nn.functional.one_hot(torch.as_tensor(targets), CLASSES).to(x.dtype)
    with Gradient(model=model, composite=composite) as attributor:
        _, relevance = attributor(x, lambda out: out * one_hot)
    return relevance.permute(0, 2, 3, 1).detach().numpy()


def _captum_maps(model, x, targets, baselines):
    import torch
    from captum.attr import DeepLift, DeepLiftShap

    t = torch.as_tensor(targets)
    dl = DeepLift(model).attribute(x, baselines=torch.zeros_like(x), target=t)
    shap = torch.stack([DeepLiftShap(model).attribute(x[i:i + 1], baselines=baselines, target=int(t[i]))[0]
                        for i in range(len(x))])
    return dl.permute(0, 2, 3, 1).detach().numpy(), shap.permute(0, 2, 3, 1).detach().numpy()


def peer(out: pathlib.Path, size: int, images: int, avg_pool: bool) -> None:
    """Writes vgg16.pth and peers.npz (inputs, targets, box bounds, maps) into `out`."""
    import torch

    model = _torch_vgg(avg_pool)
    torch.save(model.state_dict(), out / "vgg16.pth")
    rng = np.random.default_rng(1)
    pixels = rng.uniform(0, 1, size=(images, 3, size, size))
    x64 = (pixels - MEAN[:, None, None]) / STD[:, None, None]
    baselines = rng.normal(0, 0.5, size=(3, 3, size, size))
    low, high = (0 - MEAN) / STD, (1 - MEAN) / STD
    maps = {}
    for dtype, tag in ((torch.float64, "f64"), (torch.float32, "f32")):
        m = _torch_vgg(avg_pool).to(dtype)
        m.load_state_dict(model.state_dict())
        x = torch.as_tensor(x64, dtype=dtype)
        targets = m(x).argmax(1).numpy()
        comps = _zennit_composites(torch.as_tensor(low, dtype=dtype).view(1, 3, 1, 1),
                                   torch.as_tensor(high, dtype=dtype).view(1, 3, 1, 1))
        for name, composite in comps.items():
            maps[f"{name}_{tag}"] = _zennit_maps(m, x.clone(), targets, composite)
        maps[f"deeplift_{tag}"], maps[f"deeplift_shap_{tag}"] = _captum_maps(
            m, x.clone(), targets, torch.as_tensor(baselines, dtype=dtype))
    np.savez(out / "peers.npz", x=x64.transpose(0, 2, 3, 1), targets=targets, low=low, high=high,
             baselines=baselines.transpose(0, 2, 3, 1), **maps)


def peer_time(out: pathlib.Path, size: int, batch: int, repeats: int = 2) -> None:
    """Saves vgg16.pth and writes zennit's EpsilonPlusFlat time (best of `repeats`, float32) to time.txt."""
    import time

    import torch

    model = _torch_vgg(False)
    torch.save(model.state_dict(), out / "vgg16.pth")
    x = torch.randn(batch, 3, size, size)
    composite = _zennit_composites(0.0, 1.0)["epsilon_plus_flat"]
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        _zennit_maps(model, x.clone(), np.zeros(batch, np.int64), composite)
        times.append(time.perf_counter() - start)
    (out / "time.txt").write_text(str(min(times[1:])))


# ---- our side ------------------------------------------------------------------------------------
def ours(out: pathlib.Path, avg_pool: bool) -> dict:
    import jax
    import jax.numpy as jnp

    import saliency_jax
    from saliency_jax import methods

    peers = np.load(out / "peers.npz")
    rows = {}
    for dtype, tag in ((jnp.float64, "f64"), (jnp.float32, "f32")):
        jax.config.update("jax_enable_x64", dtype == jnp.float64)
        model = saliency_jax.load_model("vgg16", weights=out / "vgg16.pth", use_cache=False, dtype=dtype)
        if avg_pool:
            model = _with_avg_pools(model)
        x, targets = jnp.asarray(peers["x"], dtype), jnp.asarray(peers["targets"], jnp.int32)
        values = {"epsilon": methods.LRP(composite="epsilon", epsilon=EPSILON),
                  "epsilon_plus_flat": methods.LRP(composite="epsilon_plus_flat"),
                  "epsilon_gamma_box": methods.LRP(composite="epsilon_gamma_box", low=peers["low"], high=peers["high"]),
                  "alpha_beta": methods.LRP(composite="alpha_beta"),
                  "deeplift": methods.DeepLift(),
                  "deeplift_shap": methods.DeepLiftShap(baselines=jnp.asarray(peers["baselines"], dtype))}
        for name, value in values.items():
            mine = np.asarray(saliency_jax.attribute(model, x, targets, method=value), np.float64)
            theirs = peers[f"{name}_{tag}"].astype(np.float64)
            err = np.linalg.norm((mine - theirs).reshape(len(x), -1), axis=1)
            rows[(name, tag)] = float(np.max(err / np.maximum(np.linalg.norm(theirs.reshape(len(x), -1), axis=1),
                                                              1e-300)))
    jax.config.update("jax_enable_x64", False)
    return rows


def _with_avg_pools(model):
    """Our VGG16 with its 2x2 max pools as average pools (the --no-maxpool variant), same weights."""
    import dataclasses

    import flax.linen as nn

    class AvgVGG(type(model.module)):
        def __call__(self, x):
            original = nn.max_pool
            nn.max_pool = nn.avg_pool
            try:
                return super().__call__(x)
            finally:
                nn.max_pool = original

    return dataclasses.replace(model, module=AvgVGG(model.module.config))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--no-maxpool", action="store_true")
    parser.add_argument("--peer", type=pathlib.Path, help=argparse.SUPPRESS)
    parser.add_argument("--peer-time", type=pathlib.Path, help=argparse.SUPPRESS)  # for bench_lrp.py --vs-zennit
    args = parser.parse_args()
    if args.peer_time:
        return peer_time(args.peer_time, args.size, args.images)
    if args.peer:
        return peer(args.peer, args.size, args.images, args.no_maxpool)
    with tempfile.TemporaryDirectory() as tmp:
        command = [PEERS_PYTHON, __file__, "--peer", tmp, "--size", str(args.size), "--images", str(args.images)]
        subprocess.run(command + (["--no-maxpool"] if args.no_maxpool else []), check=True)
        rows = ours(pathlib.Path(tmp), args.no_maxpool)
    print(f"VGG16 (torchvision layout, random weights, {args.images} images {args.size}x{args.size}"
          f"{', max pools as 2x2 average pools' if args.no_maxpool else ''}): max relative L2 per image")
    print("| method | float64 | float32 |\n|---|---|---|")
    for name in dict.fromkeys(n for n, _ in rows):
        print(f"| {name} | {rows[(name, 'f64')]:.2e} | {rows[(name, 'f32')]:.2e} |")


if __name__ == "__main__":
    main()
