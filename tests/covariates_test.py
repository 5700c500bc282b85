"""Tests for causalmix_jax.data.covariates: a golden covariate vector on the fixture pool,
planted truths for each statistic, pool states, and reference-model statistics with a
fake logits function."""

from __future__ import annotations

import json
import pathlib
import sys

import numpy as np
import pytest

import fixture_pool
from causalmix_jax.data import covariates
from causalmix_jax.data import pool as pool_lib
from causalmix_jax.data import pool_shift

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "pool"

# Feature vector of the fixture pool (fixture_config below, byte tokenizer, seed 0,
# heldout_fraction 0.2). Regenerate after an intended change of a statistic with
#   PYTHONPATH=. .venv/bin/python tests/covariates_test.py
# and paste its output here.
GOLDEN = {
    "x_tokens__code": 645.0,
    "x_token_share__code": 0.3698394495412844,
    "x_documents__code": 3.0,
    "x_doc_len_mean__code": 215.0,
    "x_doc_len_std__code": 80.51086883148137,
    "x_byte_entropy__code": 4.577663967215334,
    "x_compression_ratio__code": 1.9189189189189189,
    "x_type_token_ratio__code": 0.6770833333333334,
    "x_near_dup_rate__code": 0.0,
    "x_tokens__prose": 796.0,
    "x_token_share__prose": 0.45642201834862384,
    "x_documents__prose": 5.0,
    "x_doc_len_mean__prose": 159.2,
    "x_doc_len_std__prose": 11.01635148313633,
    "x_byte_entropy__prose": 4.2390582107421135,
    "x_compression_ratio__prose": 1.7702702702702702,
    "x_type_token_ratio__prose": 0.7142857142857143,
    "x_near_dup_rate__prose": 0.0,
    "x_tokens__qa": 303.0,
    "x_token_share__qa": 0.17373853211009174,
    "x_documents__qa": 6.0,
    "x_doc_len_mean__qa": 50.5,
    "x_doc_len_std__qa": 7.5,
    "x_byte_entropy__qa": 4.528091400421033,
    "x_compression_ratio__qa": 1.6440677966101696,
    "x_type_token_ratio__qa": 0.6739130434782609,
    "x_near_dup_rate__qa": 0.0,
    "x_tokens": 1744.0,
    "x_documents": 14.0,
    "x_doc_len_mean": 124.57142857142857,
    "x_doc_len_std": 77.38467390318344,
    "x_byte_entropy": 4.640693783594423,
    "x_compression_ratio": 1.79874213836478,
    "x_type_token_ratio": 0.6884273636991028,
    "x_near_dup_rate": 0.0,
    "x_share_entropy": 1.4858906803414929,
    "x_n_domains": 3.0,
}


def fixture_config():
  return fixture_pool.smoke_config()


def _fixture_vector(tmp_dir: pathlib.Path) -> dict[str, float]:
  cfg = fixture_config()
  pool_lib.build_pool(cfg, tmp_dir)
  pool = pool_lib.load_pool(tmp_dir)
  return covariates.feature_vector(covariates.compute_covariates(pool, cfg.covariates))


def test_golden_vector(tmp_path):
  vec = _fixture_vector(tmp_path)
  assert list(vec) == list(GOLDEN)
  for k, v in GOLDEN.items():
    assert vec[k] == pytest.approx(v, rel=1e-9, abs=1e-12), k


def test_text_statistics_do_not_depend_on_tokenizer(tmp_path):
  """A BPE pool decodes back to the same text, so its byte statistics equal the byte
  pool's (same documents: the held-out split hashes text, not tokens)."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  hf = Tokenizer(models.BPE(unk_token="[UNK]"))
  hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  hf.decoder = decoders.ByteLevel()
  texts = [p.read_text() for p in sorted(FIXTURES.rglob("*.*"))]
  hf.train_from_iterator(texts, trainers.BpeTrainer(
      vocab_size=400, special_tokens=["[UNK]"], show_progress=False,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  hf.save(str(tmp_path / "tokenizer.json"))
  cfg = fixture_config()
  with cfg.unlocked():
    cfg.pool.tokenizer.kind = "hf"
    cfg.pool.tokenizer.path = str(tmp_path / "tokenizer.json")
  meta = json.loads(pool_lib.build_pool(cfg, tmp_path / "hf").read_text())
  assert meta["tokenizer"]["kind"] == "hf" and meta["vocab_size"] == hf.get_vocab_size() + 3
  cov = covariates.compute_covariates(pool_lib.load_pool(tmp_path / "hf"), cfg.covariates)
  for d in cov["domains"]:
    f = cov["per_domain"][d]
    assert f["tokens"] < GOLDEN[f"x_tokens__{d}"]  # merges shorten the streams
    assert f["documents"] == GOLDEN[f"x_documents__{d}"]
    for k in ("byte_entropy", "compression_ratio", "type_token_ratio"):
      assert f[k] == pytest.approx(GOLDEN[f"x_{k}__{d}"], rel=1e-12), (d, k)


def _random_words(rng: np.random.Generator, n: int, vocab: int) -> str:
  # Zipf-like word frequencies over a fixed vocabulary.
  p = 1.0 / np.arange(1, vocab + 1)
  idx = rng.choice(vocab, size=n, p=p / p.sum())
  return " ".join(f"w{i}" for i in idx)


def test_planted_statistics():
  rng = np.random.default_rng(0)
  docs = {
      "const": ["a" * 5000],
      "uniform": [bytes(rng.integers(0, 128, 20000, dtype=np.uint8)).decode("ascii")],
      "small": [_random_words(rng, 200, 500) for _ in range(25)],
      "large": [_random_words(rng, 200, 500) for _ in range(250)],
  }
  pool = pool_lib.from_documents(docs, ["t"])
  cov = covariates.compute_covariates(pool, {"near_dup_ngram": 8})
  per = cov["per_domain"]
  assert per["const"]["byte_entropy"] == 0.0
  assert per["uniform"]["byte_entropy"] == pytest.approx(7.0, abs=0.02)  # 128 symbols
  assert per["const"]["compression_ratio"] > 50 > per["uniform"]["compression_ratio"]
  # Type-token ratio is over fixed windows: a domain 10x larger with the same word
  # distribution has nearly the same value (a whole-corpus ratio would fall ~5x).
  assert per["small"]["type_token_ratio"] == pytest.approx(
      per["large"]["type_token_ratio"], abs=0.02)
  assert per["large"]["documents"] == 250
  lengths = [len(d.encode()) + 2 for d in docs["large"]]
  assert per["large"]["doc_len_mean"] == pytest.approx(np.mean(lengths))
  assert per["large"]["doc_len_std"] == pytest.approx(np.std(lengths))
  assert sum(per[d]["token_share"] for d in cov["domains"]) == pytest.approx(1.0)
  assert cov["pool"]["n_domains"] == 4


def test_near_duplicates_planted():
  rng = np.random.default_rng(1)
  base_docs = [_random_words(rng, 120, 5000) for _ in range(40)]
  near = []
  for d in base_docs[:10]:  # one word changed in 120: n-gram Jaccard ~0.87
    words = d.split()
    words[60] = "changed"
    near.append(" ".join(words))
  pool = pool_lib.from_documents(
      {"x": base_docs + base_docs[:10] + near, "y": base_docs[:20]}, ["t"])
  flags = covariates.near_dup_flags(pool.train["x"], pool.doc_starts["x"], ngram=8)
  np.testing.assert_array_equal(flags[:40], False)  # distinct documents
  assert flags[40:50].all()  # exact copies
  assert flags[50:].mean() >= 0.7  # near copies (probabilistic but seeded)
  cov = covariates.compute_covariates(pool, {"near_dup_ngram": 8})
  assert cov["per_domain"]["y"]["near_dup_rate"] == 0.0
  assert cov["per_domain"]["x"]["near_dup_rate"] == pytest.approx(flags.mean())


def test_near_duplicates_across_chunks():
  """Many tiny documents span several MinHash chunks; a copy is found across chunks."""
  n = covariates.MINHASH_CHUNK_DOCS + 500
  pool = pool_lib.from_documents({"x": [f"d{i}" for i in range(n)] + ["d5"]}, ["t"])
  flags = covariates.near_dup_flags(pool.train["x"], pool.doc_starts["x"], ngram=8)
  assert len(flags) == n + 1 and flags[-1] and flags.sum() == 1


def test_covariates_of_shifted_state():
  rng = np.random.default_rng(2)
  docs = {"a": [_random_words(rng, 100, 3000) for _ in range(200)],
          "b": [_random_words(rng, 100, 3000) for _ in range(100)]}
  pool = pool_lib.from_documents(docs, ["t"])
  full = pool_shift.full(pool)
  state = pool_shift.inject_duplicates(pool_shift.scarce(full, "a", 2), "a", 0.3)
  base_cov = covariates.compute_covariates(pool, {})
  cov = covariates.compute_covariates(pool, {}, state)
  assert cov["per_domain"]["a"]["tokens"] == len(pool.train["a"]) // 2
  assert cov["per_domain"]["b"] == base_cov["per_domain"]["b"] | {
      "token_share": cov["per_domain"]["b"]["token_share"]}
  assert cov["per_domain"]["b"]["token_share"] > base_cov["per_domain"]["b"]["token_share"]
  assert base_cov["per_domain"]["a"]["near_dup_rate"] == 0.0
  # About 30% of the exposed documents are copies of earlier ones.
  assert 0.25 <= cov["per_domain"]["a"]["near_dup_rate"] <= 0.35
  assert cov["pool_state"]["name"] == state.name
  # Capped near-dup detection keeps copies with their originals.
  capped = covariates.compute_covariates(pool, {"max_bytes_per_domain": 6000}, state)
  assert 0.15 <= capped["per_domain"]["a"]["near_dup_rate"] <= 0.45


def test_feature_vector_names():
  pool = pool_lib.from_documents({"b": ["x y z"], "a": ["p q"]}, ["t"])
  vec = covariates.feature_vector(covariates.compute_covariates(pool, {}))
  assert list(vec)[:2] == ["x_tokens__a", "x_token_share__a"]
  assert "x_tokens" in vec and "x_share_entropy" in vec
  assert all(k.startswith("x_") for k in vec)
  assert json.loads(json.dumps(vec)) == vec


if __name__ == "__main__":
  import tempfile
  with tempfile.TemporaryDirectory() as d:
    for k, v in _fixture_vector(pathlib.Path(d)).items():
      sys.stdout.write(f"    {k!r}: {v!r},\n".replace("'", '"'))
