"""A Keras 3 classifier (JAX backend) as a `Model`: `from_keras(model, layers=...)`.

The model runs through `keras_model.stateless_call(trainable, non_trainable,
x, training=False)`, so its variables are the `Model`'s pytree leaves
(`{"params": {path: value}, "keras_state": {path: value}}`, keyed by each
Keras variable's `path`) and every method differentiates through it. A named
layer is tapped where it is called, inside the whole model, by wrapping that
layer's `call` for the duration of the trace: Grad-CAM on any layer needs no
split of the model in two, and Sequential, Functional and subclassed models
all work. Layer names are Keras' own (`model.layers`, nested models' layers
as "outer/inner").

Keras must run on the JAX backend: set `KERAS_BACKEND=jax` before keras is
first imported. The model must return logits: a last layer with a softmax is
refused. A layer built with `data_format="channels_first"` is declared "CHW"
automatically; the input is channels-last unless `layout="CHW"`.
"""

from __future__ import annotations

import contextlib
from typing import Mapping, Sequence

from saliency_jax.models.build import Adapter, Frozen, Spec, Taps, build_model
from saliency_jax.models.layouts import check_layout
from saliency_jax.models.model import Model


def keras_layers(model, prefix: str = "") -> dict[str, object]:
    """{name: layer} of a Keras model, nested models' layers as "outer/inner", in `model.layers` order."""
    out: dict[str, object] = {}
    for layer in getattr(model, "layers", []):
        out[prefix + layer.name] = layer
        if hasattr(layer, "layers"):
            out.update(keras_layers(layer, prefix + layer.name + "/"))
    return out


@contextlib.contextmanager
def tapped_layers(layers: Mapping[str, object], tap):
    """Within the block, each layer's output goes through `tap(name, y)` (its `call` wrapped on the instance)."""
    saved = {}
    for name, layer in layers.items():
        saved[name] = layer.__dict__.get("call")
        inner = layer.call

        def call(*args, _inner=inner, _name=name, **kwargs):
            out = _inner(*args, **kwargs)
            return tap(_name, out) if hasattr(out, "shape") else out

        object.__setattr__(layer, "call", call)
    try:
        yield
    finally:
        for name, layer in layers.items():
            if saved[name] is None:
                del layer.__dict__["call"]
            else:
                object.__setattr__(layer, "call", saved[name])


class KerasAdapter(Adapter):
    """Runs `stateless_call` on the user's Keras model with the `Model`'s variables."""

    keras_model: Frozen
    trainable: tuple[str, ...] = ()  # variable paths, in `trainable_variables` order
    non_trainable: tuple[str, ...] = ()
    taps: Taps = Taps()

    def _run(self, x, tap):
        model = self.keras_model.value
        params, state = self.variables.get("params", {}), self.variables.get("keras_state", {})
        every = keras_layers(model)
        names = every if self.taps.layers is None else self.taps.layers
        with tapped_layers({n: every[n] for n in names}, tap):
            out, _ = model.stateless_call([params[p] for p in self.trainable],
                                          [state[p] for p in self.non_trainable], x, training=False)
        return out


def from_keras(
    model,
    *,
    layers: Sequence[str] = (),
    input_size: int | tuple[int, int] | None = None,
    channels: int | None = None,
    layout: str = "HWC",
    layouts: Mapping[str, str] | None = None,
    mean: float | Sequence[float] = 0.0,
    std: float | Sequence[float] = 1.0,
    labels: Sequence[str] | None = None,
    name: str | None = None,
) -> Model:
    """A `Model` of a built Keras 3 classifier, `model(x[B,H,W,C]) -> logits[B,K]`.

    Args:
      model: a built `keras.Model` (Sequential, Functional or subclassed) on the JAX backend.
      layers: Keras layer names to tap (e.g. "conv2"; nested: "backbone/conv2").
      input_size, channels: default from `model.input_shape` when it is known.
      layout: "HWC" (Keras' default) or "CHW", the layout the model takes.
      layouts: {layer: layout}; default "CHW" for layers with `data_format="channels_first"`.
      mean, std, labels, name: as in `from_linen`.

    Example:
      >>> os.environ["KERAS_BACKEND"] = "jax"   # before keras is imported
      >>> model = from_keras(keras_net, layers=("conv2",))
      >>> saliency_jax.attribute(model, x, "top1", method="gradcam", layer="conv2")
    """
    keras = _keras()
    if not isinstance(model, keras.Model):
        raise TypeError(f"from_keras expects a keras.Model, got {type(model).__name__}")
    if not model.built:
        raise ValueError("from_keras expects a built model: call it once, or give it an Input")
    _check_logits(model)
    size, channels = _input_shape(model, input_size, channels, check_layout(layout, "layout"))
    every = keras_layers(model)
    auto = {n: "CHW" for n in layers if getattr(every.get(n), "data_format", None) == "channels_first"}
    variables = {"params": {v.path: v.value for v in model.trainable_variables}}
    if model.non_trainable_variables:
        variables["keras_state"] = {v.path: v.value for v in model.non_trainable_variables}
    if len(set(variables["params"]) | set(variables.get("keras_state", {}))) != len(model.variables):
        raise ValueError("from_keras: the model's variables do not have unique paths")
    adapter = KerasAdapter(Frozen(model), tuple(v.path for v in model.trainable_variables),
                           tuple(v.path for v in model.non_trainable_variables), taps=Taps(input_layout=layout))
    spec = Spec(size, layers, channels, {**auto, **dict(layouts or {})}, mean, std, labels)
    return build_model(adapter, variables, spec, name or model.name, unused_hint=UNUSED_HINT)


UNUSED_HINT = ": its output does not reach the model's outputs"


def _keras():
    import keras

    if keras.backend.backend() != "jax":
        raise ValueError(f"from_keras needs Keras on the JAX backend, not {keras.backend.backend()!r}: "
                         "set KERAS_BACKEND=jax before keras is first imported")
    return keras


def _check_logits(model) -> None:
    last = model.layers[-1] if model.layers else None
    activation = getattr(getattr(last, "activation", None), "__name__", "")
    if activation == "softmax" or type(last).__name__ == "Softmax":
        raise ValueError(f"{model.name}'s last layer {last.name!r} applies a softmax: saliency maps explain "
                         "unnormalised scores; build it with activation=None (logits)")


def _input_shape(model, input_size, channels, layout: str):
    """(input_size, channels) from the arguments, else from `model.input_shape` [B,H,W,C] / [B,C,H,W]."""
    shape = getattr(model, "input_shape", None) if input_size is None or channels is None else None
    if shape is not None and len(shape) == 4:
        h, w, c = shape[1:] if layout == "HWC" else (*shape[2:], shape[1])
        input_size = (h, w) if input_size is None and None not in (h, w) else input_size
        channels = c if channels is None and c is not None else channels
    if input_size is None:
        raise ValueError(f"{model.name}: its input size is not fixed; pass input_size=(height, width)")
    return input_size, 3 if channels is None else channels


__all__ = ["KerasAdapter", "from_keras", "keras_layers", "tapped_layers"]
