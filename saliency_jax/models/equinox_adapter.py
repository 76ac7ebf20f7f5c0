"""An Equinox classifier as a `Model`: `from_equinox(module, layers=..., input_size=...)`.

Equinox modules are written for one image, channels-first ([C,H,W], as
`eqx.nn.Conv2d` takes it); the adapter vmaps the module over the batch,
transposes the `Model`'s [B,H,W,C] input to the module's layout and records
each tapped submodule's output channels-last [B,h,w,K] (its layout defaults to
the module's, "CHW"). The module is split with `eqx.partition(module,
eqx.is_array)`: its arrays are the `Model`'s variables (`{"params": {"eqx":
arrays}}`), the rest is static; each forward pass `eqx.combine`s them and runs
in inference mode (`eqx.nn.inference_mode`: dropout off).

Layer names are submodule attribute paths, "."-joined, e.g. "conv2" or
"layers.1" (item 1 of an `eqx.nn.Sequential`). Stateful layers
(`eqx.nn.BatchNorm` with an `eqx.nn.State`) are not supported.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp

from saliency_jax.models.build import (UNUSED_OUTPUT, Adapter, Frozen, Spec, Taps, build_model, perturb_point,
                                       record_tap)
from saliency_jax.models.custom import TappedCall
from saliency_jax.models.layouts import check_layout, from_hwc
from saliency_jax.models.model import Model


def _eqx():
    try:
        import equinox
    except ModuleNotFoundError:
        raise ModuleNotFoundError("from_equinox needs equinox: pip install equinox") from None
    return equinox


def submodule_paths(module) -> list[tuple]:
    """Attribute/index paths of every callable submodule of an Equinox module, parents first."""
    eqx = _eqx()
    out: list[tuple] = []

    def walk(value, path):
        if isinstance(value, eqx.Module):
            if path and callable(value):
                out.append(path)
            for f in dataclasses.fields(value):
                walk(getattr(value, f.name, None), path + (f.name,))
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                walk(item, path + (i,))

    walk(module, ())
    return out


def _get(module, path):
    for key in path:
        module = module[key] if isinstance(key, int) else getattr(module, key)
    return module


def _tapped(module, paths, tap):
    """A copy of `module` whose submodules at `paths` tap their outputs (deepest first)."""
    eqx = _eqx()
    for path in sorted(paths, key=len, reverse=True):
        name = ".".join(map(str, path))
        module = eqx.tree_at(lambda m, p=path: _get(m, p), module, TappedCall(_get(module, path), name, tap))
    return module


class EquinoxAdapter(Adapter):
    """Vmaps a per-image Equinox module; perturbation points are batch-level variables fed into the vmap."""

    static: Frozen
    paths: tuple[tuple, ...] = ()  # (layer name, path) of every callable submodule
    taps: Taps = Taps()

    def _module(self):
        eqx = _eqx()
        return eqx.nn.inference_mode(eqx.combine(self.variables["params"]["eqx"], self.static.value))

    def __call__(self, x):
        module, x = self._module(), from_hwc(x, self.taps.input_layout)
        if self.taps.layers is None:
            return self._discover(module, x)
        paths = [p for n, p in self.paths if n in self.taps.layers]

        def one(xi, points):
            feats = {}

            def tap(name, y):
                y, feats[name] = record_tap(self.taps, name, y, lambda h: h + points[name])
                return y

            return _tapped(module, paths, tap)(xi), feats

        shapes = jax.eval_shape(one, x[0], {n: 0.0 for n in self.taps.layers})[1]
        points = {n: perturb_point(self, n, jnp.zeros((len(x), *s.shape), s.dtype)) for n, s in shapes.items()}
        return jax.vmap(one)(x, points)

    def _discover(self, module, x):
        names: list[str] = []

        def one(xi):
            feats = {}

            def tap(name, y):
                names.append(name)
                feats.setdefault(name, y)
                return y

            return _tapped(module, [p for _, p in self.paths], tap)(xi), feats

        logits, feats = jax.vmap(one)(x)
        return logits, [{n: feats[n]} for n in names]


def from_equinox(
    module,
    *,
    layers: Sequence[str] = (),
    input_size: int | tuple[int, int],
    channels: int = 3,
    layout: str = "CHW",
    layouts: Mapping[str, str] | None = None,
    mean: float | Sequence[float] = 0.0,
    std: float | Sequence[float] = 1.0,
    labels: Sequence[str] | None = None,
    name: str | None = None,
) -> Model:
    """A `Model` of a per-image Equinox classifier, `module(x[C,H,W]) -> logits[K]`.

    Args:
      module: an `equinox.Module` for one image (vmapped over the batch here).
      layers: submodule paths, "."-joined (e.g. "conv2", "layers.1").
      input_size: (height, width) (or one int).
      channels: C of the input.
      layout: "CHW" (default, Equinox's convolutions) or "HWC", the layout `module` takes.
      layouts: {layer: layout} where a layer differs from `layout` (default: `layout`).
      mean, std, labels, name: as in `from_linen`.

    Example:
      >>> net = eqx.nn.Sequential([eqx.nn.Conv2d(3, 8, 3, key=k1), eqx.nn.Lambda(jax.nn.relu), ...])
      >>> model = from_equinox(net, layers=("layers.1",), input_size=32)
      >>> saliency_jax.attribute(model, x, "top1", method="gradcam", layer="layers.1")
    """
    eqx = _eqx()
    if not isinstance(module, eqx.Module):
        raise TypeError(f"from_equinox expects an equinox.Module, got {type(module).__name__}")
    params, static = eqx.partition(module, eqx.is_array)
    paths = tuple((".".join(map(str, p)), p) for p in submodule_paths(module))
    adapter = EquinoxAdapter(Frozen(static), paths, taps=Taps(input_layout=check_layout(layout, "layout")))
    spec = Spec(input_size, layers, channels, layouts, mean, std, labels)
    return build_model(adapter, {"params": {"eqx": params}}, spec, name or type(module).__name__,
                       default_layout=layout, unused_hint=UNUSED_OUTPUT)


__all__ = ["EquinoxAdapter", "from_equinox", "submodule_paths"]
