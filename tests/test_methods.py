"""Methods as values: registry, string form == value, one compilation per value, composition,
a user-written method through attribute / the batch job / the metrics, lowering for cpu/cuda/tpu,
and the one-line errors for bad numbers."""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import saliency_jax
from saliency_jax import methods
from saliency_jax.methods.integrated_gradients import path_points
from method_options import cheap_options
from tiny_models import tiny_model

K = 4


@pytest.fixture(scope="module")
def tiny():
    return tiny_model((8, 8), K)


@pytest.fixture(scope="module")
def x():
    return jnp.asarray(np.random.default_rng(1).normal(size=(2, 8, 8, 3)), jnp.float32)


def _small(name: str) -> dict:
    """Cheap options for a registered method (few samples and steps)."""
    return cheap_options(name, layer="conv")


@dataclasses.dataclass(frozen=True)
class Doubled(methods.Method):
    """A user's own method, defined here: `scale` times the vanilla gradient."""

    scale: float = 2.0

    def explain(self, model, x, target, *, key=None):
        return self.scale * methods.Vanilla().explain(model, x, target)


# ---- registry and string form ------------------------------------------------------------
@pytest.mark.parametrize("name", methods.available_methods())
def test_string_form_equals_the_value(tiny, x, name):
    options = _small(name)
    value = methods.get(name, **options)
    assert methods.registered_name(value) == name
    assert value == methods.get(name, **options) and hash(value) == hash(methods.get(name, **options))
    key = jax.random.key(2)
    by_name = saliency_jax.attribute(tiny, x, [0, 3], method=name, key=key, **options)
    by_value = saliency_jax.attribute(tiny, x, [0, 3], method=value, key=key)
    np.testing.assert_array_equal(by_name, by_value)


def test_aliases_are_values_with_fixed_options():
    assert methods.get("vargrad", num_samples=8) == methods.SmoothGrad(num_samples=8, variant="var")
    assert methods.get("smoothgrad_squared") == methods.SmoothGrad(variant="squared")
    assert methods.get("guided_smoothgrad") == methods.SmoothGrad(base=methods.GuidedBackprop())
    assert "variant" not in methods.option_names("vargrad")
    with pytest.raises(ValueError, match=r"method 'vargrad' got unknown option\(s\) variant"):
        methods.get("vargrad", variant="mean")


def test_a_user_can_register_a_method(tiny, x):
    methods.register("doubled_for_test", Doubled)
    try:
        assert "doubled_for_test" in methods.available_methods()
        out = saliency_jax.attribute(tiny, x, 1, method="doubled_for_test", scale=3.0)
        np.testing.assert_allclose(out, 3.0 * saliency_jax.attribute(tiny, x, 1), rtol=1e-6)
    finally:
        methods.base._REGISTRY.pop("doubled_for_test")


# ---- one compilation per value -----------------------------------------------------------
def test_equal_values_built_twice_share_one_compilation(tiny, x):
    key = jax.random.key(0)
    saliency_jax.attribute(tiny, x, 0, method=methods.SmoothGrad(num_samples=3, chunk_size=3), key=key)
    before = methods.attribute_batch._cache_size()
    saliency_jax.attribute(tiny, x, 0, method=methods.SmoothGrad(num_samples=3, chunk_size=3), key=key)
    saliency_jax.attribute(tiny, x, 0, method="smoothgrad", num_samples=3, chunk_size=3, key=key)
    assert methods.attribute_batch._cache_size() == before
    # noise_scale is traced: another value runs on the same compilation and changes the result
    a = saliency_jax.attribute(tiny, x, 0, method=methods.SmoothGrad(num_samples=3, chunk_size=3,
                                                                     noise_scale=0.5), key=key)
    assert methods.attribute_batch._cache_size() == before
    b = saliency_jax.attribute(tiny, x, 0, method=methods.SmoothGrad(num_samples=3, chunk_size=3), key=key)
    assert not np.allclose(a, b)
    saliency_jax.attribute(tiny, x, 0, method=methods.SmoothGrad(num_samples=4, chunk_size=3), key=key)
    assert methods.attribute_batch._cache_size() == before + 1  # a static option does recompile


def test_batch_size_pads_every_chunk_one_compilation(tiny):
    rng = np.random.default_rng(3)
    many = jnp.asarray(rng.normal(size=(13, 8, 8, 3)), jnp.float32)
    saliency_jax.attribute(tiny, many[:5], 0, batch_size=8)
    before = methods.attribute_batch._cache_size()
    for n in (5, 13, 3):
        out = saliency_jax.attribute(tiny, many[:n], 0, batch_size=8)
        assert out.shape == (n, 8, 8, 3)
    assert methods.attribute_batch._cache_size() == before
    np.testing.assert_allclose(out, saliency_jax.attribute(tiny, many[:3], 0), rtol=1e-6)


# ---- composition -------------------------------------------------------------------------
def test_smoothgrad_of_ig_without_noise_is_ig(tiny, x):
    ig = methods.IntegratedGradients(num_steps=4)
    sg = methods.SmoothGrad(base=ig, num_samples=2, noise_scale=0.0)
    key = jax.random.key(0)
    np.testing.assert_allclose(saliency_jax.attribute(tiny, x, 2, method=sg, key=key),
                               saliency_jax.attribute(tiny, x, 2, method=ig), rtol=1e-5, atol=1e-7)


def test_smoothgrad_of_guided_backprop_averages_guided_maps(tiny, x):
    key = jax.random.key(4)
    sg = methods.SmoothGrad(base=methods.GuidedBackprop(), num_samples=3)
    out = saliency_jax.attribute(tiny, x[:1], 1, method=sg, key=key)
    sigma = 0.15 * (jnp.max(x[0]) - jnp.min(x[0]))
    noisy = jnp.stack([x[0] + sigma * jax.random.normal(jax.random.fold_in(key, i), x[0].shape) for i in range(3)])
    guided = saliency_jax.attribute(tiny, noisy, 1, method="guided")
    np.testing.assert_allclose(out[0], guided.mean(0), rtol=1e-4, atol=1e-6)
    assert not np.allclose(out[0], saliency_jax.attribute(tiny, noisy, 1).mean(0), atol=1e-6)


def test_smoothgrad_of_gradcam_needs_a_model_and_no_unit_targets(tiny, x):
    sg = methods.SmoothGrad(base=methods.GradCAM(layer="conv"), num_samples=2)
    assert sg.needs_layers and sg.class_only
    out = saliency_jax.attribute(tiny, x, 0, method=sg, key=jax.random.key(0))
    assert out.shape == x.shape and bool(jnp.all(out >= 0))
    with pytest.raises(ValueError, match="explains a class score"):
        saliency_jax.attribute(tiny, x, saliency_jax.unit("conv", 0), method=sg, key=jax.random.key(0))


# ---- Integrated Gradients options -----------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_gauss_legendre_is_exact_for_polynomials_of_degree_2n_minus_1(n):
    alphas, weights = (np.asarray(a, np.float64) for a in path_points(n, "gausslegendre"))
    for degree in range(2 * n):
        np.testing.assert_allclose(np.sum(weights * alphas**degree), 1.0 / (degree + 1), rtol=2e-6)
    # and not beyond: degree 2n is integrated with an error (1/12, 1/180, 1/2800, 1.4e-6 for n = 1, 2, 3, 5)
    assert abs(np.sum(weights * alphas ** (2 * n)) - 1.0 / (2 * n + 1)) > 1e-6


def test_ig_multiply_by_inputs_false_is_the_path_average_gradient():
    w = jnp.arange(1.0, 1 + 2 * 3 * 3).reshape(2, 3, 3) / 10
    f = lambda x: jnp.stack([jnp.sum(w * x**3), jnp.sum(x)])  # noqa: E731
    x = jnp.full((1, 2, 3, 3), 2.0)
    out = saliency_jax.attribute(f, x, 0, method=methods.IntegratedGradients(
        num_steps=3, quadrature="gausslegendre", multiply_by_inputs=False))
    # integral_0^1 3 w (a x)^2 da = w x^2, exact for Gauss-Legendre with 3 nodes
    np.testing.assert_allclose(out[0], w * 4.0, rtol=1e-5)
    full = saliency_jax.attribute(f, x, 0, method=methods.IntegratedGradients(num_steps=3,
                                                                               quadrature="gausslegendre"))
    np.testing.assert_allclose(full[0], w * 8.0, rtol=1e-5)


def test_rule_is_a_deprecated_alias_of_quadrature():
    with pytest.warns(DeprecationWarning, match="'rule' is deprecated, use 'quadrature'"):
        value = methods.get("ig", rule="trapezoid", num_steps=4)
    assert value == methods.IntegratedGradients(quadrature="trapezoid", num_steps=4)


def test_per_image_baselines_match_single_calls(tiny, x):
    base = jnp.asarray(np.random.default_rng(5).normal(size=x.shape), jnp.float32)
    ig = methods.IntegratedGradients(num_steps=4)
    both = saliency_jax.attribute(tiny, x, 1, method=ig, baseline=base)
    for i in range(len(x)):
        one = saliency_jax.attribute(tiny, x[i:i + 1], 1, method=ig, baseline=base[i])
        np.testing.assert_allclose(both[i], one[0], rtol=1e-5, atol=1e-6)
    as_field = saliency_jax.attribute(tiny, x, 1, method=methods.IntegratedGradients(num_steps=4, baseline=base))
    np.testing.assert_allclose(as_field, both, rtol=1e-6)


# ---- a method written in user code -------------------------------------------------------
def test_user_method_through_attribute_and_the_metrics(tiny, x):
    out = saliency_jax.attribute(tiny, x, 1, method=Doubled(scale=3.0))
    np.testing.assert_allclose(out, 3.0 * saliency_jax.attribute(tiny, x, 1), rtol=1e-6)
    from saliency_jax.metrics.randomization import cascading_randomization

    tiny = tiny_model((16, 16), K)  # SSIM's window needs maps of 11 pixels at least
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 16, 16, 3)), jnp.float32)
    check = cascading_randomization(tiny, x, 1, key=jax.random.key(0), method=Doubled())
    np.testing.assert_allclose(check.spearman[0], 1.0, rtol=1e-6)
    plain = cascading_randomization(tiny, x, 1, key=jax.random.key(0))
    np.testing.assert_allclose(check.spearman, plain.spearman, rtol=1e-5)  # a scaled map ranks the same


def test_user_method_through_the_batch_job(tiny, tmp_path):
    from saliency_jax.data import open_source
    from saliency_jax.jobs import load_outputs, run_batch_job

    (tmp_path / "in").mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (10, 12, 3), dtype=np.uint8)).save(tmp_path / "in" / f"{i}.png")
    mine = run_batch_job(open_source(str(tmp_path / "in")), tiny, tmp_path / "mine", method=Doubled(),
                         batch_size=2, progress=False)
    plain = run_batch_job(open_source(str(tmp_path / "in")), tiny, tmp_path / "plain", batch_size=2,
                          progress=False)
    assert mine.errors == plain.errors == 0
    a, b = load_outputs(tmp_path / "mine"), load_outputs(tmp_path / "plain")
    np.testing.assert_allclose(a["maps"], b["maps"], atol=1e-6)  # normalised maps: the scale drops out
    config = (tmp_path / "mine" / "job.json").read_text()
    assert "Doubled" in config and '"scale": 2.0' in config


def test_a_method_without_explain_or_dataclass_is_refused(tiny, x):
    class NoExplain(methods.Method):
        pass

    with pytest.raises(TypeError, match="must be a dataclass"):
        saliency_jax.attribute(tiny, x, 0, method=NoExplain())

    @dataclasses.dataclass(frozen=True)
    class Empty(methods.Method):
        pass

    with pytest.raises(NotImplementedError, match="must implement explain"):
        saliency_jax.attribute(tiny, x, 0, method=Empty())


# ---- every registered method lowers for cpu, cuda and tpu ------------------------------------
@pytest.mark.parametrize("name", methods.available_methods())
def test_every_method_lowers_for_cpu_cuda_and_tpu(tiny, name):
    method = methods.get(name, **_small(name)).prepare(tiny, (8, 8, 3), images_per_call=2)

    def run(model, x, targets, key):
        return methods.attribute_batch(method, model, x, targets, key)

    args = (tiny, jnp.zeros((2, 8, 8, 3)), jnp.zeros((2,), jnp.int32), jax.random.key(0))
    exported = jax.export.export(jax.jit(run), platforms=("cpu", "cuda", "tpu"))(*args)
    assert exported.platforms == ("cpu", "cuda", "tpu")
    assert exported.out_avals[0].shape == (2, 8, 8, 3)


# ---- bad numbers: one line, naming the option --------------------------------------------
@pytest.mark.parametrize("options,message", [
    (dict(method="smoothgrad", num_samples=0), r"SmoothGrad: num_samples must be an integer in \[1, 100000\], got 0"),
    (dict(method="smoothgrad", num_samples=2.5), "SmoothGrad: num_samples must be a positive integer, got 2.5"),
    (dict(method="smoothgrad", num_samples=10**9), r"num_samples must be an integer in \[1, 100000\]"),
    (dict(method="smoothgrad", noise_scale=-1.0), r"SmoothGrad: noise_scale must lie in \[0, 1000\], got -1"),
    (dict(method="smoothgrad", noise_scale=float("nan")), "noise_scale must be a finite number, got nan"),
    (dict(method="smoothgrad", noise_scale=float("inf")), "noise_scale must be a finite number, got inf"),
    (dict(method="ig", num_steps=0), r"IntegratedGradients: num_steps must be an integer in \[1, 100000\]"),
    (dict(method="ig", num_steps=True), "num_steps must be a positive integer, got True"),
    (dict(method="ig", chunk_size=-2), r"chunk_size must be an integer in \[1, 100000\], got -2"),
    (dict(method="ig", quadrature="simpson"), "unknown integration rule 'simpson'; choose one of midpoint"),
    (dict(method="ig", baseline=np.zeros((3, 3, 3))), r"baseline of shape \(3, 3, 3\) does not broadcast"),
    (dict(method="ig", baseline=np.zeros((5, 8, 8, 3))), r"baseline must be \[H,W,C\] or \[B,H,W,C\]"),
    (dict(batch_size=2.5), "batch_size must be a positive integer, got 2.5"),
    (dict(batch_size=2.0), "batch_size must be a positive integer, got 2.0"),
    (dict(batch_size=0), r"batch_size must be an integer in \[1, 100000\], got 0"),
    (dict(method=methods.Vanilla(), num_samples=3), r"options num_samples go into the method value itself"),
    (dict(method="smoothgrad", base="vanilla"), "SmoothGrad: base must be a method value"),
    (dict(method="gradcam", layer=3), "GradCAM: layer must be a layer name"),
])
def test_bad_numbers_are_one_line_errors(tiny, x, options, message):
    with pytest.raises(ValueError, match=message) as err:
        saliency_jax.attribute(tiny, x, 0, key=jax.random.key(0), **options)
    assert "\n" not in str(err.value) and len(str(err.value)) < 300


def test_a_logit_function_returning_a_batch_is_refused(x):
    with pytest.raises(ValueError, match=r"must return one score vector \[K\] per image \[H,W,C\]; got \(1, 4\)"):
        saliency_jax.attribute(lambda image: jnp.ones((1, 4)) * jnp.sum(image), x, 0)


def test_describe_is_json_ready():
    import json

    record = methods.describe(methods.SmoothGrad(base=methods.IntegratedGradients(baseline=np.zeros((2, 2, 3)))))
    text = json.dumps(record)
    assert record["method"] == "smoothgrad" and record["options"]["base"]["method"] == "ig"
    assert re.search(r'"baseline": "array\[2, 2, 3\]:float64"', text)


def test_the_readme_write_your_own_method_example_runs(tiny, x):
    import pathlib

    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    block = readme.split("<!-- tested: tests/test_methods.py runs this block -->\n```python\n", 1)[1]
    code = block.split("```", 1)[0]
    assert 5 <= len(code.strip().splitlines()) <= 15
    namespace = {"jax": jax, "jnp": jnp, "saliency_jax": saliency_jax, "model": tiny, "x": x}
    exec(compile(code, "README.md", "exec"), namespace)
    grad = saliency_jax.attribute(tiny, x, "top1")
    contrast = jnp.abs(x - jnp.mean(x, axis=(1, 2), keepdims=True))
    np.testing.assert_allclose(namespace["maps"], jnp.abs(grad) * contrast**2, rtol=1e-5, atol=1e-7)
