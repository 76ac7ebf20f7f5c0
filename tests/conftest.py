"""Shared fixtures: the pretrained default model (converted once per session) and real images."""

import numpy as np
import pytest


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Converted params go to a per-session folder, never the user's cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("SALIENCY_JAX_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def model(_private_cache):
    import saliency_jax

    return saliency_jax.load_model("efficientnet_lite0")


@pytest.fixture(scope="session")
def skimage_images():
    """Real photographs shipped by scikit-image: name -> uint8 [H,W,3]."""
    data = pytest.importorskip("skimage.data")
    return {"chelsea": np.asarray(data.chelsea()), "coffee": np.asarray(data.coffee())}
