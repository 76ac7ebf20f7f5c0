"""`Model`: a classifier as data — a Flax module, its variables, and how to feed it.

A `Model` is a pytree whose only leaves are its variables, so it can be passed
through `jax.jit`, `jax.tree.map` (e.g. to randomise weights) and sharded like
any other pytree. Everything else (module, preprocessing constants, labels,
layer names) is static metadata.

The library-wide contract is the *logit function*: a pure per-image callable
`logit_fn(x[H,W,C]) -> logits[K]` returning unnormalised class scores (never
softmax). `Model.logit_fn` is one; any JAX callable of that shape works with
every method in this package. Batch with `jax.vmap`.

Images are channels-last, [H,W,C] with C = `Model.channels` (3 for the zoo).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from saliency_jax import images as _images
from saliency_jax.batching import map_batches
from saliency_jax.program_cache import cached_call
from saliency_jax.validate import check_images


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["variables"],
    meta_fields=["name", "module", "input_size", "mean", "std", "labels", "layers", "gradcam_layer", "channels",
                 "layouts"],
)
@dataclasses.dataclass(frozen=True)
class Model:
    """A pretrained image classifier in inference mode.

    Attributes:
      name: zoo name, e.g. "efficientnet_lite0".
      module: Flax module; `module.apply(variables, x[B,H,W,C]) -> (logits[B,K], features)`.
      variables: the module's variables (`{"params": ...}`), the pytree leaves.
      input_size: (height, width) the weights were trained at.
      mean, std: preprocessing `x = (uint8 - mean) / std`, per channel or scalar (uint8 units:
        a model trained on x in [0, 1] has mean 0, std 255).
      labels: K class names, index-aligned with the logits.
      layers: names of the intermediate features (`features(x)` keys), in forward order.
      gradcam_layer: the layer Grad-CAM uses by default (None: the last spatial layer).
      channels: C, the input's channel count (3: RGB; 1: grayscale; more: multispectral).
      layouts: (layer, "HWC" | "CHW") the user's model computes each layer in; features
        are always recorded channels-last [B,h,w,K] (see `saliency_jax.models.layouts`).
    """

    name: str
    module: nn.Module
    variables: Any
    input_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    labels: tuple[str, ...]
    layers: tuple[str, ...]
    gradcam_layer: str | None = None
    channels: int = 3
    layouts: tuple[tuple[str, str], ...] = ()

    # ---- forward passes -------------------------------------------------------------
    def apply(self, x, **kwargs):
        """(logits [B,K], {layer: activation}) for preprocessed x [B,H,W,C].

        Keyword arguments go to `module.apply` (e.g. `mutable=["perturbations"]`).
        Not jitted: call it inside your own `jax.jit`, or use `logits`/`features`.
        """
        return self.module.apply(self.variables, x, **kwargs)

    def logits(self, x) -> jax.Array:
        """Unnormalised class scores: float32 [B,H,W,C] -> [B,K] (jit-compiled)."""
        from saliency_jax.models import is_zoo_model  # the package imports this module

        return cached_call(_jit_logits, self, self._check_batch(x), name="logits", storable=is_zoo_model(self))

    __call__ = logits

    def features(self, x) -> dict[str, jax.Array]:
        """All named intermediate activations for x [B,H,W,C] (jit-compiled)."""
        return _jit_features(self, self._check_batch(x))

    @functools.cached_property
    def logit_fn(self) -> Callable[[jax.Array], jax.Array]:
        """The pure per-image logit function `[H,W,C] -> [K]`, variables closed over.

        Jit-compiled (so even eager `jax.grad(model.logit_fn)` is fast); inside
        your own `jit`/`vmap`/`grad` it composes like any JAX function.
        """
        return jax.jit(lambda x: self.apply(x[None])[0][0])

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def dtype(self):
        """The dtype images are cast to: that of the first floating variable (float32 if none)."""
        floats = [v.dtype for v in jax.tree.leaves(self.variables) if jnp.issubdtype(v.dtype, jnp.floating)]
        return floats[0] if floats else jnp.dtype(jnp.float32)

    def default_layer(self) -> str:
        """`gradcam_layer`, or else the last layer whose activation is spatial [B,h,w,K]."""
        if self.gradcam_layer is not None:
            return self.gradcam_layer
        h, w = self.input_size
        shapes = jax.eval_shape(lambda x: self.apply(x)[1], jax.ShapeDtypeStruct((1, h, w, self.channels), self.dtype))
        spatial = [name for name in self.layers if len(shapes[name].shape) == 4]
        if not spatial:
            raise ValueError(f"{self.name} has no spatial layer for Grad-CAM; its layers: {', '.join(self.layers)}")
        return spatial[-1]

    # ---- host-side data handling ------------------------------------------------------
    def preprocess(self, images) -> np.ndarray:
        """uint8 [B,H,W,C] / [H,W,C] or a list of PIL images / arrays -> float32 [B,h,w,channels].

        Each image is resized (bilinear, whole image) to `input_size`, then
        normalised as `(x - mean) / std`. A 1-channel model gets the luma of
        colour photos (ITU-R 601, as Pillow's "L"); a model of 4+ channels takes
        uint8 arrays with exactly that many channels.
        """
        batch = pixel_batch(images, self.input_size, self.channels)
        return (batch.astype(np.float32) - np.float32(self.mean)) / np.float32(self.std)

    def check_input(self, x):
        """x as this model's input, or a one-line ValueError, before anything compiles.

        Checks rank, channel count and finiteness (`validate.check_images`), casts
        other float dtypes (float16, bfloat16) to `dtype`, and refuses a size the
        model does not run at (a fixed-size model: flatten + dense).
        """
        return self._fit(check_images(x, channels=self.channels, name=self.name))

    def check_size(self, hw) -> None:
        """ValueError unless the model runs on images of size hw (H, W); abstract, cached per size."""
        hw = tuple(int(v) for v in hw)
        if hw == tuple(self.input_size):
            return
        leaves, treedef = jax.tree.flatten(self.variables)
        key = (self.module, treedef, tuple((v.shape, str(v.dtype)) for v in leaves), hw, self.channels)
        if key in _RUNS_AT:
            return
        try:
            jax.eval_shape(self.apply, jax.ShapeDtypeStruct((1, *hw, self.channels), self.dtype))
            _RUNS_AT.add(key)
        except Exception as e:
            (h, w), (got_h, got_w) = self.input_size, hw
            raise ValueError(f"{self.name} expects {h}x{w} images, got {got_h}x{got_w} (it does not run at that "
                             f"size: {type(e).__name__}); resize them, e.g. with model.preprocess") from None

    def _fit(self, x):
        if x.dtype != self.dtype:
            x = x.astype(self.dtype)
        self.check_size(x.shape[1:3])
        return x

    def deprocess(self, x) -> np.ndarray:
        """Inverse of the normalisation: model-space float [...,C] -> displayable uint8."""
        x = np.asarray(x, np.float32) * np.float32(self.std) + np.float32(self.mean)
        return np.clip(np.round(x), 0, 255).astype(np.uint8)

    def predict(self, images, *, top: int = 5, batch_size: int = 32) -> list[list[tuple[int, str, float]]]:
        """Top-`top` (class index, label, softmax probability) for each image.

        Images go through in batches of one static size (the last one padded),
        so any number of images costs one compilation.
        """
        if not 1 <= top <= self.num_classes:
            raise ValueError(f"top must be between 1 and {self.num_classes}, got {top}")
        probs = map_batches(lambda x: jax.nn.softmax(self.logits(x), axis=-1), (self.preprocess(images),), batch_size)
        order = np.argsort(-probs, axis=-1, kind="stable")[:, :top]
        return [[(int(c), self.labels[c], float(p[c])) for c in row] for p, row in zip(probs, order)]

    def _check_batch(self, x):
        shape = getattr(x, "shape", None)
        if shape is None or len(shape) != 4:
            raise ValueError(
                f"{self.name} expects a preprocessed batch [B,H,W,C]; got shape {shape} "
                "(use model.preprocess(images) first, or model.logit_fn for one image)"
            )
        if shape[-1] != self.channels:
            raise ValueError(f"{self.name} expects {self.channels} colour channels; got x with shape {tuple(shape)}")
        return self._fit(jnp.asarray(x))


_RUNS_AT: set = set()  # (architecture, size) pairs the model is known to run at

LUMA = np.array([0.299, 0.587, 0.114], np.float32)
"""RGB -> gray weights (ITU-R 601, Pillow's "L" mode)."""


def pixel_batch(images, size: tuple[int, int], channels: int) -> np.ndarray:
    """uint8 [B,h,w,channels]: images resized to `size` with `images.to_uint8_batch`'s rules.

    3 channels: RGB; 1: the luma of RGB (a gray photo stays as it is); more:
    uint8 arrays [B,H,W,C] / [H,W,C] with C == channels, resized plane by plane.
    """
    if channels == 3:
        return _images.to_uint8_batch(images, size)
    if channels == 1:
        rgb = _images.to_uint8_batch(images, size).astype(np.float32)
        return np.clip(np.rint(rgb @ LUMA), 0, 255).astype(np.uint8)[..., None]
    array = np.asarray(images)
    if array.dtype != np.uint8 or array.ndim not in (3, 4) or array.shape[-1] != channels:
        raise ValueError(f"a {channels}-channel model preprocesses uint8 arrays [B,H,W,{channels}] or "
                         f"[H,W,{channels}]; got {array.dtype} of shape {array.shape}")
    array = array.reshape(-1, *array.shape[-3:])
    planes = [array[b, :, :, c] for b in range(len(array)) for c in range(channels)]
    resized = _images.to_uint8_batch(planes, size)[..., 0]
    return resized.reshape(len(array), channels, *size).transpose(0, 2, 3, 1)


@jax.jit
def _jit_logits(model: Model, x):
    return model.apply(x)[0]


@jax.jit
def _jit_features(model: Model, x):
    return model.apply(x)[1]

