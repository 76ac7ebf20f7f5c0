"""Converted params are cached on disk: one conversion, then loads that skip it."""

import os
import warnings

import numpy as np
import pytest

from saliency_jax.checkpoints import cache


@pytest.fixture
def source(tmp_path, monkeypatch):
    monkeypatch.setenv(cache.ENV_VAR, str(tmp_path / "cache"))
    path = tmp_path / "weights.pth"
    path.write_bytes(b"stand-in checkpoint")
    return path


def _counting_converter():
    calls = []

    def convert():
        calls.append(1)
        return {"layer": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3), "bias": np.ones(3, np.float32)}}

    return convert, calls


def test_second_load_skips_conversion_and_is_identical(source, tmp_path):
    convert, calls = _counting_converter()
    first = cache.cached_convert("m-v1", source, convert)
    second = cache.cached_convert("m-v1", source, convert)
    assert len(calls) == 1
    np.testing.assert_array_equal(first["layer"]["kernel"], second["layer"]["kernel"])
    assert second["layer"]["bias"].dtype == np.float32
    assert list((tmp_path / "cache").glob("m-v1-*.npz"))


def test_changed_checkpoint_or_tag_reconverts(source):
    convert, calls = _counting_converter()
    cache.cached_convert("m-v1", source, convert)
    stat = source.stat()
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    cache.cached_convert("m-v1", source, convert)
    cache.cached_convert("m-v2", source, convert)
    assert len(calls) == 3


def test_damaged_entry_is_rebuilt(source, tmp_path):
    convert, calls = _counting_converter()
    cache.cached_convert("m-v1", source, convert)
    (entry,) = (tmp_path / "cache").glob("*.npz")
    entry.write_bytes(b"garbage")
    params = cache.cached_convert("m-v1", source, convert)
    assert len(calls) == 2 and params["layer"]["kernel"].shape == (2, 3)


def test_unwritable_cache_warns_and_still_loads(source, tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv(cache.ENV_VAR, str(blocker / "sub"))
    convert, calls = _counting_converter()
    with pytest.warns(UserWarning, match="could not write the params cache"):
        params = cache.cached_convert("m-v1", source, convert)
    assert params["layer"]["bias"].shape == (3,)


def test_disabled_cache_always_converts(source, tmp_path):
    convert, calls = _counting_converter()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cache.cached_convert("m-v1", source, convert, enabled=False)
        cache.cached_convert("m-v1", source, convert, enabled=False)
    assert len(calls) == 2 and not (tmp_path / "cache").exists()


def test_flatten_roundtrip():
    tree = {"a": {"b": np.zeros(2), "c": {"d": np.ones(1)}}, "e": np.arange(3)}
    back = cache.unflatten(cache.flatten(tree))
    assert set(cache.flatten(back)) == {"a/b", "a/c/d", "e"}


def test_real_model_load_uses_cache(tmp_path, monkeypatch):
    import saliency_jax
    from saliency_jax.models import efficientnet_lite

    monkeypatch.setenv(cache.ENV_VAR, str(tmp_path / "c"))
    calls = []
    real = efficientnet_lite.convert_torch_state_dict
    monkeypatch.setattr(efficientnet_lite, "convert_torch_state_dict", lambda *a: calls.append(1) or real(*a))
    m1 = saliency_jax.load_model()
    m2 = saliency_jax.load_model()
    assert len(calls) == 1
    k1 = m1.variables["params"]["classifier"]["kernel"]
    np.testing.assert_array_equal(k1, m2.variables["params"]["classifier"]["kernel"])
