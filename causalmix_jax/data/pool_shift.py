"""Pool states: what each domain of a pool exposes after a pool-shift intervention
(subsampling, scarcity, richness, injected duplicates, quality filters), and their
materialisation.

The rule (the device sampler in `token_pool` applies the same one): a quality filter with
keep fraction q < 1 first keeps the domain's top-q documents by a reference-model score
(`data.doc_scores`; the kept documents in their order form the domain's stream); domain d
then exposes only the first `n_tokens[d]` tokens of that stream; with duplicate rate r,
the last `k = floor(float32(n) * float32(r))` of those tokens are replaced by a copy of
the first k.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import numpy as np

from causalmix_jax.data.pool import Pool
from causalmix_jax.data.sources import DataError


def dup_count(n_tokens: int, dup_rate: float) -> int:
  """Number of trailing duplicate tokens, computed in float32 as on the device."""
  return int(np.floor(np.float32(n_tokens) * np.float32(dup_rate)))


@dataclasses.dataclass(frozen=True)
class PoolState:
  """A named pool state: tokens exposed, duplicate rate and quality-filter keep fraction
  per domain (`quality`: absent domains keep every document).

  `available` (optional) is what the pool holds per domain; `rich` caps at it. States made
  by `full(pool)` and the constructors below carry it.
  """
  name: str
  n_tokens: dict[str, int]
  dup_rate: dict[str, float]
  available: dict[str, int] | None = dataclasses.field(default=None, compare=False,
                                                      repr=False)
  quality: dict[str, float] = dataclasses.field(default_factory=dict)

  @property
  def filtered(self) -> bool:
    """Whether a quality filter drops documents of some domain."""
    return any(float(q) < 1.0 for q in self.quality.values())

  def quality_array(self, domains: Sequence[str]) -> np.ndarray:
    """float32[D] keep fractions in the order of `domains` (1 = every document)."""
    return np.array([self.quality.get(d, 1.0) for d in domains], np.float32)

  def to_arrays(self, domains: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(n_tokens_D int64, dup_rate_D float32) in the order of `domains`."""
    missing = [d for d in domains if d not in self.n_tokens]
    if missing:
      raise DataError(f"pool state {self.name!r} has no entry for domain(s) {missing}")
    return (np.array([self.n_tokens[d] for d in domains], np.int64),
            np.array([self.dup_rate.get(d, 0.0) for d in domains], np.float32))

  def to_dict(self) -> dict:
    out = {"name": self.name, "n_tokens": dict(self.n_tokens),
           "dup_rate": dict(self.dup_rate)}
    if self.quality:
      out["quality"] = dict(self.quality)
    if self.available is not None:
      out["available"] = dict(self.available)
    return out

  @classmethod
  def from_dict(cls, d: Mapping) -> "PoolState":
    avail = d.get("available")
    return cls(name=str(d["name"]), n_tokens={k: int(v) for k, v in d["n_tokens"].items()},
               dup_rate={k: float(v) for k, v in d["dup_rate"].items()},
               available={k: int(v) for k, v in avail.items()} if avail else None,
               quality={k: float(v) for k, v in d.get("quality", {}).items()})


def _check(state: PoolState, domain: str) -> None:
  if domain not in state.n_tokens:
    raise DataError(f"domain {domain!r} is not in pool state {state.name!r} "
                    f"(domains: {sorted(state.n_tokens)})")


def _limits(state: PoolState) -> dict[str, int]:
  return dict(state.available or state.n_tokens)


def _replace(state: PoolState, name: str, n_tokens: dict[str, int],
             dup_rate: dict[str, float]) -> PoolState:
  return PoolState(name=name, n_tokens=n_tokens, dup_rate=dup_rate,
                   available=_limits(state), quality=dict(state.quality))


def full(pool: Pool) -> PoolState:
  """Every token of every domain, no injected duplicates."""
  return PoolState(name="full", n_tokens=pool.n_tokens(),
                   dup_rate={d: 0.0 for d in pool.domains}, available=pool.n_tokens())


def subsample(state: PoolState, domain: str, n_tokens: int) -> PoolState:
  """Domain exposes only its first `n_tokens` tokens (capped at what exists)."""
  _check(state, domain)
  n = int(n_tokens)
  if n < 1:
    raise DataError(f"subsample: n_tokens for domain {domain!r} must be >= 1, got {n}")
  n = min(n, _limits(state)[domain])
  return _replace(state, f"{state.name}|{domain}={n}", {**state.n_tokens, domain: n},
                  dict(state.dup_rate))


def scarce(state: PoolState, domain: str, factor: float) -> PoolState:
  """Domain exposes n / factor tokens (factor > 1 makes it scarcer)."""
  _check(state, domain)
  if not factor > 0:
    raise DataError(f"scarce: factor for domain {domain!r} must be > 0, got {factor}")
  n = max(1, int(math.floor(state.n_tokens[domain] / factor)))
  new = subsample(state, domain, n)
  return _replace(new, f"{state.name}|{domain}/{factor:g}", new.n_tokens, new.dup_rate)


def rich(state: PoolState, domain: str, factor: float) -> PoolState:
  """Domain exposes n * factor tokens, capped at what the pool holds."""
  _check(state, domain)
  if not factor > 0:
    raise DataError(f"rich: factor for domain {domain!r} must be > 0, got {factor}")
  n = max(1, int(math.floor(state.n_tokens[domain] * factor)))
  new = subsample(state, domain, n)
  return _replace(new, f"{state.name}|{domain}*{factor:g}", new.n_tokens, new.dup_rate)


def inject_duplicates(state: PoolState, domain: str, rate: float) -> PoolState:
  """The last `rate` of the domain's exposed tokens become a copy of its first `rate`."""
  _check(state, domain)
  if not 0.0 <= rate <= 0.5:
    raise DataError(f"inject_duplicates: rate for domain {domain!r} must be in [0, 0.5], "
                    f"got {rate}")
  r = float(np.float32(rate))
  return _replace(state, f"{state.name}|{domain}~dup{rate:g}", dict(state.n_tokens),
                  {**state.dup_rate, domain: r})


def quality_filter(state: PoolState, domain: str, fraction: float,
                   kept_tokens: int) -> PoolState:
  """Domain keeps only its top `fraction` of documents by the reference score
  (`kept_tokens`: how many tokens those documents hold, from `DocScores.keep_mask`); it
  exposes at most those tokens."""
  _check(state, domain)
  if not 0 < float(fraction) <= 1:
    raise DataError(f"quality_filter: keep fraction for domain {domain!r} must lie in "
                    f"(0, 1], got {fraction}")
  n = max(1, min(int(state.n_tokens[domain]), int(kept_tokens)))
  return PoolState(name=f"{state.name}|{domain}^q{fraction:g}",
                   n_tokens={**state.n_tokens, domain: n}, dup_rate=dict(state.dup_rate),
                   available={**_limits(state), domain: int(kept_tokens)},
                   quality={**state.quality, domain: float(fraction)})


def keep_masks(pool: Pool, state: PoolState, scores: Any) -> dict[str, np.ndarray]:
  """bool[docs] per filtered domain of `state` (`scores`: `doc_scores.DocScores`)."""
  if not state.filtered:
    return {}
  if scores is None:
    raise DataError(f"pool state {state.name!r} filters documents by quality, which needs "
                    "the reference stage's document scores (reference.enabled=True; run "
                    "--stage=reference)")
  out = {}
  for d, q in state.quality.items():
    if float(q) < 1.0:
      mask = scores.keep_mask(d, float(q))
      if len(mask) != len(pool.doc_starts[d]):
        raise DataError(f"document scores of domain {d!r} cover {len(mask)} documents, the "
                        f"pool has {len(pool.doc_starts[d])}; re-run --stage=reference")
      out[d] = mask
  return out


def kept_tokens(pool: Pool, domain: str, mask: np.ndarray) -> int:
  """Tokens of `domain` held by the documents `mask` keeps."""
  return int(pool.doc_lengths(domain)[np.asarray(mask, bool)].sum())


def _filter(tokens: np.ndarray, mask: np.ndarray, starts: np.ndarray,
            keep: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The kept documents' tokens, loss mask and starts, in order."""
  starts = np.asarray(starts, np.int64)
  ends = np.append(starts[1:], len(tokens))
  keep = np.asarray(keep, bool)
  pieces = [np.arange(a, b) for a, b, k in zip(starts, ends, keep) if k]
  idx = np.concatenate(pieces) if pieces else np.zeros(0, np.int64)
  lengths = (ends - starts)[keep]
  new_starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
  return np.asarray(tokens)[idx], np.asarray(mask)[idx], new_starts


def _apply(tokens: np.ndarray, mask: np.ndarray, starts: np.ndarray, n: int,
           rate: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  n = min(int(n), len(tokens))
  k = dup_count(n, rate)
  tok = np.array(tokens[:n], np.int32)
  msk = np.array(mask[:n], np.uint8)
  st = np.asarray(starts, np.int64)
  st = st[st < n]
  if k > 0:
    cut = n - k
    tok[cut:] = tok[:k]
    msk[cut:] = msk[:k]
    st = np.concatenate([st[st < cut], st[st < k] + cut])
  if len(st) == 0 or st[0] != 0:
    st = np.concatenate([[0], st]).astype(np.int64)
  return tok, msk, st


def materialise(pool: Pool, state: PoolState, scores: Any = None) -> Pool:
  """The pool as the state exposes it (in memory): train streams filtered, cut and
  duplicated (`scores`: the `doc_scores.DocScores` a quality-filtered state needs).

  Held-out and target sets are unchanged. Document starts follow the copies, so document
  statistics (lengths, near-duplicates) see the injected duplicates.
  """
  n_D, _ = state.to_arrays(pool.domains)
  masks = keep_masks(pool, state, scores)
  train, mask, starts = {}, {}, {}
  for d, n in zip(pool.domains, n_D):
    tok, msk, st = pool.train[d], pool.train_mask[d], pool.doc_starts[d]
    if d in masks:
      tok, msk, st = _filter(tok, msk, st, masks[d])
    if n > len(tok):
      raise DataError(f"pool state {state.name!r} exposes {n} tokens of domain {d!r}, "
                      f"but the pool holds {len(tok)}")
    train[d], mask[d], starts[d] = _apply(tok, msk, st, int(n),
                                          state.dup_rate.get(d, 0.0))
  meta = dict(pool.meta)
  meta["pool_state"] = state.to_dict()
  return dataclasses.replace(pool, train=train, train_mask=mask, doc_starts=starts,
                             meta=meta)


def deploy_state(pool: Pool, fraction: Mapping[str, float], dup_rate: Mapping[str, float],
                 quality: Mapping[str, float] | None = None,
                 scores: Any = None) -> PoolState:
  """The pool a recommendation is for (config `pool.deploy`): each domain keeps its top
  `quality[d]` of documents by the reference score (default 1: all; needs `scores`), then
  `fraction[d]` of those tokens (default 1), with duplicate rate `dup_rate[d]` (default
  0). Unknown domains and out-of-range values are errors naming the config key."""
  st = full(pool)
  quality = dict(quality or {})
  for key, values in (("fraction", fraction), ("dup_rate", dup_rate),
                      ("quality", quality)):
    unknown = sorted(set(values) - set(pool.domains))
    if unknown:
      raise DataError(f"config key pool.deploy.{key} names unknown domain(s) {unknown}; "
                      f"domains: {list(pool.domains)}")
  changed = False
  for d, q in quality.items():
    if not 0 < float(q) <= 1:
      raise DataError(f"config key pool.deploy.quality.{d}={q} must lie in (0, 1]")
    if float(q) < 1:
      if scores is None:
        raise DataError(f"config key pool.deploy.quality.{d}={q} filters documents by the "
                        "reference score: set reference.enabled=True")
      st = quality_filter(st, d, float(q), kept_tokens(pool, d, scores.keep_mask(d, q)))
      changed = True
  for d, f in fraction.items():
    if not 0 < float(f) <= 1:
      raise DataError(f"config key pool.deploy.fraction.{d}={f} must lie in (0, 1]")
    if float(f) < 1:
      st = subsample(st, d, max(1, int(st.n_tokens[d] * float(f))))
      changed = True
  for d, r in dup_rate.items():
    if not 0 <= float(r) < 1:
      raise DataError(f"config key pool.deploy.dup_rate.{d}={r} must lie in [0, 1)")
    if float(r) > 0:
      st = inject_duplicates(st, d, float(r))
      changed = True
  return dataclasses.replace(st, name="deploy" if changed else "full")
