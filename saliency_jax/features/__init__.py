"""What does a channel respond to: its strongest activations over a dataset (Zeiler & Fergus 2014, Fig. 2).

    result = top_activations(model, "photos/", "block5", [0, 7, 12], k=9)   # streamed top-k per channel
    grids = feature_figure(model, result)     # per channel: deconvnet projections | image patches

`topk` holds the on-device streaming top-k (`update_topk`, one jitted step per
batch); `collect` the dataset driver; `figure` the projections and the grid.
"""

from saliency_jax.features.collect import TopActivations, load_examples, result_table, top_activations
from saliency_jax.features.figure import (
    TopProjections,
    feature_figure,
    feature_grid,
    project_top,
    projection_pixels,
)
from saliency_jax.features.topk import NO_IMAGE, TopK, init_topk, layer_shape, merge_topk, update_topk

__all__ = [
    "NO_IMAGE",
    "TopActivations",
    "TopK",
    "TopProjections",
    "feature_figure",
    "feature_grid",
    "init_topk",
    "layer_shape",
    "load_examples",
    "merge_topk",
    "project_top",
    "projection_pixels",
    "result_table",
    "top_activations",
    "update_topk",
]
