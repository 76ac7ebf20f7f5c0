"""Cheap options of the perturbation methods for the registry-wide tests (8x8 images, a few forward passes)."""

CHEAP = {
    "occlusion": {"window": 4, "stride": 2},
    "feature_ablation": {"num_segments": 4},
    "rise": {"num_masks": 8, "cell": 2},
    "shapley_sampling": {"num_permutations": 2, "num_segments": 4},
    "kernel_shap": {"num_samples": 8, "num_segments": 4},
    "lime": {"num_samples": 8, "num_segments": 4},
    "xrai": {"segments": "grid", "num_segments": 3, "min_pixel_diff": 1},
}


def cheap_options(name: str) -> dict:
    """Options that keep method `name` to a few forward passes on an 8x8 image ({} for other methods)."""
    return dict(CHEAP.get(name, {}))
