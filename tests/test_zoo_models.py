"""VGG16 and ResNet50 from user checkpoints: Keras (legacy and Keras 3 .h5), torchvision .pth and .safetensors.

References are independent of our code: Keras 3 itself (run in a subprocess,
JAX backend, random weights including BN statistics, its own `preprocess_input`)
and a torch-functional forward pass of the torchvision architecture written here.
Small inputs (VGG 32x32, ResNet 64x64) keep it fast.
"""

import dataclasses
import importlib.util
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import saliency_jax
from method_options import cheap_options
from saliency_jax.methods.gradcam import gradcam
from saliency_jax.checkpoints import CheckpointError
from saliency_jax.models import resnet, vgg

torch = pytest.importorskip("torch")
F = torch.nn.functional

SIZES = {"vgg16": 32, "resnet50": 64}
TV_MEAN, TV_STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])

# Runs in a fresh interpreter: KERAS_BACKEND must be set before keras is imported.
_KERAS_SCRIPT = textwrap.dedent(
    """
    import os, sys
    os.environ["KERAS_BACKEND"] = "jax"
    import h5py, keras, numpy as np
    from keras.src.legacy.saving import legacy_h5_format

    # Build with zero initialisers (fast); every weight is overwritten below.
    _add_weight = keras.layers.Layer.add_weight
    keras.layers.Layer.add_weight = lambda self, shape=None, initializer=None, *a, **k: _add_weight(
        self, shape, "zeros", *a, **k)
    out, rng = sys.argv[1], np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    np.save(f"{out}/images.npy", images)
    apps = {"vgg16": (keras.applications.VGG16, keras.applications.vgg16, 32),
            "resnet50": (keras.applications.ResNet50, keras.applications.resnet50, 64)}
    for name, (app, mod, size) in apps.items():
        model = app(weights=None, input_shape=(size, size, 3), classes=10, classifier_activation=None)
        for layer in model.layers:
            ws = layer.get_weights()
            if isinstance(layer, keras.layers.BatchNormalization):
                n = ws[0].shape
                ws = [rng.uniform(0.5, 1.5, n), rng.normal(0, 0.2, n), rng.normal(0, 0.2, n), rng.uniform(0.5, 2, n)]
            elif ws:
                std = np.sqrt(2 / np.prod(ws[0].shape[:-1]))
                ws = [rng.normal(0, std, ws[0].shape), rng.normal(0, 0.1, ws[1].shape)]
            layer.set_weights([w.astype(np.float32) for w in ws])
        model.save_weights(f"{out}/{name}.weights.h5")
        with h5py.File(f"{out}/{name}_legacy.h5", "w") as f:
            legacy_h5_format.save_weights_to_hdf5_group(f, model)
        x = mod.preprocess_input(images[:, :size, :size].astype(np.float32))
        np.save(f"{out}/{name}_logits.npy", np.asarray(model.predict(x, verbose=0)))
    """
)


@pytest.fixture(scope="module", autouse=True)
def _keras_job(tmp_path_factory):
    """Starts the Keras reference in the background as the module begins (the torch tests overlap it)."""
    out = tmp_path_factory.mktemp("keras")
    env = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3", "JAX_PLATFORMS": "cpu"}
    proc = None
    if all(importlib.util.find_spec(m) is not None for m in ("keras", "h5py")):
        proc = subprocess.Popen([sys.executable, "-c", _KERAS_SCRIPT, str(out)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    yield proc, out
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def keras_artifacts(_keras_job):
    proc, out = _keras_job
    if proc is None:
        pytest.skip("keras and h5py are needed for the Keras parity tests")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()[-3000:]
    return out


# One compilation per architecture/config for logits and features (the Model's metadata is static).
_apply = jax.jit(lambda model, x: model.apply(x))


def _same_params(a, b):
    return jax.tree.all(jax.tree.map(lambda u, v: bool(np.array_equal(u, v)), a.variables, b.variables))


def _rel_err(a, b):
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


def _images(size):
    return np.random.default_rng(1).integers(0, 256, (2, size, size, 3), dtype=np.uint8)


# ---- torchvision layout: random state dicts and a torch-functional reference -------------------------------

_VGG_WIDTHS = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def _he(gen, *shape):
    fan_in = int(np.prod(shape[1:]))
    return torch.randn(*shape, generator=gen) * (2 / fan_in) ** 0.5


def _bn(gen, sd, name, c):
    sd[f"{name}.weight"] = torch.rand(c, generator=gen) + 0.5
    sd[f"{name}.bias"] = torch.randn(c, generator=gen) * 0.2
    sd[f"{name}.running_mean"] = torch.randn(c, generator=gen) * 0.2
    sd[f"{name}.running_var"] = torch.rand(c, generator=gen) * 1.5 + 0.5
    sd[f"{name}.num_batches_tracked"] = torch.tensor(7)


def torchvision_vgg16(num_classes=10, hidden=64, seed=0):
    """A torchvision-layout VGG16 state dict (fc width `hidden` keeps it small)."""
    gen, sd, cin, i = torch.Generator().manual_seed(seed), {}, 3, 0
    for w in _VGG_WIDTHS:
        if w != "M":
            sd[f"features.{i}.weight"] = _he(gen, w, cin, 3, 3)
            sd[f"features.{i}.bias"] = torch.randn(w, generator=gen) * 0.1
            cin, i = w, i + 1
        i += 1
    for j, (o, n) in zip((0, 3, 6), ((hidden, 512 * 49), (hidden, hidden), (num_classes, hidden))):
        sd[f"classifier.{j}.weight"] = _he(gen, o, n)
        sd[f"classifier.{j}.bias"] = torch.randn(o, generator=gen) * 0.1
    return sd


def torchvision_resnet50(num_classes=10, seed=0):
    gen, sd = torch.Generator().manual_seed(seed), {}
    sd["conv1.weight"] = _he(gen, 64, 3, 7, 7)
    _bn(gen, sd, "bn1", 64)
    cin = 64
    for s, (n, w) in enumerate(((3, 64), (4, 128), (6, 256), (3, 512)), 1):
        for b in range(n):
            pre = f"layer{s}.{b}"
            for k, (ci, co, ks) in enumerate(((cin, w, 1), (w, w, 3), (w, 4 * w, 1)), 1):
                sd[f"{pre}.conv{k}.weight"] = _he(gen, co, ci, ks, ks)
                _bn(gen, sd, f"{pre}.bn{k}", co)
            if b == 0:
                sd[f"{pre}.downsample.0.weight"] = _he(gen, 4 * w, cin, 1, 1)
                _bn(gen, sd, f"{pre}.downsample.1", 4 * w)
            cin = 4 * w
    sd["fc.weight"] = _he(gen, num_classes, 2048)
    sd["fc.bias"] = torch.randn(num_classes, generator=gen) * 0.1
    return sd


def torch_vgg16(sd, x):
    """(logits, {"conv5_3": NCHW}) of torchvision's VGG16 forward, functional."""
    i, feats = 0, {}
    for w in _VGG_WIDTHS:
        if w == "M":
            x, i = F.max_pool2d(x, 2), i + 1
        else:
            x, i = F.relu(F.conv2d(x, sd[f"features.{i}.weight"], sd[f"features.{i}.bias"], padding=1)), i + 2
            feats["conv5_3"] = x
    x = torch.flatten(F.adaptive_avg_pool2d(x, (7, 7)), 1)
    x = F.relu(F.linear(x, sd["classifier.0.weight"], sd["classifier.0.bias"]))
    x = F.relu(F.linear(x, sd["classifier.3.weight"], sd["classifier.3.bias"]))
    return F.linear(x, sd["classifier.6.weight"], sd["classifier.6.bias"]), feats


def torch_resnet50(sd, x):
    """(logits, {"layer4": NCHW}) of torchvision's ResNet50 (v1.5) forward, functional."""

    def bn(x, name):
        return F.batch_norm(x, sd[f"{name}.running_mean"], sd[f"{name}.running_var"], sd[f"{name}.weight"],
                            sd[f"{name}.bias"], training=False, eps=1e-5)

    x = F.relu(bn(F.conv2d(x, sd["conv1.weight"], stride=2, padding=3), "bn1"))
    x = F.max_pool2d(x, 3, 2, 1)
    for s, n in enumerate((3, 4, 6, 3), 1):
        for b in range(n):
            pre, stride = f"layer{s}.{b}", 2 if s > 1 and b == 0 else 1
            y = F.relu(bn(F.conv2d(x, sd[f"{pre}.conv1.weight"]), f"{pre}.bn1"))
            y = F.relu(bn(F.conv2d(y, sd[f"{pre}.conv2.weight"], stride=stride, padding=1), f"{pre}.bn2"))
            y = bn(F.conv2d(y, sd[f"{pre}.conv3.weight"]), f"{pre}.bn3")
            if b == 0:
                x = bn(F.conv2d(x, sd[f"{pre}.downsample.0.weight"], stride=stride), f"{pre}.downsample.1")
            x = F.relu(y + x)
    feats = {"layer4": x}
    return F.linear(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1), sd["fc.weight"], sd["fc.bias"]), feats


TORCH_ARCHS = {
    "vgg16": (torchvision_vgg16, torch_vgg16, "conv5_3"),
    "resnet50": (torchvision_resnet50, torch_resnet50, "layer4"),
}


@pytest.fixture(scope="module")
def torch_checkpoints(tmp_path_factory):
    """name -> (state dict, {"pth": path, "safetensors": path})."""
    safetensors_torch = pytest.importorskip("safetensors.torch")
    out, result = tmp_path_factory.mktemp("torch"), {}
    for name, (make, _, _) in TORCH_ARCHS.items():
        sd = make()
        torch.save(sd, out / f"{name}.pth")
        safetensors_torch.save_file(sd, str(out / f"{name}.safetensors"))
        result[name] = sd, {"pth": out / f"{name}.pth", "safetensors": out / f"{name}.safetensors"}
    return result


@pytest.fixture(scope="module")
def tv_models(torch_checkpoints):
    """name -> Model loaded from the torchvision-layout .pth, run at the small test size."""
    return {
        name: dataclasses.replace(saliency_jax.load_model(name, weights=files["pth"], use_cache=False),
                                  input_size=(SIZES[name],) * 2)
        for name, (_, files) in torch_checkpoints.items()
    }


@pytest.mark.parametrize("name", ["vgg16", "resnet50"])
def test_torchvision_checkpoints_match_torch_forward(name, torch_checkpoints, tv_models):
    sd, files = torch_checkpoints[name]
    _, forward, layer = TORCH_ARCHS[name]
    images = _images(SIZES[name])
    x_ref = torch.from_numpy(((images / 255.0 - TV_MEAN) / TV_STD).astype(np.float32)).permute(0, 3, 1, 2)
    with torch.no_grad():
        ref, ref_feats = forward(sd, x_ref)
    model = tv_models[name]
    assert (model.num_classes, model.labels[3]) == (10, "class_3")
    x = model.preprocess(images)
    np.testing.assert_allclose(x, x_ref.permute(0, 2, 3, 1).numpy(), rtol=1e-5, atol=1e-5)
    logits, feats = _apply(model, x)
    assert _rel_err(logits, ref.numpy()) <= 1e-4
    assert _rel_err(feats[layer], ref_feats[layer].permute(0, 2, 3, 1).numpy()) <= 1e-4
    from_safetensors = saliency_jax.load_model(name, weights=files["safetensors"], use_cache=False)
    assert from_safetensors.input_size == (224, 224) and _same_params(from_safetensors, model)


@pytest.mark.parametrize("name", ["vgg16", "resnet50"])
def test_keras_weight_files_match_keras(name, keras_artifacts):
    size = SIZES[name]
    images = np.load(keras_artifacts / "images.npy")[:, :size, :size]
    ref = np.load(keras_artifacts / f"{name}_logits.npy")
    legacy, keras3 = (saliency_jax.load_model(name, weights=keras_artifacts / f, use_cache=False)
                      for f in (f"{name}_legacy.h5", f"{name}.weights.h5"))
    assert legacy.mean == (123.68, 116.779, 103.939) and legacy.std == (1.0,)
    # Keras' VGG fc1 fixes the input size (32x32 here); ResNet runs at any size.
    assert legacy.input_size == ((32, 32) if name == "vgg16" else (224, 224))
    assert _same_params(legacy, keras3) and legacy.module == keras3.module
    model = dataclasses.replace(legacy, input_size=(size, size))
    assert _rel_err(_apply(model, model.preprocess(images))[0], ref) <= 1e-4


def test_keras_params_are_cached_with_their_variant(keras_artifacts):
    path = keras_artifacts / "vgg16_legacy.h5"
    first = saliency_jax.load_model("vgg16", weights=path)
    again = saliency_jax.load_model("vgg16", weights=path)  # from the cache: config rebuilt from params
    assert again.module == first.module and again.input_size == (32, 32) and again.mean == first.mean
    assert not again.module.config.adaptive_pool and _same_params(first, again)


def test_feature_taps_and_default_gradcam_layer(tv_models):
    model = tv_models["vgg16"]
    assert model.layers == vgg.layer_names() and len(model.layers) == 20
    x = model.preprocess(_images(32))
    feats = _apply(model, x)[1]
    assert set(feats) == set(model.layers)
    assert feats["conv5_3"].shape == (2, 2, 2, 512) and feats["pool5"].shape == (2, 1, 1, 512)
    assert feats["fc7"].shape == (2, 64)
    _, state = jax.eval_shape(lambda x: model.apply(x, mutable=["perturbations"]), x)
    assert set(state["perturbations"]) == set(model.layers)  # every tap is a perturbation point
    assert model.default_layer() == "conv5_3" and tv_models["resnet50"].default_layer() == "layer4"
    cam = jax.jit(gradcam)(model, x[0], 3)  # layer=None: the model's default
    assert cam.shape == (32, 32, 3) and bool(np.all(np.isfinite(cam))) and float(cam.max()) > 0
    names = resnet.layer_names()
    assert names[:5] == ("stem", "layer1_0", "layer1_1", "layer1_2", "layer1") and names[-2:] == ("layer4", "pool")


@pytest.mark.parametrize("n", [1, 2, 7, 9, 13])
def test_adaptive_avg_pool_matches_torch(n):
    x = np.random.default_rng(n).normal(size=(2, n, n + 3, 5)).astype(np.float32)
    ref = F.adaptive_avg_pool2d(torch.from_numpy(x).permute(0, 3, 1, 2), (7, 7)).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(vgg.adaptive_avg_pool(x, (7, 7)), ref, rtol=1e-6, atol=1e-6)


# ---- mismatched or missing checkpoints -----------------------------------------------------------------------


def _numpy_vgg():
    return {k: v.numpy() for k, v in torchvision_vgg16().items()}


def test_mismatched_state_dict_lists_the_problems():
    sd = _numpy_vgg()
    del sd["features.28.weight"], sd["features.28.bias"]
    sd["foo.bar"] = np.zeros(3, np.float32)
    sd["features.0.weight"] = np.zeros((64, 3, 5, 5), np.float32)
    with pytest.raises(CheckpointError, match=(
        r"^checkpoint does not match vgg16 \(torchvision layout\): missing features\.28\.weight, "
        r"features\.28\.bias; unexpected foo\.bar; shape of features\.0\.weight is \(64, 3, 5, 5\), "
        r"expected \(64, 3, 3, 3\)$")):
        vgg.convert(sd, "torchvision")


def test_fine_tuned_head_sizes_come_from_the_checkpoint():
    params = vgg.convert(_numpy_vgg(), "torchvision")
    assert vgg.config_for(params, "torchvision") == vgg.Config(num_classes=10, hidden=64, adaptive_pool=True)
    assert params["fc1"]["kernel"].shape == (25088, 64)


def test_wrong_model_file_is_a_checkpoint_error(tmp_path, torch_checkpoints):
    path = tmp_path / "other.pth"
    torch.save({"foo.bar": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match=r"does not match resnet50 \(torchvision layout\): missing conv1\.weight, "
                       r"bn1\.weight, bn1\.bias \(\+\d+ more\); unexpected foo\.bar$"):
        saliency_jax.load_model("resnet50", weights=path, use_cache=False)
    with pytest.raises(CheckpointError, match=r"does not match resnet50 .*unexpected classifier\.0\.bias"):
        saliency_jax.load_model("resnet50", weights=torch_checkpoints["vgg16"][1]["safetensors"], use_cache=False)


def test_no_weights_says_where_to_get_them():
    with pytest.raises(FileNotFoundError, match=r"vgg16 ships no weights and nothing is downloaded: pass weights=PATH"
                       r".*https://download\.pytorch\.org/models/vgg16-397923af\.pth"):
        saliency_jax.load_model("vgg16")
    with pytest.raises(FileNotFoundError, match=r"resnet50-0676ba61\.pth.*resnet50-11ad3fa6\.pth.*"
                       r"resnet50_weights_tf_dim_ordering_tf_kernels\.h5"):
        saliency_jax.load_model("resnet50")


def test_unknown_format_is_a_clear_error(tmp_path):
    path = tmp_path / "weights.pth"
    path.write_text("not a checkpoint\n")
    with pytest.raises(CheckpointError, match=r"unrecognised checkpoint format \(expected a PyTorch \.pth/\.pt, "
                       r"a \.safetensors, or a Keras \.h5"):
        saliency_jax.load_model("vgg16", weights=path)


def test_keras_file_for_efficientnet_is_refused(keras_artifacts):
    with pytest.raises(CheckpointError, match="efficientnet_lite0 loads PyTorch or safetensors checkpoints"):
        saliency_jax.load_model("efficientnet_lite0", weights=keras_artifacts / "vgg16.weights.h5")


def test_efficientnet_checkpoints_get_the_same_check():
    from saliency_jax.checkpoints import load_torch_checkpoint
    from saliency_jax.models import efficientnet_lite, weights_path

    sd = load_torch_checkpoint(weights_path("efficientnet_lite0"))
    sd["_fc.weight"] = sd["_fc.weight"][:, :100]
    with pytest.raises(CheckpointError, match=r"^checkpoint does not match efficientnet_lite0: shape of _fc\.weight "
                       r"is \(1000, 100\), expected \(1000, 1280\)$"):
        efficientnet_lite.convert_torch_state_dict(sd)


# One method per family on each architecture (every registered method runs on the tiny models of
# test_attribution / test_custom_models / test_methods): max-pool switches and skip connections are
# what these architectures add, and each family meets them differently. 80 full-network compilations
# for every method would cost the suite ~10 minutes.
ZOO_METHODS = ("vanilla", "guided", "deconvnet", "smoothgrad", "ig", "gradcam", "guided_gradcam", "scorecam",
               "guided_ig", "lrp", "deeplift")  # perturbation methods need only the forward pass: tiny models suffice


@pytest.mark.parametrize("method", [m for m in ZOO_METHODS if m in saliency_jax.available_methods()])
@pytest.mark.parametrize("name", ["vgg16", "resnet50"])
def test_every_family_runs_on_every_zoo_architecture(name, method, tv_models):
    """(EfficientNet-Lite0 runs every method in tests/test_attribution.py.)"""
    model = tv_models[name]
    x = model.preprocess(_images(SIZES[name])[:1])
    options = cheap_options(method)
    if method == "scorecam":  # one forward pass per channel: a 64-channel layer
        options["layer"] = {"vgg16": "conv1_2", "resnet50": "stem"}[name]
    key = jax.random.key(0, impl="rbg")  # compiles faster on CPU than threefry
    maps = saliency_jax.attribute(model, x, "top1", method=method, key=key, **options)
    assert maps.shape == x.shape and bool(jnp.all(jnp.isfinite(maps)))
    assert float(jnp.abs(maps).max()) > 0, f"{method} on {name} gave an all-zero map"


def test_cli_runs_a_user_checkpoint_with_its_default_gradcam_layer(torch_checkpoints, tmp_path, capsys):
    from saliency_jax import cli
    from saliency_jax.images import bundled_images

    photo = str(bundled_images()["coffee"])
    pth = str(torch_checkpoints["vgg16"][1]["pth"])
    assert cli.main(["predict", photo, "--model", "vgg16", "--weights", pth, "--top", "2", "--json"]) == 0
    (result,) = __import__("json").loads(capsys.readouterr().out)
    assert [t["label"] for t in result["top"]] == [f"class_{t['class']}" for t in result["top"]]
    out = tmp_path / "maps"
    code = cli.main(["explain", photo, "--model", "vgg16", "--weights", pth, "--method", "gradcam", "--out", str(out)])
    assert code == 0 and (out / "coffee_gradcam_overlay.png").is_file()  # conv5_3, not EfficientNet's "head"
    assert cli.main(["predict", photo, "--model", "vgg16"]) == 1
    assert "--weights PATH" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_truncated_checkpoint_is_one_clear_error(fmt, torch_checkpoints, tmp_path):
    data = torch_checkpoints["vgg16"][1][fmt].read_bytes()
    path = tmp_path / f"cut.{fmt}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cannot load .*cut\.%s" % fmt):
        saliency_jax.load_model("vgg16", weights=path, use_cache=False)


def test_truncated_keras_file_is_one_clear_error(keras_artifacts, tmp_path):
    data = (keras_artifacts / "vgg16_legacy.h5").read_bytes()
    path = tmp_path / "cut.h5"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cannot load .*cut\.h5.*not a readable Keras weight file"):
        saliency_jax.load_model("vgg16", weights=path, use_cache=False)
