"""Multi-host test: two processes on localhost joined by jax.distributed (CPU collectives)
run data-parallel train steps whose losses agree with one process on the whole batch.

The file is also the worker: `python tests/multihost_test.py PROCESS_ID PORT` runs one
process and prints its losses as JSON on the last line.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
N_PROCESSES = 2
STEPS = 2
TIMEOUT_S = 150
# Messages of a jax build without multi-process CPU support (then the test is skipped).
UNSUPPORTED = ("Multiprocess computations aren't implemented",
               "not implemented on the CPU backend", "cpu_collectives")


def worker(process_id: int, port: int) -> None:
  import jax  # pylint: disable=import-outside-toplevel
  jax.distributed.initialize(f"127.0.0.1:{port}", N_PROCESSES, process_id)
  from causalmix_jax import sharding  # pylint: disable=import-outside-toplevel
  from causalmix_jax import train_step as ts  # pylint: disable=import-outside-toplevel
  from causalmix_jax.configs import model as model_cfgs  # pylint: disable=import-outside-toplevel
  from tests.train_step_test import (  # pylint: disable=import-outside-toplevel
      N_DOMAINS, fixed_batch, tiny_model, tiny_optim)

  mesh_cfg = model_cfgs.mesh_section(frozenset())
  mesh = sharding.make_mesh(mesh_cfg)
  rules = sharding.rules_from_config(mesh_cfg)
  assert dict(mesh.shape)["data"] == jax.device_count() == N_PROCESSES * jax.local_device_count()
  state, sh = ts.create_sharded_state(tiny_model(), tiny_optim(), mesh, rules,
                                      jax.random.key(0))
  step = ts.make_sharded_train_step(tiny_model(), tiny_optim(), N_DOMAINS, mesh, rules, sh)
  batch = fixed_batch()
  rows = batch["tokens"].shape[0] // N_PROCESSES
  local = {k: v[process_id * rows:(process_id + 1) * rows] for k, v in batch.items()}
  out = []
  for _ in range(STEPS):
    state, m = step(state, sharding.shard_batch(local, mesh, rules))
    jax.block_until_ready(m)
    out.append(float(m["loss"]))
  print(json.dumps({"process": process_id, "losses": out}), flush=True)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_agree_with_one():
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  import pytest  # pylint: disable=import-outside-toplevel
  from tests.train_step_test import (  # pylint: disable=import-outside-toplevel
      fixed_batch, jitted_init, jitted_step)

  port = _free_port()
  env = dict(os.environ, PYTHONPATH=str(ROOT),
             XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
  procs = [subprocess.Popen([sys.executable, __file__, str(i), str(port)], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
           for i in range(N_PROCESSES)]
  outputs = []
  deadline = time.time() + TIMEOUT_S
  try:
    for p in procs:
      out, _ = p.communicate(timeout=max(1.0, deadline - time.time()))
      outputs.append((p.returncode, out))
  except subprocess.TimeoutExpired:
    pytest.fail(f"multi-process run did not finish in {TIMEOUT_S}s")
  finally:
    for p in procs:  # jax.distributed traps SIGTERM, so stop stragglers with SIGKILL
      if p.poll() is None:
        p.send_signal(signal.SIGKILL)
        p.wait()
  for rc, out in outputs:
    if rc != 0 and any(u in out for u in UNSUPPORTED):
      pytest.skip(f"this jax build lacks multi-process CPU collectives: {out[-300:]}")
    assert rc == 0, f"worker failed (rc={rc}):\n{out[-3000:]}"
  results = [json.loads(out.strip().splitlines()[-1]) for _, out in outputs]

  state = jitted_init()(jax.random.key(0))
  step = jitted_step()
  ref = []
  for _ in range(STEPS):
    state, m = step(state, fixed_batch())
    ref.append(float(m["loss"]))
  for r in results:
    np.testing.assert_allclose(r["losses"], ref, rtol=1e-5)


if __name__ == "__main__":
  sys.path.insert(0, str(ROOT))
  worker(int(sys.argv[1]), int(sys.argv[2]))
