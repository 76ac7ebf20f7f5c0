"""The method contract: an attribution method is a frozen dataclass whose fields are its options.

    class MyMethod(Method):                      # @dataclasses.dataclass(frozen=True) on top
        scale: float = 2.0
        def explain(self, model, x, target, *, key=None):
            return self.scale * Vanilla().explain(model, x, target)

A value is a JAX pytree: the fields named in `traced` (arrays such as a
baseline, or continuous scalars such as a noise scale) and nested methods are
its leaves, every other field is static metadata. So two equal values, built
separately, have equal tree structures and share one compilation of
`attribute_batch`, and changing a traced field never recompiles.

Every subclass is registered as a pytree automatically. `register` adds a
value's name to the registry that `get`, `attribute(method="name")`, the
batch job and the CLI read.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from typing import Callable, ClassVar

import jax

from saliency_jax.attribution.sampling import default_chunk

LogitFn = Callable[[jax.Array], jax.Array]
LONG_RUN_SAMPLES = 100  # inner samples per image from which a sampled method counts as long running


class Method:
    """Base class of attribution methods (subclass it as a frozen dataclass).

    Class attributes a subclass may set:
      traced: field names passed as traced data (not static): arrays, or
        floats whose change should not recompile.
      per_image: traced fields a caller may give per image, with a leading
        batch axis (e.g. an Integrated-Gradients baseline [B,H,W,C]).
      inner: the field holding the inner sample count whose chunk size
        `prepare` fills in (with a `chunk_size` field), or None.
      deprecated: {old option name: new name}, accepted by `get` with a warning.
      many_passes: True when the method takes hundreds of model passes per image at
        its defaults (the perturbation family, Score-/Ablation-CAM); see `long_running`.
      display_relative: True when the map has a floor that carries no information
        (RISE: every pixel is kept in a p_keep share of the masks, so the map is
        the mean score plus the signal): shown with `saliency_map(relative=True)`.
    """

    traced: ClassVar[tuple[str, ...]] = ()
    per_image: ClassVar[tuple[str, ...]] = ()
    inner: ClassVar[str | None] = None
    deprecated: ClassVar[dict[str, str]] = {}
    many_passes: ClassVar[bool] = False
    display_relative: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        jax.tree_util.register_pytree_node(cls, _flatten, functools.partial(_unflatten, cls))

    # ---- what a method must provide --------------------------------------------------
    def explain(self, model, x, target, *, key=None) -> jax.Array:
        """Attribution of one image: x [H,W,C] -> [H,W,C]. Pure and traceable.

        Args:
          model: a `Model`, or a logit function `[H,W,C] -> [K]`.
          x: one image in model space [H,W,C].
          target: int32 scalar index into the scores (`TOP1` = -1: the top-1 class).
          key: a `jax.random` key (random methods only).
        """
        raise NotImplementedError(f"{type(self).__name__} must implement explain(model, x, target, *, key=None)")

    # ---- what it may refine ----------------------------------------------------------
    @property
    def long_running(self) -> bool:
        """Whether a call is long enough to show progress per chunk (`many_passes`, or an inner
        sample count of at least LONG_RUN_SAMPLES); the CLI's explain bar then moves per chunk,
        and that call bypasses the program cache (its progress callbacks cannot be stored)."""
        return self.many_passes or (self.inner is not None and getattr(self, self.inner) >= LONG_RUN_SAMPLES)

    @property
    def needs_key(self) -> bool:
        """True for random methods (`attribute` then requires a key)."""
        return False

    @property
    def needs_layers(self) -> bool:
        """True for methods that read named layers (a `Model`, not a bare logit function)."""
        return False

    @property
    def class_only(self) -> bool:
        """True for methods that explain a class through the model's logits (no unit targets)."""
        return False

    def check(self, model, image_shape: tuple) -> None:
        """Host-side checks of the options against a model and an image shape [H,W,C] (ValueError)."""
        if self.needs_layers and not is_model(model):
            raise ValueError(f"method {self.label!r} needs a Model with named layers, not a bare logit function")

    def prepare(self, model, image_shape: tuple, *, images_per_call: int) -> "Method":
        """The value to compile: checked, defaults that depend on the call resolved (chunk size, layer).

        `images_per_call` is the batch one compiled call sees; the default chunk
        keeps about 32 images (batch x inner samples) in flight.
        """
        self.check(model, tuple(image_shape))
        if self.inner is not None and getattr(self, "chunk_size", None) is None:
            chunk = default_chunk(getattr(self, self.inner), images_per_call * self.images_per_sample())
            return dataclasses.replace(self, chunk_size=chunk)
        return self

    def for_images(self, x) -> "Method":
        """The value for the batch x [B,H,W,C] on the host, before anything is traced (itself by default).

        A method whose options depend on the pixels (segment maps computed by
        scikit-image) resolves them here; `attribute` calls it once per call.
        """
        return self

    def per_image_shape(self, name: str, image_shape: tuple) -> tuple:
        """One image's shape of the per-image field `name` (default the image's [H,W,C]; a value
        with one more, leading axis of length B is given per image)."""
        return tuple(image_shape)

    def images_per_sample(self) -> int:
        """Images in flight per inner sample (1; a composite's base may hold more)."""
        return 1

    # ---- helpers ---------------------------------------------------------------------
    @property
    def label(self) -> str:
        """The registered name if any, else the class name (for messages)."""
        return registered_name(self) or type(self).__name__

    def with_values(self, **changes) -> "Method":
        """A copy with fields changed, without re-validating (the values may be tracers)."""
        new = object.__new__(type(self))
        for f in dataclasses.fields(self):
            object.__setattr__(new, f.name, changes.get(f.name, getattr(self, f.name)))
        return new

    def options(self) -> dict:
        """{field: value} of this value (its options)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def describe(method: Method) -> dict:
    """A JSON-ready record of a value: {"method": name, "options": {...}} (nested methods described too).

    Arrays are recorded by shape and dtype only; a job folder's config uses this
    to refuse resuming with other options.
    """
    def value(v):
        if isinstance(v, Method):
            return describe(v)
        if hasattr(v, "shape") and hasattr(v, "dtype"):
            return f"array{list(v.shape)}:{v.dtype}"
        return v if isinstance(v, (str, int, float, bool, type(None))) else repr(v)[:200]

    name = registered_name(method) or f"{type(method).__module__}.{type(method).__qualname__}"
    return {"method": name, "options": {k: value(v) for k, v in sorted(method.options().items())}}


def _fields(method: Method):
    if not dataclasses.is_dataclass(method):
        raise TypeError(f"{type(method).__name__} must be a dataclass: decorate it with "
                        "@dataclasses.dataclass(frozen=True)")
    return dataclasses.fields(method)


def _flatten(method: Method):
    names = [f.name for f in _fields(method)]
    dynamic = tuple(n for n in names if n in method.traced or isinstance(getattr(method, n), Method))
    static = tuple((n, getattr(method, n)) for n in names if n not in dynamic)
    return [getattr(method, n) for n in dynamic], (dynamic, static)


def _unflatten(cls, aux, children):
    dynamic, static = aux
    new = object.__new__(cls)
    for name, value in (*static, *zip(dynamic, children)):
        object.__setattr__(new, name, value)
    return new


def is_model(model) -> bool:
    """True for a `Model` (named layers), False for a bare logit function."""
    from saliency_jax.models.model import Model

    return isinstance(model, Model)


def logit_fn_of(model) -> LogitFn:
    """The per-image logit function of a `Model` (inside a trace), or the function itself."""
    if is_model(model):
        return lambda image: model.apply(image[None])[0][0]
    return model


# ---- the registry ----------------------------------------------------------------------

_REGISTRY: dict[str, Callable[..., Method]] = {}
_FIXED: dict[str, dict] = {}


def register(name: str, factory: Callable[..., Method] | None = None, **fixed):
    """Registers `factory` (a Method subclass) under `name`; usable as a class decorator.

    `fixed` options are set by the name and not accepted from the caller, e.g.
    `register("vargrad", SmoothGrad, variant="var")`.
    """
    if factory is None:
        return lambda cls: register(name, cls, **fixed) or cls
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"a method name must be an identifier, got {name!r}")
    _REGISTRY[name] = factory
    _FIXED[name] = dict(fixed)
    return factory


def available_methods() -> list[str]:
    """Registered method names, in registration order."""
    return list(_REGISTRY)


def option_names(name: str) -> tuple[str, ...]:
    """The options `get(name, ...)` accepts."""
    factory = _factory(name)
    return tuple(f.name for f in dataclasses.fields(factory) if f.name not in _FIXED[name])


def get(name: str, **options) -> Method:
    """The method value registered as `name`, with `options` (one-line ValueError for unknown ones)."""
    factory = _factory(name)
    for old, new in factory.deprecated.items():
        if old in options:
            warnings.warn(f"{name}: option {old!r} is deprecated, use {new!r}", DeprecationWarning, stacklevel=2)
            options[new] = options.pop(old)
    valid = option_names(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"method {name!r} got unknown option(s) {', '.join(unknown)}; "
                         f"valid options: {', '.join(valid) or 'none'}")
    return factory(**_FIXED[name], **options)


def as_method(method, **options) -> Method:
    """A `Method` from a registered name and options, or a value itself (then no options)."""
    if isinstance(method, Method):
        if options:
            raise ValueError(f"options {', '.join(sorted(options))} go into the method value itself, "
                             f"e.g. {type(method).__name__}({next(iter(sorted(options)))}=...)")
        return method
    return get(method, **options)


def registered_name(method: Method) -> str | None:
    """The name under which an equal value is registered (options aside), or None."""
    matches = [name for name, factory in _REGISTRY.items()
               if type(method) is factory and all(getattr(method, k) == v for k, v in _FIXED[name].items())]
    return max(matches, key=lambda name: len(_FIXED[name]), default=None)  # the most specific name


def _factory(name: str):
    if name not in _REGISTRY:
        raise ValueError(f"unknown method {str(name)[:60]!r}; choose one of {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


__all__ = ["LogitFn", "Method", "as_method", "available_methods", "describe", "get", "is_model", "logit_fn_of",
           "option_names", "register", "registered_name"]
