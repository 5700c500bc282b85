"""Tests of meshes, logical-axis rules and sharded training on fake CPU devices: the
sharded step follows the same loss trajectory as the unsharded one."""

from __future__ import annotations

import jax
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from causalmix_jax import sharding
from causalmix_jax import train_step as ts
from causalmix_jax.configs import model as model_cfgs

from tests.train_step_test import (N_DOMAINS, fixed_batch, jitted_init, jitted_step,
                                   tiny_model, tiny_optim)

needs4 = pytest.mark.skipif(jax.device_count() < 4, reason="needs 4 devices (run with "
                            "XLA_FLAGS=--xla_force_host_platform_device_count=4)")


def mesh_cfg(shape) -> ml_collections.ConfigDict:
  c = model_cfgs.mesh_section(frozenset())
  c.shape = shape
  return c


def test_make_mesh_resolves_minus_one_and_rejects_bad_shapes():
  devices = jax.devices()[:1]
  mesh = sharding.make_mesh(mesh_cfg((-1, 1, 1)), devices)
  assert dict(mesh.shape) == {"data": 1, "fsdp": 1, "tensor": 1}
  with pytest.raises(ValueError, match="more than one -1"):
    sharding.make_mesh(mesh_cfg((-1, -1, 1)), devices)
  with pytest.raises(ValueError, match="needs 2 devices"):
    sharding.make_mesh(mesh_cfg((2, 1, 1)), devices)


def test_rules_reject_unknown_mesh_axis():
  c = mesh_cfg((-1, 1, 1))
  c.rules = (("batch", "nope"),)
  with pytest.raises(ValueError, match="unknown mesh axes"):
    sharding.rules_from_config(c)


@needs4
def test_logical_to_mesh_spec_replicates_indivisible_and_reused_axes():
  mesh = sharding.make_mesh(mesh_cfg((1, 2, 2)), jax.devices()[:4])
  rules = sharding.rules_from_config(mesh_cfg((1, 2, 2)))
  assert sharding.logical_to_mesh_spec(P("vocab", "embed"), (32, 8), mesh, rules) == \
      P("tensor", "fsdp")
  assert sharding.logical_to_mesh_spec(P("vocab", "embed"), (31, 8), mesh, rules) == \
      P(None, "fsdp")
  assert sharding.logical_to_mesh_spec(P("mlp", "heads"), (4, 4), mesh, rules) == \
      P("tensor", None)
  with pytest.raises(KeyError, match="no entry in mesh.rules"):
    sharding.logical_to_mesh_spec(P("unknown"), (4,), mesh, rules)


@needs4
def test_sharded_training_matches_unsharded_trajectory():
  """fsdp=2 x tensor=2 on 4 fake devices vs one device: losses agree to rtol 1e-5, and
  after 3 steps every parameter tensor agrees to 1e-4 in relative Frobenius norm. Only
  the order of float reductions differs; Adam magnifies that on entries whose gradient
  is ~0 (m / sqrt(v) of noise), so elementwise tolerances would be arbitrary."""
  model_cfg, opt = tiny_model(), tiny_optim()
  cfg = mesh_cfg((-1, 2, 2))
  mesh = sharding.make_mesh(cfg)
  rules = sharding.rules_from_config(cfg)
  state, state_sh = ts.create_sharded_state(model_cfg, opt, mesh, rules, jax.random.key(0))
  # Parameters really are split: the embedding over tensor (vocab) and fsdp (embed).
  emb = state.params["embed"]["embedding"]
  assert emb.sharding.spec == P("tensor", "fsdp")
  assert emb.addressable_shards[0].data.shape == (16, 16)
  step = ts.make_sharded_train_step(model_cfg, opt, N_DOMAINS, mesh, rules, state_sh)

  ref = jitted_init()(jax.random.key(0))
  ref_step = jitted_step()
  batch = fixed_batch()
  for _ in range(3):
    state, m = step(state, sharding.shard_batch(batch, mesh, rules))
    jax.block_until_ready(m)  # several fake devices: sync each step
    ref, mr = ref_step(ref, batch)
    np.testing.assert_allclose(float(m["loss"]), float(mr["loss"]), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(m["loss_sum_D"]), np.asarray(mr["loss_sum_D"]),
                               rtol=1e-5)
  assert int(state.step) == 3
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(ref.params)):
    a, b = np.asarray(a), np.asarray(b)
    assert np.linalg.norm(a - b) <= 1e-4 * np.linalg.norm(b)
