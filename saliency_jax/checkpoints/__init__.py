"""Reading pretrained weights from checkpoint files."""

from saliency_jax.checkpoints.torch_pickle import (
    CheckpointError,
    UnsafeCheckpointError,
    load_torch_checkpoint,
)

__all__ = ["CheckpointError", "UnsafeCheckpointError", "load_torch_checkpoint"]
