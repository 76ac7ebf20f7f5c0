"""Shared fixtures: the pretrained default model (converted once per session) and real images."""

import os

# Most of the suite's time is XLA compiling small programs once each, not running them: at backend
# optimisation level 0 the suite took 22-29% less time on 2 CPU cores. Values move by float32
# rounding only (Lite0's logits by 6e-6; its input gradients by 9e-4 relative L2, the ReLU6 switches
# that any reordering flips), which every tolerance here already allows. Set before JAX creates its
# backend; subprocesses of the tests inherit it. An XLA_FLAGS that already names the level is left alone.
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_backend_optimization_level" not in _flags:
    os.environ["XLA_FLAGS"] = f"{_flags} --xla_backend_optimization_level=0".strip()

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

# The suite checks arithmetic (finite differences, parity to 1e-5, analytic optima). On GPUs JAX's
# default float32 matmul/conv precision is TF32-like (about 1e-3 relative: an H200 run failed 10
# such tests at default precision), so off CPU the tests ask for full float32; the library itself
# leaves the user's setting alone. CPUs compute float32 in full precision either way.
if jax.default_backend() != "cpu":
    jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Converted params go to a per-session folder, never the user's cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("SALIENCY_JAX_CACHE", str(tmp_path_factory.mktemp("cache")))
    mp.setenv("SALIENCY_JAX_NO_COMPILE_CACHE", "1")  # cli.main in-process: keep JAX's config as it is
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


@pytest.fixture(scope="module", autouse=True)
def _release_compiled_programs():
    """Drops JAX's compiled programs after each test module: a full run otherwise holds every
    module's executables (hundreds of networks) and XLA's compiler crashed late in such runs."""
    yield
    import gc

    jax.clear_caches()
    gc.collect()
