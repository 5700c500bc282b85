"""The NormLoss/HES analogues from a saved reference model: `checkpointing.load_params`
restores what the target stage saved, and `covariates.reference_checkpoint` uses it."""

import dataclasses

import jax
import numpy as np

from causalmix_jax import checkpointing
from causalmix_jax import model
from causalmix_jax import train_step
from causalmix_jax.configs import base
from causalmix_jax.data import covariates
from causalmix_jax.data import pool as pool_lib



def _tiny_pool():
  docs = {"alpha": [f"the cat sat on mat number {i}." for i in range(30)],
          "beta": [f"x{i} = {i} * {i + 1}" for i in range(30)]}
  return pool_lib.from_documents(docs, [f"mixed {i}: the cat = {i}" for i in range(8)])


def test_load_params_feeds_reference_covariates(tmp_path):
  cfg = base.get_config("smoke")
  spec = dataclasses.replace(model.ModelSpec.from_config(cfg.target.model), vocab_size=259)
  state = train_step.init_train_state(spec, cfg.target.optim, jax.random.key(3))
  ckpt = checkpointing.Checkpointer(
      tmp_path / "target" / "checkpoints", fingerprint="f",
      fingerprint_config={"model": dataclasses.asdict(spec)}, async_save=False)
  ckpt.save(4, state)
  ckpt.close()

  loaded_spec, params = checkpointing.load_params(tmp_path / "target")
  assert loaded_spec == spec
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(state.params)):
    np.testing.assert_array_equal(a, np.asarray(b))

  pool = _tiny_pool()
  with cfg.unlocked():
    cfg.covariates.reference_checkpoint = str(tmp_path / "target")
  from_ckpt = covariates.compute_covariates(pool, cfg.covariates, reference_seq_len=16)
  direct = covariates.compute_covariates(
      pool, None, reference_seq_len=16,
      logits_fn=lambda t: model.apply(spec, state.params, t))
  for d in pool.domains:
    for f in covariates.REFERENCE_FEATURES:
      got, want = from_ckpt["per_domain"][d][f], direct["per_domain"][d][f]
      assert np.isfinite(got) and abs(got - want) < 1e-5, (d, f, got, want)
  # An untrained model predicts close to uniform over 259 ids: ~8 bits.
  assert 6.0 < from_ckpt["per_domain"]["alpha"]["ref_entropy_bits"] < 8.1
  vec = covariates.feature_vector(from_ckpt)
  assert "x_ref_loss_bits__alpha" in vec and "x_ref_entropy_bits" in vec


def test_missing_checkpoint_is_named(tmp_path):
  import pytest  # pylint: disable=import-outside-toplevel
  with pytest.raises(FileNotFoundError, match="no checkpoints"):
    checkpointing.load_params(tmp_path / "nope")
