"""Device meshes, logical-axis sharding rules and multi-host (jax.distributed) setup:
initialisation, barriers between processes, process 0's values on every process, and a
prompt exit of a process that fails."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import traceback
from typing import Any, Iterator, Sequence

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

log = logging.getLogger(__name__)


def initialize_distributed(coordinator_address: str | None, num_processes: int | None,
                           process_id: int | None, *,
                           heartbeat_timeout_s: int | None = None) -> None:
  """Initialises jax.distributed when a coordinator is given (multi-host runs).

  `coordinator_address="auto"` lets JAX discover the cluster itself (Cloud TPU VMs,
  SLURM, Open MPI), with no process counts. `heartbeat_timeout_s` (None: JAX's default,
  100 s) is how long a process may be silent before the others give it up as dead and
  stop, rather than wait for it in a collective.
  """
  if coordinator_address is None:
    return
  kwargs = {} if heartbeat_timeout_s is None else {
      "heartbeat_timeout_seconds": int(heartbeat_timeout_s)}
  if coordinator_address == "auto":
    jax.distributed.initialize(**kwargs)
    return
  if num_processes is None or process_id is None:
    raise ValueError("--coordinator_address needs --num_processes and --process_id")
  jax.distributed.initialize(coordinator_address, num_processes, process_id, **kwargs)


def sync_processes(name: str) -> None:
  """Waits until every process of a multi-process job reaches the barrier `name` (the
  same name on every process); returns at once with one process."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices(name)


def from_process_0(tree: Any) -> Any:
  """Process 0's value of a pytree of host arrays on every process, bit for bit (each
  leaf must have the same shape and dtype on every process); the tree itself, as numpy
  arrays, with one process."""
  if jax.process_count() == 1:
    return jax.tree.map(np.asarray, tree)
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  leaves, treedef = jax.tree.flatten(tree)
  arrays = [np.ascontiguousarray(x) for x in leaves]
  # As bytes: the broadcast would otherwise cast float64 / int64 to 32 bits.
  raw = multihost_utils.broadcast_one_to_all(
      [a.reshape(-1).view(np.uint8) for a in arrays])
  return jax.tree.unflatten(treedef, [np.asarray(r, np.uint8).view(a.dtype).reshape(a.shape)
                                      for r, a in zip(raw, arrays)])


@contextlib.contextmanager
def exit_at_once_on_failure() -> Iterator[None]:
  """In a multi-process job, an exception of the block is logged and the process exits
  with code 1 at once. Otherwise jax.distributed's exit handler would wait (up to its
  shutdown timeout, 5 minutes) for the other processes, which may themselves be waiting
  for this one in a collective. With one process the exception propagates as usual."""
  try:
    yield
  except (Exception, KeyboardInterrupt) as e:  # pylint: disable=broad-except
    if jax.process_count() <= 1:
      raise
    code = 130 if isinstance(e, KeyboardInterrupt) else 1
    log.error("process %d of %d failed; exiting (code %d) without waiting for the "
              "others:\n%s", jax.process_index(), jax.process_count(), code,
              "".join(traceback.format_exception(e)).rstrip())
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # pylint: disable=protected-access


def log_hosts() -> None:
  log.info("process %d/%d: %d local devices, %d global (%s)", jax.process_index(),
           jax.process_count(), jax.local_device_count(), jax.device_count(),
           jax.devices()[0].platform)


# ------------------------------------------------------------------ meshes and rules

Rules = tuple[tuple[str, str | tuple[str, ...] | None], ...]


def make_mesh(mesh_cfg: ml_collections.ConfigDict,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Mesh with `mesh_cfg.axes` and `mesh_cfg.shape` (one entry may be -1: the rest).

  Uses every device of every process unless `devices` is given. Axis types are Auto, so
  jit's sharding propagation (and Flax embedding lookups) work unchanged.
  """
  axes, shape = tuple(mesh_cfg.axes), [int(s) for s in mesh_cfg.shape]
  if len(axes) != len(shape):
    raise ValueError(f"mesh.axes {axes} and mesh.shape {tuple(shape)} differ in length")
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  if shape.count(-1) > 1:
    raise ValueError(f"mesh.shape {tuple(shape)} has more than one -1")
  fixed = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if n % fixed:
      raise ValueError(f"mesh.shape {tuple(shape)}: {n} devices are not divisible by {fixed}")
    shape[shape.index(-1)] = n // fixed
  if math.prod(shape) != n:
    raise ValueError(f"mesh.shape {tuple(shape)} needs {math.prod(shape)} devices, "
                     f"{n} available")
  return jax.make_mesh(tuple(shape), axes, devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,) * len(axes))


def rules_from_config(mesh_cfg: ml_collections.ConfigDict) -> Rules:
  """The logical-axis -> mesh-axis table of `mesh.rules`, validated against the axes."""
  axes = set(mesh_cfg.axes)
  rules = []
  for entry in mesh_cfg.rules:
    if len(entry) != 2:
      raise ValueError(f"mesh.rules entry {entry!r} is not a (logical, mesh axes) pair")
    name, target = entry
    targets = () if target is None else ((target,) if isinstance(target, str)
                                         else tuple(target))
    unknown = [t for t in targets if t not in axes]
    if unknown:
      raise ValueError(f"mesh.rules maps {name!r} to unknown mesh axes {unknown}; "
                       f"mesh.axes = {tuple(mesh_cfg.axes)}")
    rules.append((name, None if target is None else
                  (target if isinstance(target, str) else tuple(target))))
  return tuple(rules)


def logical_to_mesh_spec(logical: PartitionSpec, shape: Sequence[int], mesh: Mesh,
                         rules: Rules) -> PartitionSpec:
  """Maps a logical spec to mesh axes. A dimension whose size is not divisible by its
  mesh axes, or whose mesh axis is already used by an earlier dimension, is replicated."""
  table = dict(rules)
  used: set[str] = set()
  out = []
  for dim, name in zip(shape, tuple(logical) + (None,) * (len(shape) - len(logical))):
    if name is None:
      out.append(None)
      continue
    if name not in table:
      raise KeyError(f"logical axis {name!r} has no entry in mesh.rules "
                     f"(known: {sorted(table)})")
    target = table[name]
    targets = () if target is None else ((target,) if isinstance(target, str) else target)
    targets = tuple(t for t in targets if t not in used and mesh.shape[t] > 1)
    size = math.prod(mesh.shape[t] for t in targets)
    if not targets or dim % size:
      out.append(None)
      continue
    used.update(targets)
    out.append(targets[0] if len(targets) == 1 else targets)
  return PartitionSpec(*out)


def logical_to_shardings(logical_tree: Any, shape_tree: Any, mesh: Mesh,
                         rules: Rules) -> Any:
  """NamedShardings for a tree of logical PartitionSpecs and a matching tree of shapes."""
  return jax.tree.map(
      lambda spec, x: NamedSharding(mesh, logical_to_mesh_spec(spec, x.shape, mesh, rules)),
      logical_tree, shape_tree, is_leaf=lambda x: isinstance(x, PartitionSpec))


def batch_shardings(mesh: Mesh, rules: Rules) -> dict[str, NamedSharding]:
  """Shardings of a batch dict: the leading (example) axis over the "batch" rule."""
  table = dict(rules)
  target = table.get("batch")
  targets = () if target is None else ((target,) if isinstance(target, str) else target)
  axis = tuple(t for t in targets if mesh.shape[t] > 1) or None
  spec = PartitionSpec(axis)
  return {k: NamedSharding(mesh, spec) for k in ("tokens", "mask", "domain")}


def batch_split(mesh: Mesh, rules: Rules) -> int:
  """How many ways the batch axis is split (global batch must be a multiple)."""
  spec = batch_shardings(mesh, rules)["tokens"].spec[0]
  axes = () if spec is None else ((spec,) if isinstance(spec, str) else spec)
  return math.prod(mesh.shape[a] for a in axes)


def from_replicated_host(host: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """A global array from a host array every process holds in full."""
  return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def shard_batch(local_batch: dict[str, np.ndarray], mesh: Mesh,
                rules: Rules) -> dict[str, jax.Array]:
  """Global arrays from this process's slice of the batch (its rows, in process order).

  On one process the local batch is the global batch.
  """
  shardings = batch_shardings(mesh, rules)
  missing = [k for k in shardings if k not in local_batch]
  if missing:
    raise KeyError(f"batch lacks key(s) {missing}; expected tokens, mask, domain")
  return {k: jax.make_array_from_process_local_data(shardings[k], np.asarray(local_batch[k]))
          for k in shardings}
