"""Attribution methods as values: frozen dataclasses whose fields are their options.

    from saliency_jax import methods
    m = methods.SmoothGrad(num_samples=8, base=methods.GuidedBackprop())
    maps = saliency_jax.attribute(model, x, "top1", method=m, key=jax.random.key(0))
    methods.get("vargrad", num_samples=8) == methods.SmoothGrad(num_samples=8, variant="var")

Each method is one file (one family per file at most); `Method` (base.py) is the
contract, `register` the registry, `attribute` (batch.py) the one compiled,
batched entry point that the batch job, the metrics, the demo and the CLI use.
Write your own by subclassing `Method` and implementing `explain`.
"""

# Registration order is listing order (available_methods, the CLI's "all", the demo's grid).
from saliency_jax.methods.gradient import GradientXInput, Vanilla  # isort: skip
from saliency_jax.methods.backprop_rules import Deconvnet, GuidedBackprop  # isort: skip
from saliency_jax.methods.smoothgrad import SmoothGrad  # isort: skip
from saliency_jax.methods.integrated_gradients import IntegratedGradients  # isort: skip
from saliency_jax.methods.gradcam import CAMMethod, GradCAM, GradientCAM, GuidedGradCAM, LayerMethod  # isort: skip
from saliency_jax.methods.gradient_cams import GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM  # isort: skip
from saliency_jax.methods.eigencam import EigenCAM  # isort: skip
from saliency_jax.methods.score_cams import AblationCAM, ScoreCAM  # isort: skip
from saliency_jax.methods.guided_ig import GuidedIG  # isort: skip
from saliency_jax.methods.blur_ig import BlurIG  # isort: skip
from saliency_jax.methods.expected_gradients import ExpectedGradients  # isort: skip
from saliency_jax.methods.lrp import LRP  # isort: skip
from saliency_jax.methods.deeplift import DeepLift, DeepLiftShap  # isort: skip
from saliency_jax.methods.occlusion import Occlusion  # isort: skip
from saliency_jax.methods.feature_ablation import FeatureAblation  # isort: skip
from saliency_jax.methods.rise import RISE  # isort: skip
from saliency_jax.methods.shapley_sampling import ShapleySampling  # isort: skip
from saliency_jax.methods.kernel_shap import KernelSHAP  # isort: skip
from saliency_jax.methods.lime import LIME  # isort: skip
from saliency_jax.methods.xrai import XRAI  # isort: skip
from saliency_jax.methods.base import (  # isort: skip
    Method,
    as_method,
    available_methods,
    describe,
    get,
    logit_fn_of,
    option_names,
    register,
    registered_name,
)
from saliency_jax.methods.batch import attribute, attribute_batch  # isort: skip

__all__ = [
    "AblationCAM",
    "BlurIG",
    "CAMMethod",
    "Deconvnet",
    "DeepLift",
    "DeepLiftShap",
    "EigenCAM",
    "ExpectedGradients",
    "FeatureAblation",
    "GradCAM",
    "GradCAMPlusPlus",
    "GradientCAM",
    "GradientXInput",
    "GuidedBackprop",
    "GuidedGradCAM",
    "GuidedIG",
    "HiResCAM",
    "IntegratedGradients",
    "KernelSHAP",
    "LIME",
    "LRP",
    "LayerCAM",
    "LayerMethod",
    "Method",
    "Occlusion",
    "RISE",
    "ScoreCAM",
    "ShapleySampling",
    "SmoothGrad",
    "Vanilla",
    "XGradCAM",
    "XRAI",
    "as_method",
    "attribute",
    "attribute_batch",
    "available_methods",
    "describe",
    "get",
    "logit_fn_of",
    "option_names",
    "register",
    "registered_name",
]
