"""Data parallelism with JAX's own sharding: one `Mesh` over the devices, batches split on axis 0.

    mesh = data_mesh()                            # all local devices, axis "data"
    x = put_batch(x, mesh)                        # [B,...] split B/n per device (B % n == 0)
    model = jax.device_put(model, replicated(mesh))

A function jitted on such inputs runs data parallel; nothing here is
attribution-specific. Batches are padded to a multiple of the device count
(`round_up`), so every device gets the same shape and there is one compilation.

Many hosts: call `initialize_distributed()` (a wrapper over
`jax.distributed.initialize()`; on Cloud TPU and SLURM it needs no arguments),
then let each host read its own contiguous slice of the data,
`host_slice(n, jax.process_index(), jax.process_count())`, and compute on a mesh
of its *local* devices. Attribution is embarrassingly parallel -- no image needs
another's gradients -- so hosts never have to step in lockstep: a host whose
slice holds more bad files, or that resumes from a later shard, does not stall
the others, and each host's output folder is complete on its own.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def data_mesh(devices=None) -> Mesh:
    """A 1-D `Mesh` named ``"data"`` over ``devices`` (default: this process's local devices)."""
    devices = list(jax.local_devices() if devices is None else devices)
    if not devices:
        raise ValueError("data_mesh: no devices")
    return Mesh(np.array(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Split the leading (batch) axis over the mesh's data axis; other axes whole."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """A full copy on every device of the mesh (model variables, keys)."""
    return NamedSharding(mesh, PartitionSpec())


def round_up(n: int, multiple: int) -> int:
    """The smallest multiple of ``multiple`` that is >= n (and >= multiple)."""
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1, got {multiple}")
    return max(multiple, -(-n // multiple) * multiple)


def put_batch(x, mesh: Mesh):
    """Places a host array [B,...] on the mesh, split along B (B must divide evenly)."""
    n = mesh.devices.size
    if np.shape(x)[0] % n:
        raise ValueError(f"batch of {np.shape(x)[0]} does not split over {n} devices; pad it (round_up)")
    return jax.device_put(x, batch_sharding(mesh))


def host_slice(num_items: int, process_index: int, process_count: int) -> tuple[int, int]:
    """This host's contiguous share [start, stop) of ``num_items``: sizes differ by at most one.

    The slices of processes 0..count-1 are disjoint, in order and cover
    ``range(num_items)`` exactly.
    """
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"need 0 <= process_index < process_count, got {process_index} of {process_count}")
    if num_items < 0:
        raise ValueError(f"num_items must be >= 0, got {num_items}")
    base, extra = divmod(num_items, process_count)
    start = process_index * base + min(process_index, extra)
    return start, start + base + (process_index < extra)


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> tuple[int, int]:
    """`jax.distributed.initialize(...)`, then ``(jax.process_index(), jax.process_count())``.

    With no arguments JAX detects the cluster (Cloud TPU, SLURM, Open MPI, ...);
    elsewhere pass the coordinator's ``host:port``, the number of processes and
    this process's id (0 on the coordinator). Call it before any other JAX call.
    """
    kwargs = {k: v for k, v in (("coordinator_address", coordinator_address), ("num_processes", num_processes),
                                ("process_id", process_id)) if v is not None}
    jax.distributed.initialize(**kwargs)
    return jax.process_index(), jax.process_count()
