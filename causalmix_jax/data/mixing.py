"""Grain input pipelines for training on a mixture: packed fixed-length sequences per
domain, a weighted mixture over domains with the domain id carried per example, batching,
and a checkpointable iterator.

Each domain's train stream is cut into packed chunks of L+1 tokens (the last one padded,
mask 0); chunk order is reshuffled every epoch of the domain (deterministic by seed).
The mixture is an exact, deterministic interleave: weights are quantised to integers over
a period of 2**24 examples (largest remainder), and example k is drawn from the domain
whose running count must grow at k, so over any window of N examples each domain's count
is within one or two of w * N. Batches are
`{"tokens": int32[B, L+1], "mask": uint8[B, L+1], "domain": int32[B]}`.
"""

from __future__ import annotations

import logging
import math
import threading
from typing import Any, Mapping, Sequence

import grain.python as grain
import numpy as np

from causalmix_jax.data.pool import Pool
from causalmix_jax.data.sources import DataError

log = logging.getLogger(__name__)

WEIGHT_TOL = 1e-6
QUANT_PERIOD = 1 << 24
_LENGTH = 1 << 62


def check_weights(weights: Mapping[str, float], domains: Sequence[str]) -> np.ndarray:
  """Validates a domain -> weight mapping against the pool's domains; returns w_D in the
  order of `domains` (missing domains get 0). Errors name the offending domain."""
  domains = list(domains)
  unknown = [k for k in weights if k not in domains]
  if unknown:
    raise DataError(f"weights name domain(s) {unknown} that the pool lacks "
                    f"(pool domains: {domains})")
  w_D = np.zeros(len(domains), np.float64)
  for i, d in enumerate(domains):
    if d not in weights:
      continue
    try:
      v = float(weights[d])
    except (TypeError, ValueError):
      raise DataError(f"weight of domain {d!r} is not a number: {weights[d]!r}") from None
    if math.isnan(v) or math.isinf(v):
      raise DataError(f"weight of domain {d!r} is {v}")
    if v < 0:
      raise DataError(f"weight of domain {d!r} is negative: {v}")
    w_D[i] = v
  total = float(w_D.sum())
  if abs(total - 1.0) > WEIGHT_TOL:
    raise DataError(f"weights sum to {total:.9g}, not 1 (tolerance {WEIGHT_TOL}); "
                    f"weights: {dict(weights)}")
  return w_D


def representable(weights: Mapping[str, float], batch_size: int,
                  window: int = 1) -> dict[str, float]:
  """Domains with a positive weight too small to appear: fewer than one expected example
  in `window` batches of `batch_size`. Returns {domain: expected examples} and logs a
  warning; such domains are still sampled at their exact rate, never dropped."""
  per = batch_size * max(1, int(window))
  small = {d: float(w) * per for d, w in weights.items()
           if 0 < float(w) and float(w) * per < 1}
  too_fine = {d: float(w) * QUANT_PERIOD for d, w in weights.items()
              if 0 < float(w) * QUANT_PERIOD < 0.5}
  for d, e in small.items():
    log.warning("mixing: weight %.3g of domain %r gives %.3g expected examples in %d "
                "batch(es) of %d; it cannot be represented in that window", weights[d], d,
                e, window, batch_size)
  for d in too_fine:
    log.warning("mixing: weight %.3g of domain %r is below the sampler's resolution "
                "1/%d and may be sampled as 0", weights[d], d, QUANT_PERIOD)
    small[d] = small.get(d, 0.0)
  return small


def quantise(w_D: np.ndarray, period: int = QUANT_PERIOD) -> np.ndarray:
  """Integer counts per period summing to `period` (largest remainder rounding)."""
  raw = np.asarray(w_D, np.float64) / np.sum(w_D) * period
  counts = np.floor(raw).astype(np.int64)
  short = period - int(counts.sum())
  order = np.argsort(-(raw - counts), kind="stable")
  counts[order[:short]] += 1
  return counts


def _select(k: int, counts: Sequence[int]) -> tuple[int, int]:
  """(source index, index within source) of example k of the interleave of `counts`.

  Source 0 holds ceil(k * c0 / R) of the first k examples; the remaining examples are
  split the same way among the other sources with R - c0, and so on. Example k comes from
  the first source whose count grows between k and k + 1.
  """
  remaining = int(sum(counts))
  a, b = k, k + 1
  for i, c in enumerate(counts):
    if c == 0:
      continue
    na = (a * c + remaining - 1) // remaining
    nb = (b * c + remaining - 1) // remaining
    if nb > na:
      return i, na
    remaining -= c
    a, b = a - na, b - nb
  raise AssertionError("unreachable: counts sum to zero")


class _DomainChunks:
  """Packed chunks of one domain, reshuffled each epoch."""

  def __init__(self, tokens: np.ndarray, mask: np.ndarray, window: int, pad_id: int,
               seed: int, domain_id: int):
    self.tokens, self.mask = tokens, mask
    self.window, self.pad_id = window, pad_id
    self.n = max(1, -(-len(tokens) // window))
    self.seed, self.domain_id = seed, domain_id
    self._orders: dict[int, np.ndarray] = {}
    # Grain reads with a thread pool: the cache is shared between reader threads.
    self._lock = threading.Lock()

  def _order(self, epoch: int) -> np.ndarray:
    """The chunk permutation of one epoch (the two most recent epochs are cached)."""
    with self._lock:
      order = self._orders.get(epoch)
      if order is None:
        rng = np.random.default_rng([self.seed, self.domain_id, epoch])
        order = rng.permutation(self.n)
        while len(self._orders) >= 2:
          del self._orders[min(self._orders)]
        self._orders[epoch] = order
      return order

  def __getitem__(self, j: int) -> dict[str, Any]:
    epoch, pos = divmod(int(j), self.n)
    lo = int(self._order(epoch)[pos]) * self.window
    piece = np.asarray(self.tokens[lo:lo + self.window], np.int32)
    mpiece = np.asarray(self.mask[lo:lo + self.window], np.uint8)
    if len(piece) < self.window:
      tok = np.full(self.window, self.pad_id, np.int32)
      msk = np.zeros(self.window, np.uint8)
      tok[:len(piece)], msk[:len(piece)] = piece, mpiece
      piece, mpiece = tok, msk
    return {"tokens": piece, "mask": mpiece, "domain": np.int32(self.domain_id)}


class MixtureSource:
  """Random-access source of the infinite weighted mixture (a grain data source)."""

  def __init__(self, pool: Pool, w_D: np.ndarray, seq_len: int, seed: int):
    self.window = int(seq_len) + 1
    self.counts = quantise(w_D)
    self.domain_ids = [i for i, c in enumerate(self.counts) if c > 0]
    self.sources = []
    for i in self.domain_ids:
      d = pool.domains[i]
      if len(pool.train[d]) == 0:
        raise DataError(f"domain {d!r} has weight {w_D[i]:.3g} but no training tokens")
      self.sources.append(_DomainChunks(pool.train[d], pool.train_mask[d], self.window,
                                        pool.pad_id, seed, i))
    self._active = [int(self.counts[i]) for i in self.domain_ids]

  def __len__(self) -> int:
    return _LENGTH

  def __getitem__(self, k: int) -> dict[str, Any]:
    src, j = _select(int(k), self._active)
    return self.sources[src][j]

  def domain_of(self, k: int) -> int:
    return self.domain_ids[_select(int(k), self._active)[0]]


def make_dataset(pool: Pool, weights: Mapping[str, float], mixing_cfg: Any, *,
                 state: Any = None, seed: int | None = None,
                 batch_size: int | None = None, seq_len: int | None = None,
                 window: int = 100, num_threads: int | None = None,
                 prefetch: int | None = None) -> grain.IterDataset:
  """The batched mixture as a grain IterDataset.

  weights: domain -> weight (validated by `check_weights`).
  mixing_cfg: `cfg.mixing` (seq_len, batch_size, shuffle_seed); keyword arguments
    override it. state: optional PoolState, materialised first.
  window: batches over which `representable` checks tiny weights.
  num_threads, prefetch: grain read threads and batches prefetched (0 threads: read in
    the calling thread); default `mixing_cfg.num_threads` / `.prefetch`, else 2 / 8.
  """
  if state is not None:
    from causalmix_jax.data import pool_shift  # pylint: disable=import-outside-toplevel
    pool = pool_shift.materialise(pool, state)
  w_D = check_weights(weights, pool.domains)
  seq_len = int(seq_len if seq_len is not None else mixing_cfg.seq_len)
  batch_size = int(batch_size if batch_size is not None else mixing_cfg.batch_size)
  seed = int(seed if seed is not None else mixing_cfg.shuffle_seed)
  representable({d: float(w) for d, w in zip(pool.domains, w_D)}, batch_size, window)
  if num_threads is None:
    num_threads = int(getattr(mixing_cfg, "num_threads", 2))
  if prefetch is None:
    prefetch = int(getattr(mixing_cfg, "prefetch", 8))
  if seed < 0:
    raise DataError(f"mixing.shuffle_seed must be >= 0, got {seed}")
  source = MixtureSource(pool, w_D, seq_len, seed)
  # Batching on the random-access side keeps grain's read threads working on whole
  # batches (per-example prefetch costs more than reading a chunk).
  ds = grain.MapDataset.source(source).batch(batch_size, drop_remainder=True)
  return ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                              prefetch_buffer_size=prefetch))


def make_iterator(pool: Pool, weights: Mapping[str, float], mixing_cfg: Any,
                  **kwargs: Any) -> grain.DatasetIterator:
  """A checkpointable iterator over batches (`get_state()` / `set_state()`)."""
  return iter(make_dataset(pool, weights, mixing_cfg, **kwargs))


def domain_counts(domain_B: np.ndarray, n_domains: int) -> np.ndarray:
  """Examples per domain id in a batch (or a concatenation of batches)."""
  return np.bincount(np.asarray(domain_B, np.int64).ravel(), minlength=n_domains)
