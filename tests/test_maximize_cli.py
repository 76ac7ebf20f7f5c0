"""`saliency-jax class-model` and `neuron`: PNGs per target, a captioned montage, one-line errors.

The commands run on a tiny stand-in model (patched in for `load_model`), so these
tests check the command's wiring, not the real network (see test_maximize.py).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import saliency_jax
from saliency_jax import cli
from saliency_jax.models.model import Model


class _Net(nn.Module):
    @nn.compact
    def __call__(self, x):
        y = nn.relu(nn.Conv(4, (3, 3))(x))
        return nn.Dense(5)(y.mean(axis=(1, 2))), {"conv": y, "pool": y.mean(axis=(1, 2))}


@pytest.fixture
def tiny_zoo(monkeypatch):
    module = _Net()
    params = module.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))["params"]
    model = Model("tiny", module, {"params": params}, (16, 16), (127.0,), (128.0,),
                  ("goldfish", "great white shark", "tiger shark", "hammerhead", "electric ray"), ("conv", "pool"))
    monkeypatch.setattr(saliency_jax, "load_model", lambda name="tiny", weights=None: model)
    return model


def test_class_model_writes_one_png_per_class_and_a_captioned_montage(tiny_zoo, tmp_path, capsys):
    out = tmp_path / "cm"
    assert cli.main(["class-model", "--classes", "1,4", "--steps", "4", "--out", str(out)]) == 0
    files = sorted(p.name for p in out.iterdir())
    assert files == ["class_0001_great_white_shark.png", "class_0004_electric_ray.png", "montage.png"]
    assert np.asarray(Image.open(out / "class_0001_great_white_shark.png")).shape == (16, 16, 3)
    captured = capsys.readouterr()
    assert "great white shark" in captured.out and "electric ray" in captured.out
    assert "target-step" in captured.err  # the progress bar
    assert "compiling" in captured.err and "incl. compile" in captured.err  # what the first call's time was


def test_neuron_writes_one_png_per_channel(tiny_zoo, tmp_path, capsys):
    out = tmp_path / "n"
    args = ["neuron", "--layer", "conv", "--channel", "0,3", "--position", "center", "--steps", "3",
            "--radius", "4", "--out", str(out)]
    assert cli.main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == ["conv_ch0000.png", "conv_ch0003.png", "montage.png"]
    assert "||I|| 4.0" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args,message",
    [
        (["class-model", "--classes", "7"], "class index 7 out of range [0, 5)"),
        (["neuron", "--layer", "fc9", "--channel", "0"], "unknown layer 'fc9'; choose one of conv, pool"),
        (["neuron", "--layer", "conv", "--channel", "4"], "channel 4 out of range for layer 'conv' with 4 channels"),
        (["class-model", "--classes", "1", "--preset", "lucid", "--l2", "0.1"], "l2 applies to the 'paper' preset"),
    ],
)
def test_bad_targets_are_one_line_errors(tiny_zoo, tmp_path, capsys, args, message):
    assert cli.main(args + ["--steps", "2", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "target-step" not in err  # no progress bar opens for inputs that are refused
    err = err.strip().splitlines()[-1]
    assert err == f"saliency-jax: error: {message}" or err.startswith(f"saliency-jax: error: {message}")


@pytest.mark.parametrize(
    "args,message",
    [
        (["class-model", "--classes", "a,b"], "expected comma-separated integers"),
        (["class-model", "--classes", "1", "--steps", "0"], "expected a positive integer, got 0"),
        (["neuron", "--layer", "conv", "--channel", "0", "--radius", "-1"], "expected a positive number"),
        (["class-model", "--classes", "1", "--preset", "dream"], "invalid choice: 'dream'"),
    ],
)
def test_usage_errors_exit_2(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
