"""Segment maps: the device grid, relabelling, scikit-image's SLIC/Felzenszwalb on the host, XRAI's masks,
and the methods using exactly the maps `segment` returns."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import saliency_jax
from saliency_jax import methods
from saliency_jax.segments import grid_segments, relabel, segment, xrai_masks, xrai_masks_one


@pytest.fixture(scope="module")
def photo():
    from skimage import data, transform

    return (transform.resize(data.chelsea(), (32, 32), anti_aliasing=True) * 255).astype(np.uint8)


def test_grid_is_row_major_near_equal_cells():
    grid = np.asarray(grid_segments(6, 7, 9))
    assert grid.dtype == np.int32 and set(np.unique(grid)) == set(range(9))
    np.testing.assert_array_equal(grid[0], [0, 0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(grid[:, 0], [0, 0, 3, 3, 6, 6])
    np.testing.assert_array_equal(jax.jit(grid_segments, static_argnums=(0, 1, 2))(6, 7, 10), grid)  # floor(sqrt)


def test_relabel_numbers_ids_from_zero():
    maps, count = relabel(np.array([[5, 5, 9], [2, 9, 9]]))
    np.testing.assert_array_equal(maps, [[1, 1, 2], [0, 2, 2]])
    assert count == 3


@pytest.mark.parametrize("method", ["slic", "felzenszwalb", "grid"])
def test_segment_returns_int_maps_and_ignores_the_affine_preprocessing(photo, method):
    maps = segment(np.stack([photo, photo[::-1]]), method, num_segments=16)
    assert maps.shape == (2, 32, 32) and maps.dtype == np.int32
    for m in maps:
        assert m.min() == 0 and set(np.unique(m)) == set(range(m.max() + 1)) and 2 <= m.max() + 1 <= 64
    model_space = (photo.astype(np.float32) - 127.0) / 128.0
    np.testing.assert_array_equal(segment(model_space, method, num_segments=16), maps[0])


def test_methods_use_the_maps_segment_returns(photo):
    def fn(image):
        return jnp.stack([jnp.sum(image[..., 0] * jnp.linspace(-1, 1, 32)), jnp.sum(image)])

    x = (jnp.asarray(np.stack([photo, photo[:, ::-1]]), jnp.float32) - 127.0) / 128.0
    by_name = saliency_jax.attribute(fn, x, 0, method="feature_ablation", segments="slic", num_segments=12)
    maps = segment(np.asarray(x), "slic", num_segments=12)
    by_maps = saliency_jax.attribute(fn, x, 0, method=methods.FeatureAblation(segments=maps))
    np.testing.assert_allclose(by_name, by_maps, rtol=1e-6)
    for b in range(2):  # one value per segment
        for k in np.unique(maps[b]):
            assert np.ptp(np.asarray(by_maps)[b][maps[b] == k]) < 1e-6


def test_xrai_masks_are_pairs_multiscale_dilated_segments(photo):
    masks = xrai_masks(np.stack([photo, photo[::-1]]), multiple=32)
    assert masks.dtype == bool and masks.shape[0] == 2 and masks.shape[2:] == (32, 32)
    assert masks.shape[1] % 32 == 0
    own = xrai_masks_one(photo)
    assert len(own) >= 6 and own.sum(axis=(1, 2)).min() >= 0  # at least one segment per scale
    np.testing.assert_array_equal(masks[0, :len(own)], own)
    assert not masks[0, len(own):].any()  # the padding masks are empty


def test_segment_refuses_unknown_methods_and_shapes(photo):
    with pytest.raises(ValueError, match="unknown segmentation 'quickshift'; choose one of grid, slic"):
        segment(photo, "quickshift")
    with pytest.raises(ValueError, match=r"segment expects images \[B,H,W,C\] or \[H,W,C\]; got shape \(32, 32\)"):
        segment(photo[..., 0])
