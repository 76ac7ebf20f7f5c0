"""saliency_jax: what an image classifier looks at, as pure, jit-compiled JAX functions.

Re-implements Simonyan, Vedaldi & Zisserman (2014), "Deep Inside Convolutional
Networks: Visualising Image Classification Models and Saliency Maps", on
pretrained Flax ConvNets (default: EfficientNet-Lite0, ImageNet).

The contract shared by every method is the logit function
`logit_fn(x[H,W,C]) -> logits[K]` (unnormalised scores); `Model.logit_fn` is one.
"""

from saliency_jax import methods
from saliency_jax.compile_cache import enable_compile_cache
from saliency_jax.attribution import UnitTarget, deconvnet, guided_backprop, project_activation, unit
from saliency_jax.features import feature_figure, top_activations
from saliency_jax.images import ImageError, bundled_images, load_image
from saliency_jax.maps import saliency_map
from saliency_jax.methods import Method, attribute, available_methods
from saliency_jax.maximize import class_model, neuron_model, visualize
from saliency_jax.models import available_models, imagenet_labels, load_model
from saliency_jax.models.custom import from_function, from_linen, from_nnx
from saliency_jax.models.equinox_adapter import from_equinox
from saliency_jax.models.keras_adapter import from_keras
from saliency_jax.models.model import Model
from saliency_jax.receptive_field import ReceptiveField, receptive_field

__version__ = "0.1.0"

__all__ = [
    "ImageError",
    "Method",
    "ReceptiveField",
    "UnitTarget",
    "attribute",
    "available_methods",
    "deconvnet",
    "enable_compile_cache",
    "guided_backprop",
    "saliency_map",
    "Model",
    "available_models",
    "bundled_images",
    "class_model",
    "neuron_model",
    "visualize",
    "imagenet_labels",
    "load_image",
    "load_model",
    "methods",
    "from_equinox",
    "from_function",
    "from_keras",
    "from_linen",
    "from_nnx",
    "unit",
    "project_activation",
    "receptive_field",
    "top_activations",
    "feature_figure",
]
