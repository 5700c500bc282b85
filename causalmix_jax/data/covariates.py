"""Pool covariates X: statistical features of each domain and of the whole pool, flattened
into the runs-table feature names `x_<feature>__<domain>` and `x_<feature>`.

Per domain (and pooled over domains):
  tokens, token_share      training tokens exposed, and the domain's share of the pool
  documents                number of documents
  doc_len_mean/doc_len_std document length in tokens (BOS and EOS included)
  byte_entropy             Shannon entropy of the byte histogram, bits per byte
  compression_ratio        raw bytes / zlib bytes, compressing 64 KiB blocks independently
                           (so the ratio does not grow with the sample size)
  type_token_ratio         mean over windows of 1,000 consecutive whitespace-separated
                           words of distinct/total words (up to 64 windows evenly spread
                           over the sample; fewer than 1,000 words: over all words), so it
                           is comparable between domains of any size
  near_dup_rate            share of documents that are near-duplicates of an earlier
                           document: MinHash over hashed token n-grams
                           (`near_dup_ngram`), 32 hashes in 4 bands of 8 (a pair with
                           n-gram Jaccard 0.9 is caught with probability ~0.9, 0.5 ~0.02)
  ref_loss_bits, ref_entropy_bits, ref_hes_bits   (with the reference stage's document
                           scores, `data.doc_scores`) the reference model's mean
                           next-token loss and predictive entropy in bits per token, and
                           its high-entropy-token sum per 1,000 tokens, over the tokens
                           the pool state exposes
Pool-level extras: share_entropy (bits, entropy of the token shares) and n_domains.

`max_bytes_per_domain` caps the byte sample (64 evenly spaced segments) behind the text
statistics, and the documents behind near_dup_rate (documents kept by a hash of their
first tokens, so copies are kept or dropped together). Token and document counts always
use the whole domain.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import time
import zlib
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from causalmix_jax.data import tokenize
from causalmix_jax.data.pool import Pool
from causalmix_jax.data.sources import DataError

log = logging.getLogger(__name__)

DOMAIN_FEATURES = ("tokens", "token_share", "documents", "doc_len_mean", "doc_len_std",
                   "byte_entropy", "compression_ratio", "type_token_ratio",
                   "near_dup_rate")
REFERENCE_FEATURES = ("ref_loss_bits", "ref_entropy_bits", "ref_hes_bits")
POOL_EXTRA_FEATURES = ("share_entropy", "n_domains")

N_SEGMENTS = 64
TTR_WINDOW = 1000
TTR_MAX_WINDOWS = 64
ZLIB_BLOCK = 1 << 16
ZLIB_LEVEL = 6
MINHASH_HASHES = 32
MINHASH_BANDS = 4
MINHASH_CHUNK = 1 << 16
MINHASH_CHUNK_DOCS = MINHASH_CHUNK // 8
_HIST_BLOCK = 1 << 20
_PREFIX = 16



def _cfg_get(cfg: Any, key: str, default: Any) -> Any:
  if cfg is None:
    return default
  if isinstance(cfg, Mapping):
    return cfg.get(key, default)
  return getattr(cfg, key, default) if hasattr(cfg, key) else default


# ----------------------------------------------------------------------------- samples


def _segments(n: int, cap: int) -> list[tuple[int, int]]:
  if cap <= 0 or n <= cap:
    return [(0, n)]
  seg = max(1, cap // N_SEGMENTS)
  starts = np.linspace(0, n - seg, N_SEGMENTS).astype(np.int64)
  return [(int(s), int(s) + seg) for s in starts]


def _decoder(pool: Pool) -> Callable[[np.ndarray], bytes]:
  if pool.tokenizer.get("kind", "byte") == "byte":
    return lambda ids: np.asarray(ids)[np.asarray(ids) < 256].astype(np.uint8).tobytes()
  tok = tokenize.make_tokenizer(pool.tokenizer)
  return lambda ids: tok.decode(np.asarray(ids).tolist()).encode("utf-8")


def text_sample(pool: Pool, domain: str, max_bytes: int) -> bytes:
  """The domain's text bytes (special tokens dropped), sampled in evenly spaced segments
  when the domain exceeds `max_bytes` tokens."""
  decode = _decoder(pool)
  stream = pool.train[domain]
  return b"".join(decode(stream[lo:hi]) for lo, hi in _segments(len(stream), max_bytes))


# ----------------------------------------------------------------------------- bytes


@jax.jit
def _hist_block(x_N: jax.Array) -> jax.Array:
  return jnp.bincount(x_N, length=257)[:256]


def byte_histogram(data: bytes) -> np.ndarray:
  """Counts of each byte value (jitted bincount over fixed-size padded blocks)."""
  arr = np.frombuffer(data, np.uint8)
  total = np.zeros(256, np.int64)
  for lo in range(0, len(arr), _HIST_BLOCK):
    blk = np.full(_HIST_BLOCK, 256, np.int32)
    piece = arr[lo:lo + _HIST_BLOCK]
    blk[:len(piece)] = piece
    total += np.asarray(_hist_block(blk), np.int64)
  return total


def entropy_bits(counts: np.ndarray) -> float:
  counts = np.asarray(counts, np.float64)
  n = counts.sum()
  if n <= 0:
    return 0.0
  p = counts[counts > 0] / n
  return float(-(p * np.log2(p)).sum())


def zlib_sizes(data: bytes) -> tuple[int, int]:
  """(raw bytes, compressed bytes) over independent 64 KiB blocks."""
  comp = 0
  for lo in range(0, len(data), ZLIB_BLOCK):
    comp += len(zlib.compress(data[lo:lo + ZLIB_BLOCK], ZLIB_LEVEL))
  return len(data), comp


def ttr_windows(data: bytes) -> list[float]:
  """Type-token ratio of each 1,000-word window (see module docstring)."""
  words = data.decode("utf-8", errors="replace").split()
  if not words:
    return []
  if len(words) < TTR_WINDOW:
    return [len(set(words)) / len(words)]
  n_win = min(TTR_MAX_WINDOWS, len(words) // TTR_WINDOW)
  starts = np.linspace(0, len(words) - TTR_WINDOW, n_win).astype(np.int64)
  return [len(set(words[s:s + TTR_WINDOW])) / TTR_WINDOW for s in starts]


# ----------------------------------------------------------------------------- near-dups


def _fmix32(h: jax.Array) -> jax.Array:
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


# Independent hash functions: fmix32(h * mul_m + add_m) with fixed odd multipliers.
_HASH_MUL = (np.random.default_rng(1234).integers(0, 2**31, MINHASH_HASHES,
                                                  dtype=np.int64) * 2 + 1) % 2**32
_HASH_ADD = np.random.default_rng(4321).integers(0, 2**32, MINHASH_HASHES, dtype=np.int64)


@functools.partial(jax.jit, static_argnames=("ngram",))
def _minhash_chunk(tok_C: jax.Array, doc_C: jax.Array, start_C: jax.Array,
                   end_C: jax.Array, *, ngram: int) -> jax.Array:
  """MinHash signatures [MINHASH_CHUNK_DOCS, H] of a chunk's documents (row i = doc i).

  tok_C: token ids; doc_C: local document index per position (MINHASH_CHUNK_DOCS for
  padding, whose row is dropped);
  start_C/end_C: the position's document start and end (exclusive). A shingle is the
  n-gram starting at a position, cut at its document end; positions whose n-gram runs past
  the end are skipped unless they start the document (so short documents get one).
  """
  size = tok_C.shape[0]
  idx_C = jnp.arange(size, dtype=jnp.int32)
  tok_pad = jnp.concatenate([tok_C.astype(jnp.uint32), jnp.zeros((ngram,), jnp.uint32)])
  h_C = jnp.zeros((size,), jnp.uint32)
  for j in range(ngram):
    t = jax.lax.dynamic_slice(tok_pad, (j,), (size,))
    inside = (idx_C + j) < end_C
    h_C = h_C * jnp.uint32(0x01000193) + jnp.where(inside, t + jnp.uint32(1), 0)
  valid_C = (((idx_C + ngram) <= end_C) | (idx_C == start_C)) & (
      doc_C < MINHASH_CHUNK_DOCS)
  mul_H = jnp.asarray(_HASH_MUL.astype(np.uint32))
  add_H = jnp.asarray(_HASH_ADD.astype(np.uint32))
  v_CxH = _fmix32(h_C[:, None] * mul_H[None, :] + add_H[None, :])
  v_CxH = jnp.where(valid_C[:, None], v_CxH, jnp.uint32(0xFFFFFFFF))
  return jax.ops.segment_min(v_CxH, doc_C, num_segments=MINHASH_CHUNK_DOCS + 1,
                             indices_are_sorted=True)[:MINHASH_CHUNK_DOCS]


def _doc_bounds(starts: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
  starts = np.asarray(starts, np.int64)
  ends = np.append(starts[1:], n).astype(np.int64)
  return starts, ends


def _prefix_keep(stream: np.ndarray, starts: np.ndarray, ends: np.ndarray,
                 fraction: float) -> np.ndarray:
  """Keeps documents by a hash of their first tokens (copies are kept together)."""
  if fraction >= 1.0:
    return np.ones(len(starts), bool)
  idx = starts[:, None] + np.arange(_PREFIX)[None, :]
  inside = idx < ends[:, None]
  vals = np.where(inside, np.asarray(stream)[np.minimum(idx, len(stream) - 1)] + 1, 0)
  h = np.zeros(len(starts), np.uint64)
  with np.errstate(over="ignore"):
    for j in range(_PREFIX):
      h = h * np.uint64(1099511628211) + vals[:, j].astype(np.uint64)
    h ^= h >> np.uint64(29)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(32)
  return (h % np.uint64(1 << 32)).astype(np.float64) < fraction * 2.0**32


def near_dup_flags(stream: np.ndarray, starts: np.ndarray, *, ngram: int,
                   max_tokens: int = 0) -> np.ndarray:
  """Per examined document, True when it is a near-duplicate of an earlier one."""
  n = len(stream)
  if n == 0 or len(starts) == 0:
    return np.zeros(0, bool)
  starts, ends = _doc_bounds(starts, n)
  if max_tokens and n > max_tokens:
    keep = _prefix_keep(stream, starts, ends, max_tokens / n)
    starts, ends = starts[keep], ends[keep]
  size = MINHASH_CHUNK
  rows = MINHASH_HASHES // MINHASH_BANDS
  seen: set[bytes] = set()
  flags = np.zeros(len(starts), bool)
  i = 0
  while i < len(starts):
    tok = np.zeros(size, np.int32)
    doc = np.full(size, MINHASH_CHUNK_DOCS, np.int32)
    st = np.zeros(size, np.int32)
    en = np.zeros(size, np.int32)
    pos, first = 0, i
    while i < len(starts) and i - first < MINHASH_CHUNK_DOCS:
      length = int(min(ends[i] - starts[i], size))
      if pos + length > size:
        break
      tok[pos:pos + length] = stream[starts[i]:starts[i] + length]
      doc[pos:pos + length] = i - first
      st[pos:pos + length] = pos
      en[pos:pos + length] = pos + length
      pos += length
      i += 1
    sig = np.asarray(_minhash_chunk(tok, doc, st, en, ngram=int(ngram)))[:i - first]
    for r in range(i - first):
      keys = [bytes([b]) + sig[r, b * rows:(b + 1) * rows].tobytes()
              for b in range(MINHASH_BANDS)]
      flags[first + r] = any(k in seen for k in keys)
      seen.update(keys)
  return flags


# ----------------------------------------------------------------------------- main


def compute_covariates(pool: Pool, cov_cfg: Any = None, state: Any = None, *,
                       doc_scores: Any = None) -> dict[str, Any]:
  """Covariates of `pool` (or of the pool state `state`, materialised first).

  doc_scores: the reference stage's `data.doc_scores.DocScores` of `pool` (adds the
    reference features; needed by quality-filtered states).
  Returns `{"domains", "per_domain": {d: {feature: v}}, "pool": {feature: v},
  "pool_state", "settings"}`.
  """
  from causalmix_jax.data import pool_shift  # pylint: disable=import-outside-toplevel
  unshifted = pool
  if state is None:
    state = pool_shift.full(pool)
  else:
    pool = pool_shift.materialise(pool, state, doc_scores)
  cap = int(_cfg_get(cov_cfg, "max_bytes_per_domain", 0) or 0)
  ngram = int(_cfg_get(cov_cfg, "near_dup_ngram", 8))
  if ngram < 1:
    raise DataError(f"covariates.near_dup_ngram must be >= 1, got {ngram}")
  total = sum(int(len(pool.train[d])) for d in pool.domains)
  if total == 0:
    raise DataError("pool has no training tokens in any domain")
  per: dict[str, dict[str, float]] = {}
  agg = {"hist": np.zeros(256, np.int64), "raw": 0, "comp": 0, "ttr": [], "dups": 0,
         "examined": 0, "lengths": []}
  t0 = time.time()
  for d in pool.domains:
    stream = pool.train[d]
    n = int(len(stream))
    if n == 0:
      raise DataError(f"domain {d!r} has no training tokens in this pool state")
    starts = np.asarray(pool.doc_starts[d], np.int64)
    lengths = pool.doc_lengths(d).astype(np.float64)
    sample = text_sample(pool, d, cap)
    hist = byte_histogram(sample)
    raw, comp = zlib_sizes(sample)
    ttr = ttr_windows(sample)
    flags = near_dup_flags(stream, starts, ngram=ngram, max_tokens=cap)
    per[d] = {
        "tokens": float(n), "token_share": n / total, "documents": float(len(starts)),
        "doc_len_mean": float(lengths.mean()), "doc_len_std": float(lengths.std()),
        "byte_entropy": entropy_bits(hist),
        "compression_ratio": raw / comp if comp else 1.0,
        "type_token_ratio": float(np.mean(ttr)) if ttr else 0.0,
        "near_dup_rate": float(flags.mean()) if len(flags) else 0.0,
    }
    agg["hist"] += hist
    agg["raw"] += raw
    agg["comp"] += comp
    agg["ttr"].extend(ttr)
    agg["dups"] += int(flags.sum())
    agg["examined"] += len(flags)
    agg["lengths"].append(lengths)
    log.debug("covariates: domain %s done (%d tokens, %.1fs)", d, n, time.time() - t0)
  lengths = np.concatenate(agg["lengths"])
  shares = np.array([per[d]["token_share"] for d in pool.domains])
  pooled = {
      "tokens": float(total), "documents": float(len(lengths)),
      "doc_len_mean": float(lengths.mean()), "doc_len_std": float(lengths.std()),
      "byte_entropy": entropy_bits(agg["hist"]),
      "compression_ratio": agg["raw"] / agg["comp"] if agg["comp"] else 1.0,
      "type_token_ratio": float(np.mean(agg["ttr"])) if agg["ttr"] else 0.0,
      "near_dup_rate": agg["dups"] / agg["examined"] if agg["examined"] else 0.0,
      "share_entropy": entropy_bits(shares),
      "n_domains": float(len(pool.domains)),
  }
  if doc_scores is not None:
    _add_reference_features(unshifted, state, doc_scores, per, pooled)
  state_dict = pool.meta.get("pool_state")
  return {"domains": list(pool.domains), "per_domain": per, "pool": pooled,
          "pool_state": state_dict,
          "settings": {"max_bytes_per_domain": cap, "near_dup_ngram": ngram,
                       "ttr_window": TTR_WINDOW, "zlib_block": ZLIB_BLOCK,
                       "minhash": [MINHASH_HASHES, MINHASH_BANDS],
                       "reference": bool(doc_scores is not None)}}


def _add_reference_features(pool: Pool, state: Any, scores: Any,
                            per: dict[str, dict[str, float]], pooled: dict[str, float]
                            ) -> None:
  """Reference features of the tokens `state` exposes (per domain, and token-weighted
  over domains), from the document scores of the unshifted `pool`."""
  # pylint: disable=import-outside-toplevel
  from causalmix_jax.data import doc_scores as doc_scores_lib
  from causalmix_jax.data import pool_shift
  masks = pool_shift.keep_masks(pool, state, scores)
  n_D, r_D = state.to_arrays(pool.domains)
  weights = {}
  for d, n, r in zip(pool.domains, n_D, r_D):
    feats, weights[d] = doc_scores_lib.exposed_features(
        scores, d, pool.doc_starts[d], len(pool.train[d]), masks.get(d), int(n),
        pool_shift.dup_count(int(n), float(r)))
    per[d].update(feats)
  total = max(sum(weights.values()), 1.0)
  for f in REFERENCE_FEATURES:
    pooled[f] = sum(per[d][f] * weights[d] for d in pool.domains) / total


def feature_vector(cov: Mapping[str, Any]) -> dict[str, float]:
  """Flattens covariates to runs-table names: `x_<feature>__<domain>` per domain (domains
  in canonical order, features in a fixed order) and `x_<feature>` for the pool."""
  out: dict[str, float] = {}
  for d in cov["domains"]:
    feats = cov["per_domain"][d]
    for f in (*DOMAIN_FEATURES, *REFERENCE_FEATURES):
      if f in feats:
        out[f"x_{f}__{d}"] = float(feats[f])
  for f in (*DOMAIN_FEATURES, *POOL_EXTRA_FEATURES, *REFERENCE_FEATURES):
    if f in cov["pool"]:
      out[f"x_{f}"] = float(cov["pool"][f])
  return out


def digest(cov: Mapping[str, Any]) -> str:
  """A short stable hash of a feature vector (for logs and stamps)."""
  vec = feature_vector(cov)
  h = hashlib.sha256(repr(sorted(vec.items())).encode())
  return h.hexdigest()[:16]


def read_vector(path: Any) -> dict[str, float]:
  """The flat `x_*` covariate vector saved in a pool stage's `covariates.json`."""
  from causalmix_jax import artifacts  # pylint: disable=import-outside-toplevel
  cov = artifacts.read_json(path, "pool covariates")
  if "vector" not in cov:
    raise ValueError(f"{path}: no 'vector' entry (the flattened x_ features)")
  return dict(cov["vector"])
