"""Device-resident token pool for the proxy sweep: every domain's training tokens in one
flat array with offsets, a pure on-device batch sampler that follows a proxy's own mixture
weights and pool state, and fixed held-out / target evaluation batches.

The sampler applies the pool-shift rule of `causalmix_jax.data.pool_shift` exactly:
with a quality filter, domain d's stream is its kept documents in order (given on device
by `kept_end_M`, the cumulative kept tokens over every document of the pool, see
`kept_end`); domain d exposes only the first `n_tokens[d]` tokens of its stream, and with
duplicate rate r the last `floor(r * n_tokens[d])` of those are replaced by a copy of the
first `floor(r * n_tokens[d])`. Each example picks its domain by inverse-CDF sampling of the
weights (so proxies sharing a key draw coupled domains: common random numbers) and a
window start uniformly among the domain's available windows.

Batches have the layout of `causalmix_jax.data.mixing`: `{"tokens": int32[B, L+1],
"mask": uint8[B, L+1], "domain": int32[B]}`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from causalmix_jax import evaluate
from causalmix_jax.data import pool as pool_lib

PoolArrays = dict[str, jax.Array]


def dup_tokens(n_tokens: np.ndarray | int, dup_rate: np.ndarray | float) -> np.ndarray:
  """Host rule: how many trailing tokens of the exposed prefix are duplicates.

  Computed in float32 exactly as the device does, so host and device agree.
  """
  n = np.asarray(n_tokens, np.float32)
  r = np.asarray(dup_rate, np.float32)
  return np.floor(n * r).astype(np.int64)


def source_positions(pos: jax.Array, n_tokens: jax.Array, dup_rate: jax.Array) -> jax.Array:
  """Maps virtual positions in a pool-shifted domain to positions in its raw stream."""
  n_f = n_tokens.astype(jnp.float32)
  k = jnp.floor(n_f * dup_rate.astype(jnp.float32)).astype(jnp.int32)
  boundary = n_tokens - k
  return jnp.where(pos >= boundary, pos - boundary, pos)


def kept_flat_positions(arrays: Mapping[str, jax.Array], domain: jax.Array,
                        pos: jax.Array, kept_end_M: jax.Array) -> jax.Array:
  """Flat positions (into `arrays["tokens"]`) of positions `pos` of domain `domain`'s
  filtered stream (its kept documents in order). `domain` broadcasts against `pos`.

  kept_end_M: int32[M], over every document of the pool (domains in order), the kept
    tokens up to and including that document (a dropped document adds 0).
  """
  first = arrays["doc_lo"][domain]
  before = jnp.where(first > 0, kept_end_M[jnp.maximum(first - 1, 0)], 0)
  g = before + pos
  # The document holding kept position g: the first whose cumulative end passes g (it
  # is kept, since a dropped one does not move the cumulative sum).
  j = jnp.searchsorted(kept_end_M, g, side="right", method="compare_all")
  j = jnp.minimum(j, kept_end_M.shape[0] - 1)
  start = kept_end_M[j] - arrays["doc_len"][j]
  return arrays["doc_start"][j] + (g - start)


def sample_batch_from(arrays: Mapping[str, jax.Array], key: jax.Array, w_D: jax.Array,
                      n_tokens_D: jax.Array, dup_rate_D: jax.Array, batch_size: int,
                      seq_len: int, kept_end_M: jax.Array | None = None
                      ) -> dict[str, jax.Array]:
  """Pure sampler over explicit pool arrays (see module docstring).

  arrays: `{"tokens": int32[T], "mask": uint8[T], "offsets": int32[D], ...}` as made by
    `TokenPool.device_arrays`.
  w_D: mixture weights (need not be normalised; zero weight = never sampled).
  n_tokens_D: tokens exposed per domain (each >= seq_len + 1 where w > 0).
  dup_rate_D: duplicate rate per domain.
  kept_end_M: quality-filtered streams (see `kept_flat_positions`); None = every
    document kept (the same batches as an all-kept `kept_end_M`, computed directly).
  """
  window = seq_len + 1
  k_dom, k_start = jax.random.split(key)
  w_D = jnp.maximum(w_D.astype(jnp.float32), 0.0)
  cdf_D = jnp.cumsum(w_D)
  u_B = jax.random.uniform(k_dom, (batch_size,), jnp.float32) * cdf_D[-1]
  n_dom = w_D.shape[0]
  domain_B = jnp.clip(jnp.searchsorted(cdf_D, u_B, side="right"), 0, n_dom - 1)
  domain_B = domain_B.astype(jnp.int32)
  n_B = n_tokens_D.astype(jnp.int32)[domain_B]
  n_starts_B = jnp.maximum(n_B - seq_len, 1)
  start_B = jax.random.randint(k_start, (batch_size,), 0, n_starts_B, dtype=jnp.int32)
  pos_BxW = start_B[:, None] + jnp.arange(window, dtype=jnp.int32)[None, :]
  pos_BxW = jnp.minimum(pos_BxW, jnp.maximum(n_B, 1)[:, None] - 1)
  src_BxW = source_positions(pos_BxW, n_B[:, None], dup_rate_D[domain_B][:, None])
  if kept_end_M is None:
    flat_BxW = arrays["offsets"][domain_B][:, None] + src_BxW
  else:
    flat_BxW = kept_flat_positions(arrays, domain_B[:, None], src_BxW, kept_end_M)
  return {"tokens": arrays["tokens"][flat_BxW], "mask": arrays["mask"][flat_BxW],
          "domain": domain_B}


@dataclasses.dataclass(frozen=True)
class TokenPool:
  """Host copy of a pool's tokens in the device layout, plus fixed evaluation batches.

  tokens/mask: every domain's train stream concatenated (domain order = `domains`).
  offsets_D/lengths_D: where each domain starts and how long its stream is.
  doc_start_M/doc_len_M: every document (domains in order): flat start and length;
    doc_lo_D: index of each domain's first document.
  eval_*: held-out batches, `eval_tokens_ExBxW` with `eval_domain_ExB`, E = D * n_eval.
  target_*: the target evaluation batches `target_tokens_ExBxW`.
  """
  domains: tuple[str, ...]
  pad_id: int
  tokens: np.ndarray
  mask: np.ndarray
  offsets_D: np.ndarray
  lengths_D: np.ndarray
  doc_start_M: np.ndarray
  doc_len_M: np.ndarray
  doc_lo_D: np.ndarray
  eval_tokens_ExBxW: np.ndarray
  eval_mask_ExBxW: np.ndarray
  eval_domain_ExB: np.ndarray
  target_tokens_ExBxW: np.ndarray
  target_mask_ExBxW: np.ndarray

  @property
  def n_domains(self) -> int:
    return len(self.domains)

  def device_arrays(self, sharding: jax.sharding.Sharding | None = None) -> PoolArrays:
    """The arrays as a pytree on device (replicated under `sharding` when given)."""
    host = {
        "tokens": self.tokens, "mask": self.mask, "offsets": self.offsets_D,
        "lengths": self.lengths_D, "doc_start": self.doc_start_M,
        "doc_len": self.doc_len_M, "doc_lo": self.doc_lo_D, "eval_tokens": self.eval_tokens_ExBxW,
        "eval_mask": self.eval_mask_ExBxW, "eval_domain": self.eval_domain_ExB,
        "target_tokens": self.target_tokens_ExBxW, "target_mask": self.target_mask_ExBxW,
    }
    if sharding is None:
      return {k: jnp.asarray(v) for k, v in host.items()}
    return {k: jax.device_put(v, sharding) for k, v in host.items()}

  def sample_batch(self, key: jax.Array, w_D: jax.Array, n_tokens_D: jax.Array,
                   dup_rate_D: jax.Array, batch_size: int, seq_len: int,
                   kept_end_M: np.ndarray | None = None) -> dict[str, jax.Array]:
    """Jitted sampler bound to this pool's device arrays."""
    kept = None if kept_end_M is None else jnp.asarray(kept_end_M, jnp.int32)
    return _jitted_sampler(batch_size, seq_len)(
        self._cached_arrays(), key, jnp.asarray(w_D), jnp.asarray(n_tokens_D),
        jnp.asarray(dup_rate_D), kept_end_M=kept)

  def kept_end(self, masks: Mapping[str, np.ndarray]) -> np.ndarray:
    """int32[M]: cumulative kept tokens over every document, keeping the documents
    `masks[d]` marks in each filtered domain d (others keep every document)."""
    keep_M = np.ones(len(self.doc_len_M), bool)
    for d, mask in masks.items():
      i = self.domains.index(d)
      lo = int(self.doc_lo_D[i])
      hi = int(self.doc_lo_D[i + 1]) if i + 1 < len(self.domains) else len(keep_M)
      if len(mask) != hi - lo:
        raise ValueError(f"keep mask of domain {d!r} has {len(mask)} entries for "
                         f"{hi - lo} documents")
      keep_M[lo:hi] = np.asarray(mask, bool)
    return np.cumsum(np.where(keep_M, self.doc_len_M, 0)).astype(np.int32)

  def kept_end_states(self, quality_SxD: np.ndarray, scores: Any) -> np.ndarray | None:
    """int32[S, M]: `kept_end` of each state's quality filter (keep fractions
    `quality_SxD`, documents ranked by `scores`, a `DocScores`); None when no state
    filters."""
    quality_SxD = np.asarray(quality_SxD, np.float64)
    if not np.any(quality_SxD < 1.0):
      return None
    if scores is None:
      raise ValueError("the design has quality-filtered pool states, which need the "
                       "reference stage's document scores (run --stage=reference)")
    rows = []
    for q_D in quality_SxD:
      rows.append(self.kept_end({d: scores.keep_mask(d, float(q))
                                 for d, q in zip(self.domains, q_D) if q < 1.0}))
    return np.stack(rows)

  def _cached_arrays(self) -> PoolArrays:
    cache = self.__dict__.get("_arrays")
    if cache is None:
      cache = self.device_arrays()
      object.__setattr__(self, "_arrays", cache)
    return cache


@functools.lru_cache(maxsize=None)
def _jitted_sampler(batch_size: int, seq_len: int):
  return jax.jit(functools.partial(sample_batch_from, batch_size=batch_size,
                                   seq_len=seq_len))


def from_pool(pool: Any, *, seq_len: int, eval_batch_size: int,
              eval_batches: int) -> TokenPool:
  """Builds the TokenPool of a loaded `causalmix_jax.data.pool.Pool` (or any object with
  its fields); evaluation batches are `causalmix_jax.evaluate.eval_arrays`."""
  domains = tuple(pool.domains)
  window = seq_len + 1
  for d in domains:
    if d not in pool.train:
      raise KeyError(f"token pool: domain {d!r} has no train stream")
    if len(pool.train[d]) < window:
      raise ValueError(
          f"token pool: domain {d!r} has {len(pool.train[d])} train tokens, fewer than "
          f"one window of seq_len+1={window} (proxy.model.seq_len)")
  lengths = np.array([len(pool.train[d]) for d in domains], np.int64)
  if lengths.sum() >= 2**31:
    raise ValueError(f"token pool: {lengths.sum()} tokens exceed int32 indexing; cap "
                     "pool.max_tokens_per_domain")
  offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int32)
  doc_start, doc_len, doc_lo = [], [], []
  for d, off, n in zip(domains, offsets, lengths):
    st = np.asarray(pool.doc_starts[d], np.int64)
    st = st[st < n]
    if len(st) == 0 or st[0] != 0:  # tokens before the first start form a document
      st = np.concatenate([[0], st])
    doc_lo.append(sum(len(x) for x in doc_start))
    doc_start.append(st + off)
    doc_len.append(pool_lib.doc_lengths(st, n))
  tokens = np.concatenate([np.asarray(pool.train[d], np.int32) for d in domains])
  mask = np.concatenate([np.asarray(pool.train_mask[d], np.uint8) for d in domains])
  ev = evaluate.eval_arrays(pool, seq_len=seq_len, batch_size=eval_batch_size,
                            n_batches=eval_batches)
  return TokenPool(
      domains=domains, pad_id=int(pool.pad_id), tokens=tokens, mask=mask,
      offsets_D=offsets, lengths_D=lengths.astype(np.int32),
      doc_start_M=np.concatenate(doc_start).astype(np.int32),
      doc_len_M=np.concatenate(doc_len).astype(np.int32),
      doc_lo_D=np.array(doc_lo, np.int32),
      eval_tokens_ExBxW=ev["eval_tokens"], eval_mask_ExBxW=ev["eval_mask"],
      eval_domain_ExB=ev["eval_domain"], target_tokens_ExBxW=ev["target_tokens"],
      target_mask_ExBxW=ev["target_mask"])
