"""Faithfulness metrics: deletion/insertion on a model with a known answer, randomisation check,
SSIM / Spearman known values, box IoU and the pointing game, and their bad-input messages."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from saliency_jax.methods import attribute
from saliency_jax.maps import saliency_map
from saliency_jax.metrics import (
    auc,
    blur,
    box_iou,
    cascading_randomization,
    deletion_auc,
    deletion_curves,
    insertion_auc,
    insertion_curves,
    parameter_stages,
    perturbation,
    pointing_game,
    randomize_stages,
    rank,
    spearman,
    ssim,
)
from saliency_jax.models.model import Model

H, W, C, K = 16, 16, 3, 3
TARGET = 1


# ---- a model whose answer is known by construction ----------------------------------------
@pytest.fixture(scope="module")
def linear():
    """S_c(x) = <w_c, x> + b_c, only class TARGET has weights; x = sign(w) so every pixel adds |w|.

    Deleting a pixel (zero substrate) takes away exactly its contribution sum_c |w[p,c]|, so the
    oracle map ranks pixels by that contribution and no order deletes faster.
    """
    rng = np.random.default_rng(0)
    w = np.zeros((K, H, W, C), np.float32)
    w[TARGET] = rng.lognormal(0.0, 1.0, size=(H, W, C)) * rng.choice([-1, 1], size=(H, W, C))
    w[TARGET] *= 10.0 / np.abs(w[TARGET]).sum()  # logit 9 on x, -1 on zeros: the softmax does not saturate
    b = np.array([0.5, -1.0, 2.0], np.float32)
    wj, bj = jnp.asarray(w), jnp.asarray(b)
    fn = lambda x: jnp.einsum("khwc,hwc->k", wj, x) + bj  # noqa: E731
    x = np.sign(w[TARGET])[None].repeat(2, 0)  # [2,H,W,C]
    x[1] *= 0.5
    oracle = np.abs(w[TARGET]).sum(-1)[None].repeat(2, 0)  # [2,H,W]
    return fn, jnp.asarray(x), oracle


def test_oracle_beats_random_beats_anti_oracle(linear):
    fn, x, oracle = linear
    random = np.random.default_rng(1).random(oracle.shape)
    for score in ("logit", "probability"):
        kw = dict(num_steps=16, score=score, substrate="zeros")
        d_oracle, d_random, d_anti = (deletion_auc(fn, x, m, TARGET, **kw) for m in (oracle, random, -oracle))
        i_oracle, i_random, i_anti = (insertion_auc(fn, x, m, TARGET, **kw) for m in (oracle, random, -oracle))
        assert np.all(d_oracle < d_random) and np.all(d_random < d_anti), score
        assert np.all(i_oracle > i_random) and np.all(i_random > i_anti), score
        assert np.all(d_oracle < i_oracle), score  # the ordering for a faithful map


def test_curves_are_exact_on_the_linear_model(linear):
    fn, x, oracle = linear
    t = 8
    curve = np.asarray(deletion_curves(fn, x, oracle, TARGET, num_steps=t, score="logit"))
    n = H * W
    contributions = np.sort(oracle[0].ravel())[::-1]  # pixels in deletion order, x[0] = sign(w)
    expected = [contributions[(i * n) // t :].sum() - 1.0 for i in range(t + 1)]
    np.testing.assert_allclose(curve[0], expected, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(curve[1], 0.5 * (np.asarray(expected) + 1.0) - 1.0, rtol=1e-5, atol=1e-4)
    inserted = np.asarray(insertion_curves(fn, x, oracle, TARGET, num_steps=t, score="logit", substrate="zeros"))
    remaining = np.asarray(expected) + 1.0
    np.testing.assert_allclose(inserted[0], contributions.sum() - remaining - 1.0, rtol=1e-5, atol=1e-4)


def test_uniform_contributions_give_the_trapezoid_value_for_any_map():
    """Every pixel adds 1: the deletion curve falls linearly from HW + b to b, AUC = HW/2 + b."""
    fn = lambda x: jnp.stack([x.sum() / C + 2.0, -x.sum()])  # noqa: E731
    x = jnp.ones((1, H, W, C))
    for seed in range(2):
        m = np.random.default_rng(seed).random((1, H, W))
        value = deletion_auc(fn, x, m, 0, num_steps=8, score="logit")
        np.testing.assert_allclose(value, [H * W / 2 + 2.0], rtol=1e-6)
    np.testing.assert_allclose(auc(jnp.array([[0.0, 1.0], [2.0, 2.0]])), [0.5, 2.0])


def test_chunk_size_does_not_change_curves_and_repeat_calls_do_not_recompile(linear):
    fn, x, oracle = linear
    full = deletion_curves(fn, x, oracle, TARGET, num_steps=10, chunk_size=11)
    for chunk in (1, 4):
        np.testing.assert_allclose(deletion_curves(fn, x, oracle, TARGET, num_steps=10, chunk_size=chunk), full,
                                   rtol=1e-6, atol=1e-7)
    before = perturbation._curves_batch._cache_size()
    deletion_curves(fn, x + 1.0, oracle[::-1], TARGET, num_steps=10, chunk_size=4)
    assert perturbation._curves_batch._cache_size() == before


def test_blur_is_a_normalised_linear_filter():
    x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 9, 12, 3)), jnp.float32)
    np.testing.assert_allclose(blur(jnp.full((9, 12, 3), 3.5), 2.0), 3.5, rtol=1e-6)
    np.testing.assert_allclose(blur(2 * x + 1, 1.5), 2 * blur(x, 1.5) + 1, rtol=1e-5, atol=1e-5)
    assert float(jnp.std(blur(x, 3.0))) < 0.5 * float(jnp.std(x))


# ---- a small ConvNet as a Model (Flax), for the Model path and the randomisation check ----
class TinyConvNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        y = nn.relu(nn.Conv(8, (3, 3))(x))
        y = nn.relu(nn.Conv(8, (3, 3))(y))
        pooled = y.mean(axis=(1, 2))
        return nn.Dense(4)(pooled), {"conv": y, "pool": pooled}


@pytest.fixture(scope="module")
def tiny():
    module = TinyConvNet()
    variables = module.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    return Model("tiny", module, {"params": variables["params"]}, (16, 16), (0.0,), (1.0,),
                 tuple(f"class{i}" for i in range(4)), ("conv", "pool"))


@pytest.fixture(scope="module")
def tiny_x():
    return jnp.asarray(np.random.default_rng(3).normal(size=(2, 16, 16, 3)), jnp.float32)


def test_model_path_top1_and_substrates(tiny, tiny_x):
    maps = saliency_map(attribute(tiny, tiny_x, "top1"))
    curves = insertion_curves(tiny, tiny_x, maps, num_steps=4)  # blur substrate by default
    assert curves.shape == (2, 5) and bool(jnp.all(jnp.isfinite(curves)))
    probs = jax.nn.softmax(tiny(tiny_x), -1)
    np.testing.assert_allclose(curves[:, -1], probs.max(-1), rtol=1e-5)  # all inserted: the clean image
    custom = deletion_curves(tiny, tiny_x, maps, [0, 3], num_steps=4, substrate=jnp.ones((16, 16, 3)))
    np.testing.assert_allclose(custom[:, 0], probs[jnp.arange(2), jnp.array([0, 3])], rtol=1e-5)
    np.testing.assert_allclose(custom[:, -1], jax.nn.softmax(tiny(jnp.ones((2, 16, 16, 3))), -1)[:, jnp.array([0, 3])]
                               .diagonal(), rtol=1e-5)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(saliency=np.zeros((2, 16, 15))), "must be [B,H,W] = (2, 16, 16)"),
        (dict(saliency=np.zeros((2, 16, 16, 3))), "saliency_map first"),
        (dict(saliency=np.full((2, 16, 16), np.nan)), "NaN or Inf"),
        (dict(mode="both"), "unknown mode 'both'"),
        (dict(score="softmax"), "unknown score 'softmax'"),
        (dict(substrate="noise"), "unknown substrate 'noise'"),
        (dict(substrate=np.zeros((4, 4, 3))), "substrate must be [H,W,C]"),
        (dict(num_steps=0), "num_steps must be an integer in [1, 100000], got 0"),
        (dict(num_steps=2.5), "num_steps must be a positive integer, got 2.5"),
        (dict(targets=7), "targets must lie in [0, 4)"),
        (dict(x=np.zeros((16, 16, 3), np.float32)), "batch of images [B,H,W,C]"),
    ],
)
def test_perturbation_bad_input_messages(tiny, tiny_x, change, message):
    args = dict(x=tiny_x, saliency=np.zeros((2, 16, 16)), targets="top1")
    args.update(change)
    x, saliency, targets = args.pop("x"), args.pop("saliency"), args.pop("targets")
    with pytest.raises(ValueError) as err:
        perturbation.perturbation_curves(tiny, x, saliency, targets, **args)
    assert message in str(err.value)


# ---- randomisation check -----------------------------------------------------------------
def test_parameter_stages_follow_the_forward_pass(tiny):
    assert parameter_stages(tiny) == ("Conv_0", "Conv_1", "Dense_0")


def test_randomisation_is_keyed_nested_and_scale_preserving(tiny):
    key = jax.random.key(5)
    top = randomize_stages(tiny, ["Dense_0"], key=key)
    both = randomize_stages(tiny, ["Dense_0", "Conv_1"], key=key)
    same = randomize_stages(tiny, ["Dense_0"], key=key)
    p0, p1, p2 = (m.variables["params"] for m in (tiny, top, both))
    np.testing.assert_array_equal(p1["Dense_0"]["kernel"], p2["Dense_0"]["kernel"])  # nested cascade
    np.testing.assert_array_equal(p1["Dense_0"]["kernel"], same.variables["params"]["Dense_0"]["kernel"])
    np.testing.assert_array_equal(p1["Conv_1"]["kernel"], p0["Conv_1"]["kernel"])  # untouched below
    assert not np.allclose(p1["Dense_0"]["kernel"], p0["Dense_0"]["kernel"])
    np.testing.assert_allclose(jnp.std(p2["Conv_1"]["kernel"]), jnp.std(p0["Conv_1"]["kernel"]), rtol=0.2)
    with pytest.raises(ValueError, match="unknown parameter group.*'fc'.*Conv_0"):
        randomize_stages(tiny, ["fc"], key=key)


def test_cascading_check_is_one_for_itself_and_low_when_fully_randomised(tiny, tiny_x):
    check = cascading_randomization(tiny, tiny_x, "top1", key=jax.random.key(0))
    assert check.stages == ("none", "Dense_0", "Conv_1", "Conv_0")
    assert check.spearman.shape == check.ssim.shape == (4, 2)
    np.testing.assert_allclose(check.spearman[0], 1.0, rtol=1e-6)
    np.testing.assert_allclose(check.ssim[0], 1.0, rtol=1e-6)
    assert np.all(np.abs(check.spearman[-1]) < 0.3), check.spearman
    assert np.all(check.ssim[-1] < 0.5), check.ssim
    np.testing.assert_array_equal(check.targets, np.argmax(tiny(tiny_x), -1))
    with pytest.raises(TypeError, match="needs a Model"):
        cascading_randomization(tiny.logit_fn, tiny_x, key=jax.random.key(0))
    with pytest.raises(ValueError, match="unknown parameter group"):
        cascading_randomization(tiny, tiny_x, key=jax.random.key(0), stages=["Dense_0", "nope"])


# ---- similarity --------------------------------------------------------------------------
def test_rank_and_spearman_known_values():
    np.testing.assert_array_equal(rank(jnp.array([3.0, 1.0, 2.0, 2.0])), [3.0, 0.0, 1.5, 1.5])
    a = jnp.array([[1.0, 2.0], [3.0, 4.0]])
    np.testing.assert_allclose(spearman(a, jnp.array([[1.0, 3.0], [2.0, 4.0]])), 0.8, rtol=1e-6)  # 1 - 6*2/(4*15)
    np.testing.assert_allclose(spearman(a, a**3), 1.0, rtol=1e-6)  # monotone: ranks identical
    np.testing.assert_allclose(spearman(a, -a), -1.0, rtol=1e-6)
    assert np.isnan(spearman(a, jnp.ones((2, 2))))  # a constant map has no ranking


def test_ssim_known_values():
    m = jnp.asarray(np.random.default_rng(4).random((3, 20, 24)), jnp.float32)
    np.testing.assert_allclose(ssim(m, m), 1.0, rtol=1e-6)
    # Constant maps 0 and 1: SSIM = C1 / (1 + C1), C1 = 0.01^2.
    np.testing.assert_allclose(ssim(jnp.zeros((12, 12)), jnp.ones((12, 12))), 1e-4 / (1 + 1e-4), rtol=1e-5)
    assert float(ssim(m[0], 1 - m[0])) < 0
    with pytest.raises(ValueError, match="smaller than the 11-pixel window"):
        ssim(jnp.zeros((8, 30)), jnp.zeros((8, 30)))


def test_similarity_matches_scipy_and_skimage():
    stats = pytest.importorskip("scipy.stats")
    metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(6)
    a = rng.random((2, 24, 30)).astype(np.float32)
    b = np.clip(a + rng.normal(0, 0.3, a.shape), 0, 1).astype(np.float32)  # clipping makes ties
    a[:, :4] = 0.0
    for i in range(2):
        np.testing.assert_allclose(spearman(a, b)[i], stats.spearmanr(a[i].ravel(), b[i].ravel())[0], rtol=1e-5)
        expected = metrics.structural_similarity(a[i], b[i], data_range=1.0, gaussian_weights=True, sigma=1.5,
                                                 use_sample_covariance=False)
        np.testing.assert_allclose(ssim(a, b)[i], expected, rtol=1e-5, atol=1e-6)


# ---- boxes -------------------------------------------------------------------------------
def test_box_iou_known_values():
    np.testing.assert_allclose(box_iou([0, 0, 2, 2], [1, 0, 3, 2]), 1 / 3, rtol=1e-6)
    np.testing.assert_allclose(box_iou([0, 0, 4, 4], [0, 0, 4, 4]), 1.0)
    np.testing.assert_allclose(box_iou([0, 0, 2, 2], [2, 2, 4, 4]), 0.0)  # touching, end-exclusive
    np.testing.assert_allclose(box_iou([3, 3, 3, 5], [3, 3, 3, 5]), 0.0)  # empty boxes: 0, not NaN
    np.testing.assert_allclose(box_iou(jnp.array([[0, 0, 2, 2], [0, 0, 1, 1]]), jnp.array([0, 0, 2, 1])), [0.5, 0.5])
    with pytest.raises(ValueError, match=r"boxes must be \[...,4\]"):
        box_iou([0, 0, 1], [0, 0, 1, 1])


def test_pointing_game():
    m = np.zeros((2, 10, 12), np.float32)
    m[:, 5, 7] = 1.0  # the peak: x = 7, y = 5
    boxes = np.array([[6, 4, 8, 6], [0, 0, 7, 5]])  # the second ends just before the peak
    np.testing.assert_array_equal(pointing_game(m, boxes), [True, False])
    np.testing.assert_array_equal(pointing_game(m, boxes, tolerance=1.5), [True, True])  # sqrt(2) away
    np.testing.assert_array_equal(pointing_game(m[:1, None], boxes[None]), [[True, False]])  # several boxes
    m[1, 0, 0] = 1.0  # a tied maximum inside the box counts
    np.testing.assert_array_equal(pointing_game(m, boxes), [True, True])
    m[0, 0, 0] = np.nan
    assert not bool(pointing_game(m[0], boxes[0]))
