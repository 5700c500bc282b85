"""Device meshes, logical-axis sharding rules and multi-host (jax.distributed) setup."""

from __future__ import annotations

import logging

import jax

log = logging.getLogger(__name__)


def initialize_distributed(coordinator_address: str | None, num_processes: int | None,
                           process_id: int | None) -> None:
  """Initialises jax.distributed when a coordinator is given (multi-host runs)."""
  if coordinator_address is None:
    return
  if num_processes is None or process_id is None:
    raise ValueError("--coordinator_address needs --num_processes and --process_id")
  jax.distributed.initialize(coordinator_address, num_processes, process_id)


def log_hosts() -> None:
  log.info("process %d/%d: %d local devices, %d global (%s)", jax.process_index(),
           jax.process_count(), jax.local_device_count(), jax.device_count(),
           jax.devices()[0].platform)
