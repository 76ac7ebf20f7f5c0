"""Stored programs (`program_cache`): a later call loads the exported program instead of tracing, same values."""

import dataclasses
import functools
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from saliency_jax import methods, program_cache
from saliency_jax.models import efficientnet_lite, is_zoo_model
from saliency_jax.models.custom import from_function
from saliency_jax.models.model import Model
from tiny_models import tiny_model


@pytest.fixture
def cache(tmp_path):
    folder = program_cache.enable_program_cache(tmp_path / "programs")
    yield folder
    program_cache.disable_program_cache()


@jax.jit
def _toy(params, x):
    return {"y": jnp.tanh(x @ params["w"]) + params["b"], "n": jnp.sum(x)}


def _toy_args(n=3):
    rng = np.random.default_rng(0)
    return {"w": rng.normal(size=(4, 2)).astype(np.float32), "b": np.float32(0.5)}, rng.normal(size=(n, 4)).astype(
        np.float32)


def _forbid_export(monkeypatch):
    def fail(*args):
        raise AssertionError("the stored program should have been loaded, not exported again")

    monkeypatch.setattr(program_cache, "_export", fail)


def test_a_stored_program_is_loaded_in_a_later_call_with_the_same_values(cache, monkeypatch):
    args = _toy_args()
    direct = _toy(*args)
    first = program_cache.cached_call(_toy, *args, name="toy")
    assert len(list(cache.glob("*.jaxexport"))) == 1
    program_cache.disable_program_cache()  # a new process: nothing loaded in memory
    program_cache.enable_program_cache(cache)
    _forbid_export(monkeypatch)
    again = program_cache.cached_call(_toy, *args, name="toy")
    for out in (first, again):
        np.testing.assert_array_equal(out["y"], direct["y"])
        np.testing.assert_array_equal(out["n"], direct["n"])


def test_the_key_follows_shapes_dtypes_names_and_static_options():
    params, x = _toy_args()
    key = lambda name, *args: program_cache.program_key(name, *reversed(jax.tree.flatten(args)))  # noqa: E731
    base = key("toy", params, x)
    assert base == key("toy", params, x.copy())  # equal shapes and dtypes, other values: one program
    assert base != key("toy", params, x[:2])
    assert base != key("toy", params, x.astype(np.float16))
    assert base != key("other", params, x)
    assert key("m", methods.SmoothGrad(num_samples=8)) == key("m", methods.SmoothGrad(num_samples=8))
    with jax.default_matmul_precision("highest"):  # traced into every dot: another program
        assert key("toy", params, x) != base
    assert key("m", methods.SmoothGrad(num_samples=8)) != key("m", methods.SmoothGrad(num_samples=9))


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class _Foreign:  # a pytree node of the user's: its code is not in the key
    w: jax.Array


def test_calls_whose_code_the_key_cannot_see_are_not_stored(cache):
    assert program_cache.program_key("f", *reversed(jax.tree.flatten((_Foreign(jnp.ones(2)),)))) is None
    user = from_function(lambda p, x: jnp.sum(x, axis=(1, 2)) @ p, jnp.ones((3, 2)), input_size=4)
    assert program_cache.program_key("f", *reversed(jax.tree.flatten((user,)))) is None  # a function in its statics
    assert not is_zoo_model(user) and not is_zoo_model(tiny_model())
    out = methods.attribute(tiny_model(), np.ones((2, 8, 8, 3), np.float32), 0, method="vanilla")
    assert out.shape == (2, 8, 8, 3) and not list(cache.glob("*"))  # a user's model: computed, not stored


def test_a_damaged_entry_is_exported_again(cache):
    args = _toy_args()
    program_cache.cached_call(_toy, *args, name="toy")
    (entry,) = cache.glob("*.jaxexport")
    entry.write_bytes(b"\x00not a program" * 10)
    program_cache.disable_program_cache()
    program_cache.enable_program_cache(cache)
    out = program_cache.cached_call(_toy, *args, name="toy")
    np.testing.assert_allclose(out["y"], _toy(*args)["y"])
    assert entry.read_bytes()[:14] != b"\x00not a program"  # rewritten with a valid program


def _small_lite0() -> Model:
    """EfficientNet-Lite0's zoo architecture, random weights, 32x32 inputs (a zoo model for the cache)."""
    config = dataclasses.replace(efficientnet_lite.LITE0, image_size=32)
    module = efficientnet_lite.EfficientNetLite(config)
    shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    leaves, tree = jax.tree.flatten(shapes)
    rng = np.random.default_rng(0)
    variables = tree.unflatten([jnp.asarray(rng.normal(0, 0.1, s.shape), s.dtype) for s in leaves])
    return Model("efficientnet_lite0", module, variables, (32, 32), (127.0,), (128.0,),
                 tuple(f"c{i}" for i in range(1000)), efficientnet_lite.layer_names(config), "head")


def test_attribute_on_a_zoo_model_goes_through_the_stored_program(cache, monkeypatch):
    model = _small_lite0()
    assert is_zoo_model(model)
    x = np.random.default_rng(1).normal(size=(2, 32, 32, 3)).astype(np.float32)
    run = functools.partial(methods.attribute, model, x, np.array([3, 7]), method="gradient_x_input",
                            key=jax.random.key(2))
    program_cache.disable_program_cache()
    direct = np.asarray(run())
    program_cache.enable_program_cache(cache)
    stored = np.asarray(run())
    assert len(list(cache.glob("*.jaxexport"))) == 1
    program_cache.disable_program_cache()
    program_cache.enable_program_cache(cache)
    _forbid_export(monkeypatch)
    loaded = np.asarray(run())
    np.testing.assert_allclose(stored, direct, rtol=1e-5, atol=1e-6 * np.abs(direct).max())
    np.testing.assert_array_equal(loaded, stored)
    monkeypatch.undo()
    logits = np.asarray(model.logits(x))  # the zoo model's forward is stored too
    assert len(list(cache.glob("*.jaxexport"))) == 2
    program_cache.disable_program_cache()
    np.testing.assert_allclose(logits, np.asarray(model.logits(x)), rtol=1e-5, atol=1e-5)


def test_without_serialisation_the_call_still_runs_and_stores_nothing(cache, monkeypatch):
    def no_flatbuffers(self):
        raise ImportError("Please install 'flatbuffers' in order to use Exported serialization")

    monkeypatch.setattr(jax.export.Exported, "serialize", no_flatbuffers)
    args = _toy_args()
    out = program_cache.cached_call(_toy, *args, name="toy")
    np.testing.assert_allclose(out["y"], _toy(*args)["y"])
    assert not list(cache.glob("*"))


MB = 2**20


def _entry(folder, name, size, mtime):
    path = folder / name
    path.write_bytes(b"\0" * size)
    os.utime(path, (mtime, mtime))
    return path


def test_writing_an_entry_prunes_the_least_recently_used_to_the_cap_and_leaves_other_files(cache, monkeypatch):
    monkeypatch.setattr(program_cache, "MAX_BYTES", 3 * MB // 2)  # one fake entry and the real (~KB) one fit
    oldest, newer = _entry(cache, "a.jaxexport", MB, 1000), _entry(cache, "b.jaxexport", MB, 2000)
    foreign = [_entry(cache, "notes.txt", 4 * MB, 0), _entry(cache, "a.jaxexport.bak", MB, 0)]
    program_cache.cached_call(_toy, *_toy_args(), name="toy")
    assert not oldest.exists() and newer.exists() and len(list(cache.glob("*.jaxexport"))) == 2
    assert all(path.exists() for path in foreign)  # neither counted nor deleted


def test_a_loaded_entry_outlives_an_older_unused_one(cache, monkeypatch):
    args = _toy_args()
    program_cache.cached_call(_toy, *args, name="toy")
    (used,) = cache.glob("*.jaxexport")
    os.utime(used, (1000, 1000))  # written long ago ...
    unused = _entry(cache, "unused.jaxexport", MB, 2000)
    program_cache.disable_program_cache()  # ... and loaded by a new process now
    program_cache.enable_program_cache(cache)
    program_cache.cached_call(_toy, *args, name="toy")
    monkeypatch.setattr(program_cache, "MAX_BYTES", MB // 2)
    program_cache.cached_call(_toy, *args, name="toy2")  # a new entry: over the cap, prune
    assert used.exists() and not unused.exists() and len(list(cache.glob("*.jaxexport"))) == 2


def test_pruning_keeps_the_new_entry_and_skips_what_it_cannot_delete(tmp_path, monkeypatch):
    entries = [_entry(tmp_path, f"{i}.jaxexport", 100, 1000 + i) for i in range(3)]
    unlink = pathlib.Path.unlink

    def read_only_first(path):
        if path == entries[0]:
            raise PermissionError(path)
        unlink(path)

    monkeypatch.setattr(pathlib.Path, "unlink", read_only_first)
    assert program_cache.prune_programs(tmp_path, keep=entries[1], max_bytes=0) == [entries[2]]
    assert program_cache.prune_programs(tmp_path / "gone", max_bytes=0) == []
    monkeypatch.setenv(program_cache.MAX_MB_VAR, "0.5")
    assert program_cache.max_program_bytes() == MB // 2
