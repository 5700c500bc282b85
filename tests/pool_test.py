"""Tests for causalmix_jax.data.pool and the pool stage: layout on disk, held-out split,
caps, memory-mapped loading, the default pool, and bad input leaving old pools intact."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from causalmix_jax.configs import base
from causalmix_jax.configs import data as data_cfg
import fixture_pool
from causalmix_jax.data import pool as pool_lib
from causalmix_jax.stages import pool as pool_stage
from causalmix_jax.data.sources import DataError

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "pool"


def fixture_config(heldout: float = 0.2, max_tokens: int = 0, seed: int = 0,
                   target: bool = True, extra: dict | None = None):
  cfg = base.get_config("smoke")
  with cfg.unlocked():
    cfg.seed = seed
    cfg.pool.source = "files"
    cfg.pool.domains = {**fixture_pool.domains(), **(extra or {})}
    if target:
      cfg.pool.target_eval = data_cfg.domain_spec(
          str(FIXTURES / "target" / "target.jsonl"), "jsonl")
    cfg.pool.heldout_fraction = heldout
    cfg.pool.max_tokens_per_domain = max_tokens
  return cfg


def _docs(stream: np.ndarray, starts: np.ndarray) -> list[np.ndarray]:
  ends = np.append(starts[1:], len(stream))
  return [np.asarray(stream[s:e]) for s, e in zip(starts, ends)]


def test_build_and_load(tmp_path):
  path = pool_lib.build_pool(fixture_config(), tmp_path)
  meta = json.loads(path.read_text())
  assert meta["domains"] == ["code", "prose", "qa"]
  assert (meta["vocab_size"], meta["pad_id"], meta["bos_id"], meta["eos_id"]) == (
      259, 256, 257, 258)
  assert meta["tokenizer"]["kind"] == "byte"
  totals = {"code": 4, "prose": 6, "qa": 8}
  pool = pool_lib.load_pool(tmp_path)
  for d in pool.domains:
    entry = meta["per_domain"][d]
    assert entry["documents"] + entry["heldout_documents"] == totals[d]
    assert entry["heldout_documents"] >= 1
    assert len(pool.train[d]) == entry["tokens"] and len(pool.heldout[d]) == entry[
        "heldout_tokens"]
    assert isinstance(pool.train[d], np.memmap) and pool.train[d].dtype == np.int32
    assert pool.train_mask[d].dtype == np.uint8 and pool.doc_starts[d].dtype == np.int64
    assert len(pool.doc_starts[d]) == entry["documents"]
    for doc in _docs(pool.train[d], pool.doc_starts[d]):
      assert doc[0] == 257 and doc[-1] == 258 and np.all(doc[1:-1] < 256)
  assert meta["target_eval"]["documents"] == 4 and len(pool.target) == meta[
      "target_eval"]["tokens"]
  # Instruction data: the loss mask is 0 on BOS and prompt bytes, 1 on the response + EOS.
  qa_texts = [bytes(np.asarray(d[m == 1][:-1], np.uint8)).decode()
              for d, m in zip(_docs(pool.train["qa"], pool.doc_starts["qa"]),
                              _docs(pool.train_mask["qa"], pool.doc_starts["qa"]))]
  assert all(t.endswith(".") and "?" not in t for t in qa_texts)


def test_heldout_split_is_deterministic_and_seeded(tmp_path):
  a = json.loads(pool_lib.build_pool(fixture_config(0.5), tmp_path / "a").read_text())
  b = json.loads(pool_lib.build_pool(fixture_config(0.5), tmp_path / "b").read_text())
  assert a["per_domain"] == b["per_domain"]
  pa = pool_lib.load_pool(tmp_path / "a")
  pb = pool_lib.load_pool(tmp_path / "b")
  np.testing.assert_array_equal(pa.train["qa"], pb.train["qa"])
  seeds = [json.loads(pool_lib.build_pool(fixture_config(0.5, seed=s),
                                          tmp_path / f"s{s}").read_text())
           for s in range(1, 5)]
  splits = {tuple(m["per_domain"][d]["heldout_documents"] for d in ("code", "prose", "qa"))
            for m in seeds + [a]}
  assert len(splits) > 1


def test_max_tokens_per_domain(tmp_path):
  meta = json.loads(pool_lib.build_pool(fixture_config(0.0, max_tokens=300),
                                        tmp_path).read_text())
  pool = pool_lib.load_pool(tmp_path)
  for d in pool.domains:
    assert meta["per_domain"][d]["tokens"] == min(300, {"code": 848, "prose": 945,
                                                        "qa": 392}[d])
    assert len(pool.train[d]) == meta["per_domain"][d]["tokens"]


def test_target_eval_required(tmp_path):
  with pytest.raises(DataError, match="pool.target_eval is not set"):
    pool_lib.build_pool(fixture_config(target=False), tmp_path)


def test_default_manifest_missing(tmp_path, monkeypatch):
  monkeypatch.setattr(pool_lib, "DEFAULT_POOL_DIR", tmp_path / "nowhere")
  with pytest.raises(DataError, match="default pool is missing.*manifest.json"):
    pool_lib.build_pool(base.get_config("smoke"), tmp_path / "out")


def test_unknown_source_and_bad_domain_name(tmp_path):
  cfg = fixture_config()
  with cfg.unlocked():
    cfg.pool.source = "web"
  with pytest.raises(DataError, match="pool.source 'web'"):
    pool_lib.build_pool(cfg, tmp_path)
  cfg = fixture_config(extra={"bad/name": data_cfg.domain_spec("x")})
  with pytest.raises(DataError, match="domain name 'bad/name'"):
    pool_lib.build_pool(cfg, tmp_path)


def test_failure_leaves_existing_pool_intact(tmp_path):
  pool_lib.build_pool(fixture_config(), tmp_path)
  before = (tmp_path / "pool.json").read_text()
  code_before = np.array(pool_lib.load_pool(tmp_path).train["code"])
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"text": "fine"}\n{"body": "no text field"}\n')
  cfg = fixture_config(extra={"zz_bad": data_cfg.domain_spec(str(bad), "jsonl")})
  with pytest.raises(DataError, match=r"bad\.jsonl:2: record has no field 'text'"):
    pool_lib.build_pool(cfg, tmp_path)
  assert (tmp_path / "pool.json").read_text() == before
  np.testing.assert_array_equal(pool_lib.load_pool(tmp_path).train["code"], code_before)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "pool.json", "tokens"]


def test_pool_stage_writes_artifacts(tmp_path):
  out = pool_stage.run(fixture_config(), tmp_path)
  assert out == tmp_path / "pool" / "pool.json"
  cov = json.loads((tmp_path / "pool" / "covariates.json").read_text())
  assert cov["domains"] == ["code", "prose", "qa"]
  assert cov["vector"]["x_documents__qa"] == cov["per_domain"]["qa"]["documents"]
  events = [json.loads(l)["event"] for l in
            (tmp_path / "pool" / "metrics.jsonl").read_text().splitlines()]
  assert events == ["pool_built", "covariates"]


@pytest.mark.skipif(not (pool_lib.DEFAULT_POOL_DIR / "manifest.json").exists(),
                    reason="embedded default pool not present")
def test_default_pool_smoke(tmp_path):
  cfg = base.get_config("smoke")
  meta = json.loads(pool_lib.build_pool(cfg, tmp_path).read_text())
  assert len(meta["domains"]) >= 5 and meta["domains"] == sorted(meta["domains"])
  assert meta["target_eval"]["tokens"] > 0
  for d in meta["domains"]:
    assert 0 < meta["per_domain"][d]["tokens"] <= cfg.pool.max_tokens_per_domain
