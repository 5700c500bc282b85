"""Data-layer throughput: pool build, covariates (MB/s) and the grain mixing pipeline
(tokens/s) on the embedded default pool, with side-by-side ratios.

  python benchmarks/bench_data.py                 # default pool, a few tens of seconds
  python benchmarks/bench_data.py --batches=2000 --seq_len=512

Falls back to a generated pool (with a note) when the default pool is not installed.
The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
import tempfile
import time

import numpy as np
from absl import app
from absl import flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from causalmix_jax.configs import base  # noqa: E402
from causalmix_jax.data import covariates  # noqa: E402
from causalmix_jax.data import mixing  # noqa: E402
from causalmix_jax.data import pool as pool_lib  # noqa: E402

flags.DEFINE_integer("batches", 300, "grain batches to time")
flags.DEFINE_integer("batch_size", 32, "sequences per grain batch")
flags.DEFINE_integer("seq_len", 128, "tokens per sequence")
flags.DEFINE_integer("max_tokens_per_domain", 0,
                     "cap per domain when building the pool (0 = all)")
FLAGS = flags.FLAGS


def _generated_pool(out: pathlib.Path, n_domains: int = 6) -> pathlib.Path:
  """Writes a synthetic pool (word soups of different vocabularies) as JSONL files."""
  rng = np.random.default_rng(0)
  cfg = base.get_config("")
  with cfg.unlocked():
    cfg.pool.source = "files"
    specs = {}
    for d in range(n_domains):
      path = out / f"gen{d}.jsonl"
      vocab = 200 * (d + 1)
      p = 1.0 / np.arange(1, vocab + 1) ** (0.8 + 0.1 * d)
      with open(path, "w") as f:
        for _ in range(400):
          words = rng.choice(vocab, size=rng.integers(50, 600), p=p / p.sum())
          f.write(json.dumps({"text": " ".join(f"w{w}" for w in words)}) + "\n")
      specs[f"gen{d}"] = {"paths": [str(path)], "format": "jsonl", "text_field": "text",
                          "separator": "", "prompt_field": "", "response_field": ""}
    cfg.pool.domains = specs
    cfg.pool.target_eval = dict(specs["gen0"])
  return cfg


def _time(fn, repeat: int = 1):
  best, out = float("inf"), None
  for _ in range(repeat):
    t0 = time.perf_counter()
    out = fn()
    best = min(best, time.perf_counter() - t0)
  return best, out


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  args = FLAGS

  tmp = pathlib.Path(tempfile.mkdtemp(prefix="bench_data_"))
  default = (pool_lib.DEFAULT_POOL_DIR / "manifest.json").exists()
  if default:
    cfg = base.get_config("")
    source = "default"
  else:
    print("note: embedded default pool not found; benchmarking a generated pool")
    cfg = _generated_pool(tmp)
    source = "generated"
  with cfg.unlocked():
    cfg.pool.max_tokens_per_domain = args.max_tokens_per_domain
  t_build, _ = _time(lambda: pool_lib.build_pool(cfg, tmp / "pool"))
  pool = pool_lib.load_pool(tmp / "pool")
  n_tokens = sum(pool.n_tokens().values())
  text_bytes = sum(int(np.sum(np.asarray(pool.train[d]) < 256)) for d in pool.domains)
  mb = text_bytes / 1e6
  print(f"pool ({source}): {len(pool.domains)} domains, {n_tokens:,} tokens, "
        f"{mb:.2f} MB text; build {t_build:.2f}s ({n_tokens / t_build:,.0f} tokens/s)")

  # Covariates: first call (includes jit compilation) and warm.
  cov_cfg = {"near_dup_ngram": int(cfg.covariates.near_dup_ngram), "max_bytes_per_domain": 0}
  t_cold, _ = _time(lambda: covariates.compute_covariates(pool, cov_cfg))
  t_warm, _ = _time(lambda: covariates.compute_covariates(pool, cov_cfg), repeat=2)
  print(f"covariates: cold {t_cold:.2f}s ({mb / t_cold:.2f} MB/s), warm {t_warm:.2f}s "
        f"({mb / t_warm:.2f} MB/s), warm/cold speed-up x{t_cold / t_warm:.2f}")

  # Components side by side: jitted byte histogram vs numpy, MinHash near-dups.
  sample = b"".join(covariates.text_sample(pool, d, 0) for d in pool.domains)
  covariates.byte_histogram(sample[:1000])
  t_hist_jax, h1 = _time(lambda: covariates.byte_histogram(sample), repeat=3)
  t_hist_np, h2 = _time(lambda: np.bincount(np.frombuffer(sample, np.uint8),
                                            minlength=256), repeat=3)
  assert np.array_equal(h1, h2)
  t_dup, _ = _time(lambda: [covariates.near_dup_flags(
      pool.train[d], pool.doc_starts[d], ngram=cov_cfg["near_dup_ngram"])
      for d in pool.domains])
  t_zlib, _ = _time(lambda: covariates.zlib_sizes(sample))
  t_ttr, _ = _time(lambda: covariates.ttr_windows(sample))
  print(f"  byte histogram: jitted {len(sample) / t_hist_jax / 1e6:.0f} MB/s, numpy "
        f"{len(sample) / t_hist_np / 1e6:.0f} MB/s (jitted/numpy x"
        f"{t_hist_np / t_hist_jax:.2f})")
  print(f"  near-dup MinHash {n_tokens / t_dup / 1e6:.2f} M tokens/s; zlib "
        f"{len(sample) / t_zlib / 1e6:.1f} MB/s; type-token {len(sample) / t_ttr / 1e6:.1f} MB/s")

  # Grain mixing pipeline: token-share weights; read threads vs the calling thread.
  shares = np.array([pool.n_tokens()[d] for d in pool.domains], np.float64)
  weights = dict(zip(pool.domains, (shares / shares.sum()).tolist()))
  weights[pool.domains[-1]] += 1.0 - sum(weights.values())
  results = {}
  for threads in (0, 2):
    it = mixing.make_iterator(pool, weights, cfg.mixing, batch_size=args.batch_size,
                              seq_len=args.seq_len, num_threads=threads)
    next(it)
    t, batches = _time(lambda: [next(it) for _ in range(args.batches)])
    toks = args.batches * args.batch_size * (args.seq_len + 1)
    results[threads] = toks / t
    counts = mixing.domain_counts(np.concatenate([b["domain"] for b in batches]),
                                  len(pool.domains))
    err = np.abs(counts / counts.sum() - shares / shares.sum()).max()
    print(f"grain mixing, {threads} read threads: {toks / t:,.0f} tokens/s "
          f"({args.batches / t:,.0f} batches/s), max |share - weight| {err:.4f}")
  print(f"  threads/none x{results[2] / results[0]:.2f}")

  figures = {
      "pool_source": source, "domains": len(pool.domains), "tokens": n_tokens,
      "text_mb": round(mb, 3), "build_tokens_per_s": round(n_tokens / t_build),
      "covariates_mb_per_s_cold": round(mb / t_cold, 3),
      "covariates_mb_per_s_warm": round(mb / t_warm, 3),
      "covariates_warm_over_cold": round(t_cold / t_warm, 3),
      "byte_hist_jit_over_numpy": round(t_hist_np / t_hist_jax, 3),
      "near_dup_mtokens_per_s": round(n_tokens / t_dup / 1e6, 3),
      "grain_tokens_per_s": round(results[2]),
      "grain_tokens_per_s_no_threads": round(results[0]),
      "grain_threads_over_none": round(results[2] / results[0], 3),
      "batch_size": args.batch_size, "seq_len": args.seq_len,
      "cpu_count": os.cpu_count(),
  }
  print(json.dumps(figures))


if __name__ == "__main__":
  app.run(main)
