"""Device mesh, shardings and multi-host helpers.

The mesh has two axes: `data` shards the batch only, `fsdp` shards the batch *and* the
parameters (fully sharded data parallelism). A batch is split over both axes together; a
parameter is split over `fsdp` along its largest dimension divisible by the axis size, and
replicated otherwise. With `fsdp=1` every parameter is replicated (plain data parallelism).
"""

from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

DATA_AXES = ("data", "fsdp")


def make_mesh(
    mesh_config: ml_collections.ConfigDict, devices: Sequence[jax.Device] | None = None
) -> Mesh:
    """Builds a (data, fsdp) mesh over `devices` (default: all); an axis of -1 takes the rest.

    The axes are `Auto`: shardings are given at jit boundaries and XLA propagates them inside.
    """
    devices = jax.devices() if devices is None else list(devices)
    num_devices = len(devices)
    data, fsdp = mesh_config.data, mesh_config.fsdp
    if data == -1 and fsdp == -1:
        raise ValueError("config.mesh: at most one of `data` and `fsdp` may be -1.")
    if fsdp == -1:
        fsdp = num_devices // data if data > 0 else 0
    if data == -1:
        data = num_devices // fsdp if fsdp > 0 else 0
    if data < 1 or fsdp < 1 or data * fsdp != num_devices:
        raise ValueError(
            f"config.mesh: data={mesh_config.data} x fsdp={mesh_config.fsdp} does not fit "
            f"{num_devices} devices."
        )
    return jax.make_mesh(
        (data, fsdp), DATA_AXES, axis_types=(AxisType.Auto, AxisType.Auto), devices=devices
    )


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over every device of the mesh."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Every array leaf of `tree` (host values, the same in every process) as a jax.Array
    replicated on every device of `mesh`, which may span processes: each process fills its own
    devices. (`jax.device_put` from the host cannot reach another process's devices.)"""
    sharding = replicated(mesh)

    def put(leaf):
        value = np.asarray(leaf)
        value = value.astype(jax.dtypes.canonicalize_dtype(value.dtype))  # float64 -> float32
        return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])

    return jax.tree.map(put, tree)


def fsdp_sharding(mesh: Mesh, shape: tuple[int, ...]) -> NamedSharding:
    """Shards the largest dimension of `shape` divisible by the fsdp size; replicates otherwise."""
    fsdp_size = mesh.shape["fsdp"]
    if fsdp_size == 1 or not shape:
        return replicated(mesh)
    for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
        if shape[dim] % fsdp_size == 0:
            spec = [None] * len(shape)
            spec[dim] = "fsdp"
            return NamedSharding(mesh, PartitionSpec(*spec))
    return replicated(mesh)


def state_shardings(mesh: Mesh, abstract_state: Any) -> Any:
    """Shardings for every array leaf of an abstract (`jax.eval_shape`) train state."""
    return jax.tree.map(lambda leaf: fsdp_sharding(mesh, tuple(leaf.shape)), abstract_state)


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles each process's slice of the batch into one globally sharded jax.Array per key."""
    sharding = batch_sharding(mesh)
    return {
        key: jax.make_array_from_process_local_data(sharding, value)
        for key, value in local_batch.items()
    }
