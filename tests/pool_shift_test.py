"""Tests for causalmix_jax.data.pool_shift: the pool-state rule, its constructors, and
agreement between host materialisation and the device sampler's position rule."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from causalmix_jax.data import pool as pool_lib
from causalmix_jax.data import pool_shift
from causalmix_jax.data.sources import DataError


def _pool() -> pool_lib.Pool:
  return pool_lib.from_documents(
      {"a": [f"doc {i} " + "a" * i for i in range(20)],
       "b": ["short", "a longer document here", "third one"]},
      ["target text"])


def test_full_and_constructors():
  pool = _pool()
  full = pool_shift.full(pool)
  n_a, n_b = len(pool.train["a"]), len(pool.train["b"])
  assert full.n_tokens == {"a": n_a, "b": n_b} and full.dup_rate == {"a": 0.0, "b": 0.0}
  s = pool_shift.subsample(full, "a", 100)
  assert s.n_tokens["a"] == 100 and s.n_tokens["b"] == n_b
  assert pool_shift.scarce(full, "a", 4).n_tokens["a"] == n_a // 4
  # Rich grows a scarce state back, capped at what the pool holds.
  sc = pool_shift.scarce(full, "a", 4)
  assert pool_shift.rich(sc, "a", 2).n_tokens["a"] == 2 * (n_a // 4)
  assert pool_shift.rich(sc, "a", 100).n_tokens["a"] == n_a
  d = pool_shift.inject_duplicates(s, "a", 0.25)
  assert d.dup_rate["a"] == 0.25 and d.n_tokens["a"] == 100
  n_D, r_D = d.to_arrays(["a", "b"])
  assert n_D.dtype == np.int64 and r_D.dtype == np.float32
  np.testing.assert_array_equal(n_D, [100, n_b])
  # Names record the history; states round-trip through dicts.
  assert d.name == "full|a=100|a~dup0.25"
  back = pool_shift.PoolState.from_dict(d.to_dict())
  assert back == d and back.available == d.available


def test_bad_arguments_name_domain():
  full = pool_shift.full(_pool())
  with pytest.raises(DataError, match="domain 'zz'"):
    pool_shift.subsample(full, "zz", 10)
  with pytest.raises(DataError, match="domain 'a'.*>= 1"):
    pool_shift.subsample(full, "a", 0)
  with pytest.raises(DataError, match="domain 'a'"):
    pool_shift.inject_duplicates(full, "a", 0.9)
  with pytest.raises(DataError, match="domain 'b'"):
    pool_shift.scarce(full, "b", 0)
  with pytest.raises(DataError, match="no entry for domain"):
    pool_shift.PoolState("x", {"a": 1}, {}).to_arrays(["a", "b"])


def test_materialise_rule_by_hand():
  stream = np.arange(100, dtype=np.int32)
  pool = pool_lib.Pool(
      domains=["d"], vocab_size=259, pad_id=256, bos_id=257, eos_id=258,
      train={"d": stream}, train_mask={"d": (stream % 2).astype(np.uint8)},
      doc_starts={"d": np.array([0, 10, 30, 60, 90], np.int64)},
      heldout={"d": stream[:0]}, heldout_mask={"d": np.zeros(0, np.uint8)},
      heldout_doc_starts={"d": np.zeros(0, np.int64)}, target=stream[:5],
      target_mask=np.ones(5, np.uint8), target_doc_starts=np.zeros(1, np.int64))
  state = pool_shift.inject_duplicates(pool_shift.subsample(
      pool_shift.full(pool), "d", 80), "d", 0.25)
  out = pool_shift.materialise(pool, state)
  expected = np.concatenate([np.arange(60), np.arange(20)])
  np.testing.assert_array_equal(out.train["d"], expected)
  np.testing.assert_array_equal(out.train_mask["d"], expected % 2)
  # Documents: those starting before the cut (60), then copies of those before k=20.
  np.testing.assert_array_equal(out.doc_starts["d"], [0, 10, 30, 60, 70])
  assert out.meta["pool_state"]["name"] == state.name
  np.testing.assert_array_equal(pool.train["d"], stream)  # the source is untouched


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 500), rate=st.floats(0.0, 0.5))
def test_host_rule_matches_device_rule(n, rate):
  """materialise(...)[p] == stream[source_positions(p)] as the sweep's sampler computes."""
  token_pool = pytest.importorskip("causalmix_jax.data.token_pool")
  stream = np.arange(1000, dtype=np.int32) * 3
  pool = pool_lib.Pool(
      domains=["d"], vocab_size=259, pad_id=256, bos_id=257, eos_id=258,
      train={"d": stream}, train_mask={"d": np.ones(1000, np.uint8)},
      doc_starts={"d": np.array([0], np.int64)}, heldout={"d": stream[:0]},
      heldout_mask={"d": np.zeros(0, np.uint8)},
      heldout_doc_starts={"d": np.zeros(0, np.int64)}, target=stream[:1],
      target_mask=np.ones(1, np.uint8), target_doc_starts=np.zeros(1, np.int64))
  state = pool_shift.inject_duplicates(pool_shift.subsample(
      pool_shift.full(pool), "d", n), "d", rate)
  host = pool_shift.materialise(pool, state).train["d"]
  n_D, r_D = state.to_arrays(["d"])
  pos = np.arange(500, dtype=np.int32)  # fixed shape: one compilation for all examples
  src = np.asarray(token_pool.source_positions(pos, np.int32(n_D[0]), r_D[0]))[:n]
  np.testing.assert_array_equal(host, stream[src])
  assert pool_shift.dup_count(n, rate) == int(token_pool.dup_tokens(n, r_D[0]))


def test_deploy_state_applies_fractions_and_duplicates_and_names_bad_keys():
  rng = np.random.default_rng(0)
  docs = {d: ["".join(rng.choice(list("abcdefgh"), 300)) for _ in range(40)]
          for d in ("a", "b", "c")}
  pool = pool_lib.from_documents(docs, ["target"])
  full = pool_shift.full(pool)
  same = pool_shift.deploy_state(pool, {}, {})
  assert same.name == "full" and same.n_tokens == full.n_tokens
  st = pool_shift.deploy_state(pool, {"a": 0.25}, {"b": 0.5})
  assert st.name == "deploy"
  assert st.n_tokens["a"] == int(full.n_tokens["a"] * 0.25)
  assert st.n_tokens["b"] == full.n_tokens["b"] and st.dup_rate["b"] == 0.5
  with pytest.raises(DataError, match=r"pool\.deploy\.fraction names unknown.*'z'"):
    pool_shift.deploy_state(pool, {"z": 0.5}, {})
  with pytest.raises(DataError, match=r"pool\.deploy\.fraction\.a=1\.5"):
    pool_shift.deploy_state(pool, {"a": 1.5}, {})
  with pytest.raises(DataError, match=r"pool\.deploy\.dup_rate\.b=1"):
    pool_shift.deploy_state(pool, {}, {"b": 1.0})
