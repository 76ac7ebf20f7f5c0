"""Is a saliency map faithful? Perturbation curves, randomisation checks, box metrics.

* ``perturbation``: deletion / insertion curves and their AUC (Petsiuk et al. 2018).
* ``randomization``: the cascading model-parameter randomisation check (Adebayo et al. 2018).
* ``similarity``: Spearman rank correlation and SSIM between maps.
* ``boxes``: box IoU and the pointing game (Zhang et al. 2016).
"""

from saliency_jax.metrics.boxes import box_iou, pointing_game
from saliency_jax.metrics.perturbation import (
    auc,
    blur,
    deletion_auc,
    deletion_curves,
    insertion_auc,
    insertion_curves,
    perturbation_curves,
)
from saliency_jax.metrics.randomization import (
    RandomizationCheck,
    cascading_randomization,
    parameter_stages,
    randomize_stages,
)
from saliency_jax.metrics.similarity import rank, spearman, ssim

__all__ = [
    "RandomizationCheck",
    "auc",
    "blur",
    "box_iou",
    "cascading_randomization",
    "deletion_auc",
    "deletion_curves",
    "insertion_auc",
    "insertion_curves",
    "parameter_stages",
    "perturbation_curves",
    "pointing_game",
    "randomize_stages",
    "rank",
    "spearman",
    "ssim",
]
