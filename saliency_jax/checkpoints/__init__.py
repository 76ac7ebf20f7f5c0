"""Reading pretrained weights from checkpoint files."""

from saliency_jax.checkpoints.formats import detect_format, read_checkpoint
from saliency_jax.checkpoints.keras_h5 import load_keras_weights
from saliency_jax.checkpoints.safetensors_reader import load_safetensors
from saliency_jax.checkpoints.budget import DEFAULT_BUDGET, Budget
from saliency_jax.checkpoints.errors import CheckpointError, UnsafeCheckpointError
from saliency_jax.checkpoints.torch_pickle import load_torch_checkpoint

__all__ = [
    "Budget",
    "DEFAULT_BUDGET",
    "CheckpointError",
    "UnsafeCheckpointError",
    "detect_format",
    "load_keras_weights",
    "load_safetensors",
    "load_torch_checkpoint",
    "read_checkpoint",
]
