"""Progress over the chunks of a compiled call: ticks from the outermost sample sum, in images, only when
asked (the default program has no callback), and the same result either way."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import saliency_jax
from saliency_jax import methods
from saliency_jax.methods.batch import attribute_batch

H, W, C = 6, 7, 3
RNG = np.random.default_rng(0)
WEIGHTS = jnp.asarray(RNG.normal(size=(2, H, W, C)), jnp.float32)
X = jnp.asarray(RNG.normal(size=(3, H, W, C)), jnp.float32)
KEY = jax.random.key(0)


def model(image):
    return jnp.tanh(jnp.einsum("khwc,hwc->k", WEIGHTS, image))


# occlusion: 4 x 5 window positions in chunks of 4 -> 5 chunks; smoothgrad: 8 samples in chunks of 2 -> 4;
# kernel_shap: 14 coalitions of 4 cells in chunks of 5 -> 3 (its Gram matrix, the first term of its sum,
# does not depend on the image: the tick must still come once per image)
CHUNKED = [(methods.Occlusion(window=3, stride=1, chunk_size=4), 5),
           (methods.SmoothGrad(num_samples=8, chunk_size=2), 4),
           (methods.KernelSHAP(num_segments=4, num_samples=20, chunk_size=5), 3)]


@pytest.mark.parametrize("method,chunks", CHUNKED, ids=["occlusion", "smoothgrad", "kernel_shap"])
def test_a_callable_receives_one_tick_per_chunk_and_image_summing_to_the_images(method, chunks):
    ticks = []
    out = saliency_jax.attribute(model, X, 0, method=method, key=KEY, progress=ticks.append)
    assert len(ticks) == chunks * len(X)
    np.testing.assert_allclose(ticks, 1 / chunks)
    np.testing.assert_allclose(sum(ticks), len(X))
    np.testing.assert_array_equal(np.asarray(out), np.asarray(saliency_jax.attribute(model, X, 0, method=method,
                                                                                     key=KEY)))


@pytest.mark.parametrize("method", [CHUNKED[0][0], "vanilla", methods.XRAI(segments="grid", num_segments=4,
                                                                            min_pixel_diff=1)],
                         ids=["occlusion", "vanilla", "xrai"])
def test_batches_padding_and_methods_without_or_with_nested_sample_sums_count_each_image_once(method):
    ticks = []
    out = saliency_jax.attribute(model, X, 0, method=method, key=KEY, progress=ticks.append, batch_size=2)
    np.testing.assert_allclose(sum(ticks), len(X))  # the padded image of the last batch is not counted
    assert max(ticks) <= 2 + 1e-6
    np.testing.assert_allclose(out, saliency_jax.attribute(model, X, 0, method=method, key=KEY), rtol=1e-6, atol=1e-6)


def test_progress_true_is_a_bar_over_images(capsys):
    saliency_jax.attribute(model, X, 0, method=CHUNKED[0][0], progress=True)
    last = capsys.readouterr().err.strip().split("\r")[-1]  # e.g. "occlusion: 100%|...| 3.0/3 [..., 1.2img/s]"
    assert re.match(r"occlusion: 100%.* 3(\.0)?/3 .*img/s", last), last


def lowered(method, progress):
    prepared = methods.as_method(method).prepare(model, X.shape[1:], images_per_call=len(X))
    targets = jnp.zeros(len(X), jnp.int32)
    return attribute_batch.lower(prepared, None, X, targets, KEY, fn=model, progress=progress).as_text()


@pytest.mark.parametrize("method", [CHUNKED[0][0], CHUNKED[1][0]], ids=["occlusion", "smoothgrad"])
def test_the_default_program_has_no_callback(method):
    assert "callback" not in lowered(method, False)
    assert "callback" in lowered(method, True)


def test_progress_is_its_own_compilation_and_repeats_do_not_recompile():
    method = methods.Occlusion(window=3, stride=2)
    saliency_jax.attribute(model, X, 0, method=method)
    before = attribute_batch._cache_size()
    saliency_jax.attribute(model, X, 0, method=method, progress=lambda n: None)
    saliency_jax.attribute(model, X, 0, method=method, progress=lambda n: None)
    saliency_jax.attribute(model, X, 0, method=method)
    assert attribute_batch._cache_size() == before + 1


def test_progress_never_goes_through_the_program_cache(tmp_path, monkeypatch):
    from saliency_jax import program_cache
    from saliency_jax.methods import batch
    from tiny_models import tiny_model

    monkeypatch.setattr(batch, "is_zoo_model", lambda model: True)  # as if a zoo model: storable
    folder = program_cache.enable_program_cache(tmp_path / "programs")
    try:
        x = np.random.default_rng(1).normal(size=(2, 8, 8, 3)).astype(np.float32)
        method = methods.SmoothGrad(num_samples=4, chunk_size=2)
        ticks = []
        shown = saliency_jax.attribute(tiny_model(), x, 1, method=method, key=KEY, progress=ticks.append)
        assert not list(folder.glob("*.jaxexport")) and sum(ticks) == pytest.approx(2)  # callbacks: not exportable
        stored = saliency_jax.attribute(tiny_model(), x, 1, method=method, key=KEY)
        assert len(list(folder.glob("*.jaxexport"))) == 1
        np.testing.assert_allclose(shown, stored, rtol=1e-5, atol=1e-6)
    finally:
        program_cache.disable_program_cache()


def test_long_running_methods_are_the_many_pass_families_and_large_sample_counts():
    from saliency_jax import methods

    assert not methods.get("vanilla").long_running and not methods.get("smoothgrad").long_running
    assert methods.get("smoothgrad", num_samples=100).long_running and methods.get("ig", num_steps=500).long_running
    assert all(methods.get(name).long_running for name in ("occlusion", "rise", "kernel_shap", "lime", "scorecam",
                                                           "ablationcam", "feature_ablation", "shapley_sampling"))
