"""Tests of the device-resident token pool and its on-device sampler."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from causalmix_jax.data import pool as pool_lib
from causalmix_jax.data import pool_shift
from causalmix_jax.data import token_pool

# Its module-level fixtures and caches are built once: one xdist worker runs it all.
pytestmark = pytest.mark.xdist_group("token_pool")

SEQ = 16


def _position_pool() -> pool_lib.Pool:
  """A pool whose train tokens encode (domain, position) so windows can be located."""
  sizes = {"a": 400, "b": 900, "c": 250}
  base = pool_lib.from_documents({d: ["x"] for d in sizes}, ["target text " * 20])
  train = {d: (np.arange(n) + 10_000 * i).astype(np.int32)
           for i, (d, n) in enumerate(sizes.items())}
  # Mask marks every third position (a stand-in for prompt tokens) to follow it too.
  mask = {d: (np.arange(len(t)) % 3 != 0).astype(np.uint8) for d, t in train.items()}
  held = {d: (np.arange(70) + 50_000 + 1000 * i).astype(np.int32)
          for i, d in enumerate(sizes)}
  return dataclasses.replace(
      base, train=train, train_mask=mask,
      doc_starts={d: np.array([0], np.int64) for d in sizes},
      heldout=held, heldout_mask={d: np.ones(70, np.uint8) for d in sizes})


@pytest.fixture(scope="module")
def pool():
  return _position_pool()


def _states(pool):
  st = pool_shift.full(pool)
  st = pool_shift.scarce(st, "b", 3.0)
  st = pool_shift.inject_duplicates(st, "b", 0.3)
  st = pool_shift.inject_duplicates(st, "a", 0.5)
  return st


def test_sampler_matches_pool_state_rule(pool):
  state = _states(pool)
  mat = pool_shift.materialise(pool, state)
  tp = token_pool.from_pool(pool, seq_len=SEQ, eval_batch_size=4, eval_batches=2)
  n_D, r_D = state.to_arrays(pool.domains)
  w_D = np.array([0.3, 0.5, 0.2], np.float32)
  seen_starts = {d: set() for d in pool.domains}
  for i in range(6):
    batch = jax.device_get(tp.sample_batch(jax.random.key(i), w_D, n_D, r_D, 64, SEQ))
    assert batch["tokens"].shape == (64, SEQ + 1)
    assert batch["mask"].dtype == np.uint8
    for tok, msk, dom in zip(batch["tokens"], batch["mask"], batch["domain"]):
      d = pool.domains[dom]
      stream, smask = mat.train[d], mat.train_mask[d]
      n_starts = len(stream) - SEQ
      # The window must equal the materialised stream at some valid start.
      windows = np.lib.stride_tricks.sliding_window_view(stream, SEQ + 1)[:n_starts]
      starts = np.flatnonzero(np.all(windows == tok, axis=1)).tolist()
      assert starts, f"window of domain {d} is not a window of the materialised stream"
      assert np.array_equal(smask[starts[0]:starts[0] + SEQ + 1], msk)
      seen_starts[d].update(starts)
  # Windows that straddle the duplicated tail are produced (copies of the head).
  n_b = int(n_D[1])
  k_b = pool_shift.dup_count(n_b, float(r_D[1]))
  assert k_b > 0 and max(seen_starts["b"]) > n_b - k_b - SEQ
  # No window reaches past the exposed prefix of the scarce domain.
  assert max(seen_starts["b"]) <= n_b - SEQ - 1


def test_domain_frequencies_follow_weights_and_zero_weight_is_never_sampled(pool):
  tp = token_pool.from_pool(pool, seq_len=SEQ, eval_batch_size=4, eval_batches=1)
  n_D, r_D = pool_shift.full(pool).to_arrays(pool.domains)
  w_D = np.array([0.7, 0.0, 0.3], np.float32)
  batch = tp.sample_batch(jax.random.key(0), w_D, n_D, r_D, 4000, SEQ)
  freq = np.bincount(np.asarray(batch["domain"]), minlength=3) / 4000
  assert freq[1] == 0.0
  assert abs(freq[0] - 0.7) < 0.03 and abs(freq[2] - 0.3) < 0.03


def test_common_random_numbers_couple_nearby_mixtures(pool):
  """Same key, slightly different weights: almost every example keeps its domain and
  window (inverse-CDF sampling), so mixture differences are not drowned by noise."""
  tp = token_pool.from_pool(pool, seq_len=SEQ, eval_batch_size=4, eval_batches=1)
  n_D, r_D = pool_shift.full(pool).to_arrays(pool.domains)
  b1 = tp.sample_batch(jax.random.key(3), np.array([0.3, 0.4, 0.3]), n_D, r_D, 1000, SEQ)
  b2 = tp.sample_batch(jax.random.key(3), np.array([0.32, 0.38, 0.3]), n_D, r_D, 1000, SEQ)
  same = np.mean(np.all(np.asarray(b1["tokens"]) == np.asarray(b2["tokens"]), axis=1))
  assert same > 0.9


def test_sampler_is_pure_under_jit_and_vmap(pool):
  tp = token_pool.from_pool(pool, seq_len=SEQ, eval_batch_size=4, eval_batches=1)
  arrays = tp.device_arrays()
  n_D, r_D = pool_shift.full(pool).to_arrays(pool.domains)
  w_PxD = jnp.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
  keys = jax.random.split(jax.random.key(1), 3)
  fn = jax.jit(jax.vmap(lambda k, w: token_pool.sample_batch_from(
      arrays, k, w, jnp.asarray(n_D), jnp.asarray(r_D), 8, SEQ)))
  out = fn(keys, w_PxD)
  assert np.array_equal(np.asarray(out["domain"]), np.repeat(np.arange(3), 8).reshape(3, 8))
  again = tp.sample_batch(keys[1], w_PxD[1], n_D, r_D, 8, SEQ)
  assert np.array_equal(np.asarray(out["tokens"][1]), np.asarray(again["tokens"]))


def test_layout_and_eval_batches_are_fixed(pool):
  tp = token_pool.from_pool(pool, seq_len=SEQ, eval_batch_size=4, eval_batches=2)
  assert tp.offsets_D.tolist() == [0, 400, 1300]
  assert tp.tokens.shape == (1550,) and tp.tokens[400] == 10_000
  assert tp.eval_tokens_ExBxW.shape == (6, 4, SEQ + 1)
  assert tp.eval_domain_ExB[:, 0].tolist() == [0, 0, 1, 1, 2, 2]
  # Held-out windows come from the start of each held-out stream, in order.
  assert tp.eval_tokens_ExBxW[2, 0, 0] == 51_000
  tp2 = token_pool.from_pool(pool, seq_len=SEQ, eval_batch_size=4, eval_batches=2)
  assert np.array_equal(tp.target_tokens_ExBxW, tp2.target_tokens_ExBxW)


def test_too_short_domain_is_a_clear_error(pool):
  short = dataclasses.replace(pool, train={**pool.train, "c": pool.train["c"][:5]})
  with pytest.raises(ValueError, match="'c'.*seq_len"):
    token_pool.from_pool(short, seq_len=SEQ, eval_batch_size=4, eval_batches=1)


def test_host_dup_rule_agrees_with_pool_shift():
  n = np.array([1000, 12345, 7, 99991])
  r = np.array([0.3, 0.7, 0.5, 0.1], np.float32)
  assert token_pool.dup_tokens(n, r).tolist() == [
      pool_shift.dup_count(int(a), float(b)) for a, b in zip(n, r)]
