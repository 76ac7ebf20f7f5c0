"""Parity of our LRP / DeepLift with zennit 0.5.1 and Captum 0.9 on a torchvision-layout VGG16 (and ResNet50).

Run (from the repository root, our venv; the peers run in /work/peers-venv, which
holds torch 2.13 CPU, captum 0.9 and zennit 0.5.1 installed with --no-deps; this
script installs nothing and stubs the torchvision import zennit makes):

    GLIBC_TUNABLES=glibc.malloc.hugetlb=1 python experiments/parity_lrp.py [--size 64] [--images 2]
    GLIBC_TUNABLES=glibc.malloc.hugetlb=1 python experiments/parity_lrp.py --resnet50 [--size 112] [--images 2]

The peer side (the same file, run by the peers' python with --peer DIR) builds a
VGG16 in torchvision's module layout (features.N / classifier.N, non-inplace
ReLUs, AdaptiveAvgPool2d(7)) with seeded random weights, saves its state dict as
a .pth, and writes zennit's and Captum's maps in float64 and float32. Our side
loads that .pth through our checkpoint reader (`load_model("vgg16", weights=...)`)
and prints, per method, the largest relative L2 distance over the images. A
small head (256 hidden units, 10 classes) keeps the file small; the layout is
torchvision's.

--resnet50: a ResNet50 in torchvision's layout (bias-free convs, BatchNorm with
random affine maps and calibrated running statistics, 10 classes), loaded by
our reader (`load_model("resnet50", weights=...)`, BN folded into the convs)
against zennit's EpsilonPlusFlat and EpsilonGammaBox with its ResNetCanonizer
(a stub torchvision module hands zennit this file's Bottleneck class). zennit's
canonizer merges each BN into its conv but keeps the BN module, which then
computes x / sqrt(1 + eps) (and passes relevance), so its canonized network is
not the exactly folded one; the "exact" rows rerun zennit on the same function
with each BN's eps moved into its running variance (eps 0), where its merge is
exact: what remains there is rounding.

Conventions: zennit's output relevance is given as one-hot times the logits
(ours); the "epsilon" composite is zennit's LayerMapComposite of its base map
and Epsilon at every Conv/Linear. DeepLift: Captum's documented max-pool rule
is what we implement; on this VGG16 Captum's own max-pool hook does not fire
(see the printed note), so the max-pool-free variant (--no-maxpool: stride-2
convs would change the layout, so pools become 2x2 average pools) is also run.
"""

from __future__ import annotations

import argparse
import functools
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
RESNET_STAGES = ((3, 64), (4, 128), (6, 256), (3, 512))  # (blocks, bottleneck width)


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


@functools.cache
def _torch_resnet_classes():
    """(Bottleneck, ResNet50) in torchvision's module layout (names and module order, one shared in-place
    ReLU per block, bias-free convs, BN eps 1e-5); zennit's ResNetCanonizer finds the blocks by this class."""
    import torch
    from torch import nn

    class Bottleneck(nn.Module):
        expansion = 4

        def __init__(self, cin, width, stride, downsample=None):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
            self.conv2, self.bn2 = nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width)
            self.conv3, self.bn3 = nn.Conv2d(width, width * 4, 1, bias=False), nn.BatchNorm2d(width * 4)
            self.relu = nn.ReLU(inplace=True)
            self.downsample, self.stride = downsample, stride

        def forward(self, x):
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.relu(self.bn2(self.conv2(out)))
            return self.relu(self.bn3(self.conv3(out)) + identity)

    class ResNet50(nn.Module):
        def __init__(self, classes):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64)
            self.relu, self.maxpool = nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)
            cin = 64
            for i, (blocks, width) in enumerate(RESNET_STAGES, 1):
                layers = []
                for b in range(blocks):
                    stride = 2 if i > 1 and b == 0 else 1
                    down = None if b else nn.Sequential(nn.Conv2d(cin, width * 4, 1, stride, bias=False),
                                                        nn.BatchNorm2d(width * 4))
                    layers.append(Bottleneck(cin, width, stride, down))
                    cin = width * 4
                setattr(self, f"layer{i}", nn.Sequential(*layers))
            self.avgpool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(2048, classes)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(self.avgpool(x), 1))

    return Bottleneck, ResNet50


def _stub_torchvision() -> None:
    """zennit imports torchvision's ResNet blocks (for its canonizer); torchvision is not installed."""
    sys.modules.setdefault("torchvision", types.ModuleType("torchvision"))
    for name in ("torchvision.models", "torchvision.models.resnet"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["torchvision.models.resnet"].Bottleneck = _torch_resnet_classes()[0]
    sys.modules["torchvision.models.resnet"].BasicBlock = type("BasicBlock", (), {})


def _zennit_composites(low, high):
    _stub_torchvision()
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


def _torch_resnet(state=None):
    """A torchvision-layout ResNet50 with seeded random weights: kaiming convs, random BN affine maps and
    running statistics calibrated on random images (so activations stay O(1) through 16 blocks); or `state`."""
    import torch
    from torch import nn

    model = _torch_resnet_classes()[1](CLASSES)
    if state is not None:
        model.load_state_dict(state)
        return model.eval()
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.normal_(m.bias, 0, 0.1)
            m.momentum = None  # running statistics = the calibration batch's
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.normal_(m.bias, 0, 0.05)
    with torch.no_grad():
        model.train()(torch.randn(8, 3, 64, 64))
    return model.eval()


def _exact_fold(model):
    """The same function with each BN's eps moved into its running variance (eps 0): zennit's merged
    BN then computes x / sqrt(1 + 0) = x, and its canonized network is the exactly folded one."""
    import torch

    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_var += m.eps
            m.eps = 0.0
    return model


def peer_resnet(out: pathlib.Path, size: int, images: int) -> None:
    """Writes resnet50.pth and peers.npz: zennit's EpsilonPlusFlat and EpsilonGammaBox with its
    ResNetCanonizer, as shipped ("shipped") and on the eps-in-variance model ("exact"), f64 and f32."""
    import torch

    _stub_torchvision()
    from zennit import composites as zc
    from zennit.torchvision import ResNetCanonizer

    model = _torch_resnet()
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, out / "resnet50.pth")
    pixels = np.random.default_rng(1).uniform(0, 1, size=(images, 3, size, size))
    x64 = (pixels - MEAN[:, None, None]) / STD[:, None, None]
    low, high = (0 - MEAN) / STD, (1 - MEAN) / STD
    maps = {}
    for dtype, tag in ((torch.float64, "f64"), (torch.float32, "f32")):
        x = torch.as_tensor(x64, dtype=dtype)
        targets = _torch_resnet(state).to(dtype)(x).argmax(1).numpy()
        for variant in ("shipped", "exact"):
            lo, hi = (torch.as_tensor(v, dtype=dtype).view(1, 3, 1, 1) for v in (low, high))
            comps = {"epsilon_plus_flat": zc.EpsilonPlusFlat(canonizers=[ResNetCanonizer()]),
                     "epsilon_gamma_box": zc.EpsilonGammaBox(low=lo, high=hi, canonizers=[ResNetCanonizer()])}
            for name, composite in comps.items():
                m = _torch_resnet(state).to(dtype)
                m = _exact_fold(m) if variant == "exact" else m
                maps[f"{name}_{variant}_{tag}"] = _zennit_maps(m, x.clone(), targets, composite)
    np.savez(out / "peers.npz", x=x64.transpose(0, 2, 3, 1), targets=targets, low=low, high=high, **maps)


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
            rows[(name, tag)] = float(np.max(_relative_l2(mine, peers[f"{name}_{tag}"])))
    jax.config.update("jax_enable_x64", False)
    return rows


def ours_resnet(out: pathlib.Path) -> dict:
    """{(composite, zennit variant, dtype): relative L2 per image} of our LRP on the same ResNet50 .pth."""
    import jax
    import jax.numpy as jnp

    import saliency_jax
    from saliency_jax import methods

    peers = np.load(out / "peers.npz")
    rows = {}
    for dtype, tag in ((jnp.float64, "f64"), (jnp.float32, "f32")):
        jax.config.update("jax_enable_x64", dtype == jnp.float64)
        model = saliency_jax.load_model("resnet50", weights=out / "resnet50.pth", use_cache=False, dtype=dtype)
        x, targets = jnp.asarray(peers["x"], dtype), jnp.asarray(peers["targets"], jnp.int32)
        values = {"epsilon_plus_flat": methods.LRP(composite="epsilon_plus_flat"),
                  "epsilon_gamma_box": methods.LRP(composite="epsilon_gamma_box", low=peers["low"], high=peers["high"])}
        for name, value in values.items():
            mine = np.asarray(saliency_jax.attribute(model, x, targets, method=value), np.float64)
            for variant in ("shipped", "exact"):
                rows[(name, variant, tag)] = _relative_l2(mine, peers[f"{name}_{variant}_{tag}"])
    jax.config.update("jax_enable_x64", False)
    return rows


def _relative_l2(mine, theirs) -> np.ndarray:
    """||mine - theirs|| / ||theirs|| per image."""
    mine, theirs = (np.asarray(v, np.float64).reshape(len(v), -1) for v in (mine, theirs))
    return np.linalg.norm(mine - theirs, axis=1) / np.maximum(np.linalg.norm(theirs, axis=1), 1e-300)


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
    parser.add_argument("--resnet50", action="store_true", help="ResNet50 with zennit's ResNetCanonizer instead")
    parser.add_argument("--peer", type=pathlib.Path, help=argparse.SUPPRESS)
    parser.add_argument("--peer-time", type=pathlib.Path, help=argparse.SUPPRESS)  # for bench_lrp.py --vs-zennit
    args = parser.parse_args()
    if args.peer_time:
        return peer_time(args.peer_time, args.size, args.images)
    if args.peer:
        if args.resnet50:
            return peer_resnet(args.peer, args.size, args.images)
        return peer(args.peer, args.size, args.images, args.no_maxpool)
    if args.resnet50:
        return main_resnet(args.size, args.images)
    with tempfile.TemporaryDirectory() as tmp:
        command = [PEERS_PYTHON, __file__, "--peer", tmp, "--size", str(args.size), "--images", str(args.images)]
        subprocess.run(command + (["--no-maxpool"] if args.no_maxpool else []), check=True)
        rows = ours(pathlib.Path(tmp), args.no_maxpool)
    print(f"VGG16 (torchvision layout, random weights, {args.images} images {args.size}x{args.size}"
          f"{', max pools as 2x2 average pools' if args.no_maxpool else ''}): max relative L2 per image")
    print("| method | float64 | float32 |\n|---|---|---|")
    for name in dict.fromkeys(n for n, _ in rows):
        print(f"| {name} | {rows[(name, 'f64')]:.2e} | {rows[(name, 'f32')]:.2e} |")


def main_resnet(size: int, images: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        command = [PEERS_PYTHON, __file__, "--peer", tmp, "--size", str(size), "--images", str(images), "--resnet50"]
        subprocess.run(command, check=True)
        rows = ours_resnet(pathlib.Path(tmp))
    print(f"ResNet50 (torchvision layout, random weights, {images} images {size}x{size}), zennit with its "
          "ResNetCanonizer: relative L2 per image\n(shipped: zennit's merged BN still computes x / sqrt(1 + eps); "
          "exact: the same network with each BN's eps moved into its running variance)")
    print("| composite | zennit | float64 | float32 |\n|---|---|---|---|")
    for (name, variant, tag), err in rows.items():
        if tag == "f64":
            per_image = (" ".join(f"{e:.1e}" for e in rows[(name, variant, t)]) for t in ("f64", "f32"))
            print(f"| {name} | {variant} | {' | '.join(per_image)} |")


if __name__ == "__main__":
    main()
