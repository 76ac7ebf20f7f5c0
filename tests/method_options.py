"""Cheap options of every registered method, for the registry-wide tests (tiny images, a few passes each).

The one place a new method's test options go: `cheap_options(name, layer=...)`.
"""

CHEAP = {
    "occlusion": {"window": 4, "stride": 2},
    "feature_ablation": {"num_segments": 4},
    "rise": {"num_masks": 8, "cell": 2},
    "shapley_sampling": {"num_permutations": 2, "num_segments": 4},
    "kernel_shap": {"num_samples": 8, "num_segments": 4},
    "lime": {"num_samples": 8, "num_segments": 4},
    "xrai": {"segments": "grid", "num_segments": 3, "min_pixel_diff": 1},
}


COUNTS = {"num_samples": 3, "num_steps": 3}


def cheap_options(name: str, *, layer: str | None = None) -> dict:
    """Options that keep method `name` to a few passes on an 8x8 image: small sample/step counts,
    `layer` for the methods that take one, and the perturbation methods' small windows and masks."""
    from saliency_jax.methods import option_names

    valid = option_names(name)
    options = {k: v for k, v in COUNTS.items() if k in valid}
    if layer is not None and "layer" in valid:
        options["layer"] = layer
    return {**options, **CHEAP.get(name, {})}
