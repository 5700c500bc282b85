"""Pool states: what each domain of a pool exposes after a pool-shift intervention
(subsampling, scarcity, richness, injected duplicates), and their materialisation.

The rule (the device sampler in `token_pool` applies the same one): domain d exposes only
the first `n_tokens[d]` tokens of `train[d]`; with duplicate rate r, the last
`k = floor(float32(n) * float32(r))` of those tokens are replaced by a copy of the first k.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence

import numpy as np

from causalmix_jax.data.pool import Pool
from causalmix_jax.data.sources import DataError


def dup_count(n_tokens: int, dup_rate: float) -> int:
  """Number of trailing duplicate tokens, computed in float32 as on the device."""
  return int(np.floor(np.float32(n_tokens) * np.float32(dup_rate)))


@dataclasses.dataclass(frozen=True)
class PoolState:
  """A named pool state: tokens exposed and duplicate rate per domain.

  `available` (optional) is what the pool holds per domain; `rich` caps at it. States made
  by `full(pool)` and the constructors below carry it.
  """
  name: str
  n_tokens: dict[str, int]
  dup_rate: dict[str, float]
  available: dict[str, int] | None = dataclasses.field(default=None, compare=False,
                                                      repr=False)

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
    if self.available is not None:
      out["available"] = dict(self.available)
    return out

  @classmethod
  def from_dict(cls, d: Mapping) -> "PoolState":
    avail = d.get("available")
    return cls(name=str(d["name"]), n_tokens={k: int(v) for k, v in d["n_tokens"].items()},
               dup_rate={k: float(v) for k, v in d["dup_rate"].items()},
               available={k: int(v) for k, v in avail.items()} if avail else None)


def _check(state: PoolState, domain: str) -> None:
  if domain not in state.n_tokens:
    raise DataError(f"domain {domain!r} is not in pool state {state.name!r} "
                    f"(domains: {sorted(state.n_tokens)})")


def _limits(state: PoolState) -> dict[str, int]:
  return dict(state.available or state.n_tokens)


def _replace(state: PoolState, name: str, n_tokens: dict[str, int],
             dup_rate: dict[str, float]) -> PoolState:
  return PoolState(name=name, n_tokens=n_tokens, dup_rate=dup_rate,
                   available=_limits(state))


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


def materialise(pool: Pool, state: PoolState) -> Pool:
  """The pool as the state exposes it (in memory): train streams cut and duplicated.

  Held-out and target sets are unchanged. Document starts follow the copies, so document
  statistics (lengths, near-duplicates) see the injected duplicates.
  """
  n_D, _ = state.to_arrays(pool.domains)
  train, mask, starts = {}, {}, {}
  for d, n in zip(pool.domains, n_D):
    if n > len(pool.train[d]):
      raise DataError(f"pool state {state.name!r} exposes {n} tokens of domain {d!r}, "
                      f"but the pool holds {len(pool.train[d])}")
    train[d], mask[d], starts[d] = _apply(pool.train[d], pool.train_mask[d],
                                          pool.doc_starts[d], int(n),
                                          state.dup_rate.get(d, 0.0))
  meta = dict(pool.meta)
  meta["pool_state"] = state.to_dict()
  return dataclasses.replace(pool, train=train, train_mask=mask, doc_starts=starts,
                             meta=meta)


def deploy_state(pool: Pool, fraction: Mapping[str, float],
                 dup_rate: Mapping[str, float]) -> PoolState:
  """The pool a recommendation is for (config `pool.deploy`): each domain keeps
  `fraction[d]` of its tokens (default 1) with duplicate rate `dup_rate[d]` (default 0).
  Unknown domains and out-of-range values are errors naming the config key."""
  st = full(pool)
  for key, values in (("fraction", fraction), ("dup_rate", dup_rate)):
    unknown = sorted(set(values) - set(pool.domains))
    if unknown:
      raise DataError(f"config key pool.deploy.{key} names unknown domain(s) {unknown}; "
                      f"domains: {list(pool.domains)}")
  changed = False
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
