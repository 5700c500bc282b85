"""Tests for causalmix_jax.data.mixing: batch layout, packed chunks, realised domain
proportions, determinism, checkpoint/resume, weight validation and tiny weights."""

from __future__ import annotations

import concurrent.futures
import logging
import sys

import ml_collections
import numpy as np
import pytest

from causalmix_jax.data import mixing
from causalmix_jax.data import pool as pool_lib
from causalmix_jax.data import pool_shift
from causalmix_jax.data.sources import DataError

MIX = ml_collections.ConfigDict(dict(seq_len=15, batch_size=8, shuffle_seed=0))


def _pool() -> pool_lib.Pool:
  # Each domain's bytes come from its own alphabet, so content reveals the domain.
  return pool_lib.from_documents(
      {"a": ["a" * 30 + str(i) for i in range(40)],
       "b": ["b" * 50 + str(i % 10) for i in range(20)],
       "c": ["cc" + str(i % 10) for i in range(10)]},
      ["target"])


def _take(it, n):
  return [next(it) for _ in range(n)]


def test_batch_layout_and_content():
  pool = _pool()
  it = mixing.make_iterator(pool, {"a": 0.5, "b": 0.3, "c": 0.2}, MIX)
  for batch in _take(it, 5):
    assert batch["tokens"].shape == (8, 16) and batch["tokens"].dtype == np.int32
    assert batch["mask"].shape == (8, 16) and batch["mask"].dtype == np.uint8
    assert batch["domain"].shape == (8,) and batch["domain"].dtype == np.int32
    for tok, msk, dom in zip(batch["tokens"], batch["mask"], batch["domain"]):
      letters = set(bytes(t for t in tok if t < 256 and chr(t).isalpha()).decode())
      assert letters <= {"abc"[dom]}
      assert np.all(msk[tok == pool.pad_id] == 0)
      assert np.all(msk[tok == pool.bos_id] == 0)


def test_packed_chunks_cover_domain_once_per_epoch():
  pool = _pool()
  stream = np.asarray(pool.train["c"])
  it = mixing.make_iterator(pool, {"c": 1.0}, MIX, batch_size=1)
  n_chunks = -(-len(stream) // 16)
  chunks = [next(it)["tokens"][0] for _ in range(n_chunks)]
  got = np.concatenate(sorted(chunks, key=lambda c: next(
      i for i in range(0, len(stream), 16) if np.array_equal(stream[i:i + 16],
                                                             c[:len(stream[i:i + 16])]))))
  padded = np.full(n_chunks * 16, pool.pad_id, np.int32)
  padded[:len(stream)] = stream
  np.testing.assert_array_equal(got, padded)
  # The next epoch is a different order of the same chunks.
  nxt = [next(it)["tokens"][0] for _ in range(n_chunks)]
  assert sorted(map(bytes, chunks)) == sorted(map(bytes, nxt))
  assert [bytes(c) for c in chunks] != [bytes(c) for c in nxt]


def test_realised_counts_match_weights():
  """Over any window of N examples each domain's count is within 2 of w * N."""
  pool = _pool()
  weights = {"a": 0.55, "b": 0.3, "c": 0.15}
  it = mixing.make_iterator(pool, weights, MIX, batch_size=32)
  doms = np.concatenate([b["domain"] for b in _take(it, 60)])
  for lo, hi in [(0, len(doms)), (0, 100), (317, 1234), (1000, 1920)]:
    counts = mixing.domain_counts(doms[lo:hi], 3)
    expected = np.array([0.55, 0.3, 0.15]) * (hi - lo)
    assert np.all(np.abs(counts - expected) <= 2), (lo, hi, counts, expected)


def test_deterministic_by_seed():
  pool = _pool()
  w = {"a": 0.4, "b": 0.4, "c": 0.2}
  a = _take(mixing.make_iterator(pool, w, MIX, seed=3), 6)
  b = _take(mixing.make_iterator(pool, w, MIX, seed=3), 6)
  c = _take(mixing.make_iterator(pool, w, MIX, seed=4), 6)
  for x, y in zip(a, b):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  assert any(not np.array_equal(x["tokens"], z["tokens"]) for x, z in zip(a, c))
  # The domain sequence depends only on the weights.
  assert all(np.array_equal(x["domain"], z["domain"]) for x, z in zip(a, c))


def test_checkpoint_resume_exact():
  pool = _pool()
  w = {"a": 0.5, "b": 0.25, "c": 0.25}
  it = mixing.make_iterator(pool, w, MIX, seed=1)
  _take(it, 7)
  state = it.get_state()
  expected = _take(it, 5)
  fresh = mixing.make_iterator(pool, w, MIX, seed=1)
  fresh.set_state(state)
  for x, y in zip(expected, _take(fresh, 5)):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


def test_pool_state_and_zero_weight():
  pool = _pool()
  state = pool_shift.subsample(pool_shift.full(pool), "a", 40)
  it = mixing.make_iterator(pool, {"a": 0.5, "b": 0.5, "c": 0.0}, MIX, state=state)
  batches = _take(it, 10)
  doms = np.concatenate([b["domain"] for b in batches])
  assert 2 not in doms
  a_tokens = np.concatenate([b["tokens"][b["domain"] == 0].ravel() for b in batches])
  allowed = set(np.asarray(pool.train["a"][:40]).tolist()) | {pool.pad_id}
  assert set(a_tokens.tolist()) <= allowed


@pytest.mark.parametrize("weights,match", [
    ({"a": -0.1, "b": 1.1}, "domain 'a' is negative"),
    ({"a": float("nan"), "b": 1.0}, "domain 'a' is nan"),
    ({"a": 0.5, "b": 0.4}, "sum to 0.9"),
    ({"a": 0.5, "zz": 0.5}, r"domain\(s\) \['zz'\]"),
    ({"a": "lots", "b": 1.0}, "domain 'a' is not a number"),
])
def test_check_weights_errors(weights, match):
  with pytest.raises(DataError, match=match):
    mixing.check_weights(weights, ["a", "b", "c"])


def test_check_weights_order_and_tolerance():
  w = mixing.check_weights({"c": 0.2, "a": 0.8 + 5e-7}, ["a", "b", "c"])
  np.testing.assert_allclose(w, [0.8 + 5e-7, 0.0, 0.2])


def test_tiny_weights_reported_not_dropped(caplog):
  small = {"a": 0.998, "b": 0.001, "c": 0.001}
  with caplog.at_level(logging.WARNING):
    report = mixing.representable(small, batch_size=8, window=10)
  assert set(report) == {"b", "c"} and report["b"] == pytest.approx(0.08)
  assert "domain 'b'" in caplog.text
  assert mixing.representable({"a": 0.5, "b": 0.5}, 8, 10) == {}
  assert "x" in mixing.representable({"x": 1e-9, "y": 1 - 1e-9}, 8, 1)
  # The sampler still draws them at their rate.
  it = mixing.make_iterator(_pool(), small, MIX, batch_size=100)
  doms = np.concatenate([b["domain"] for b in _take(it, 30)])
  counts = mixing.domain_counts(doms, 3)
  assert abs(counts[1] - 3) <= 2 and abs(counts[2] - 3) <= 2 and counts[1] >= 1


def test_quantise_sums_to_period():
  c = mixing.quantise(np.array([1 / 3, 1 / 3, 1 / 3]), 1000)
  assert c.sum() == 1000 and sorted(c) == [333, 333, 334]


def test_chunk_order_cache_is_thread_safe():
  """Grain's reader threads share a domain's epoch cache; concurrent epochs never race."""
  chunks = mixing._DomainChunks(np.arange(40, dtype=np.int32), np.ones(40, np.uint8),
                                window=4, pad_id=0, seed=0, domain_id=0)
  single = mixing._DomainChunks(np.arange(40, dtype=np.int32), np.ones(40, np.uint8),
                                window=4, pad_id=0, seed=0, domain_id=0)
  idx = np.random.default_rng(0).integers(0, 10 * 400, size=20000)
  interval = sys.getswitchinterval()
  sys.setswitchinterval(1e-6)  # Switch threads often, so that a race would show.
  try:
    with concurrent.futures.ThreadPoolExecutor(16) as ex:
      got = list(ex.map(lambda j: chunks[j]["tokens"][0], idx))
  finally:
    sys.setswitchinterval(interval)
  want = [single[j]["tokens"][0] for j in idx]
  assert got == want
