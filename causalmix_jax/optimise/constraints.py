"""The feasible set of mixtures: constraint specification, exact float64 projection onto it,
and the check that a mixture satisfies every constraint.

A mixture `w` (length D, canonical domain order) is feasible when
- it lies on the simplex (w >= 0, sum w = 1),
- lo_d <= w_d <= hi_d, where lo/hi combine the per-domain minimum and maximum weights, the
  maximum-epochs cap (w_d * budget_tokens / tokens_d <= max_epochs) and pinned domains,
- every weight is either 0 or at least the smallest weight the sampler can represent,
- it lies in the trust region around the reference (L1 distance or KL(w || ref) <= radius).

Everything here is host-side numpy in float64, so "satisfies exactly" means within `TOL`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import numpy as np

TOL = 1e-9


class InfeasibleConstraintsError(ValueError):
  """The constraints admit no mixture; the message names the conflicting constraints."""


def _per_domain(value: float | Mapping[str, float] | None, domains: Sequence[str],
                default: float, name: str) -> np.ndarray:
  """Scalar or {domain: value} (missing domains take `default`) -> float64 array."""
  out = np.full(len(domains), float(default))
  if value is None:
    return out
  if isinstance(value, Mapping):
    unknown = sorted(set(value) - set(domains))
    if unknown:
      raise ValueError(f"constraint {name} names unknown domain(s) {unknown}; "
                       f"known domains: {list(domains)}")
    for i, d in enumerate(domains):
      if d in value:
        out[i] = float(value[d])
    return out
  return np.full(len(domains), float(value))


def parse_domain_values(spec: Any, key: str) -> dict[str, float]:
  """Parses {domain: value}, a ConfigDict, or "a:0.1,b=0.2" into a dict (for configs)."""
  if spec is None or spec == "":
    return {}
  if hasattr(spec, "to_dict"):
    spec = spec.to_dict()
  if isinstance(spec, Mapping):
    return {str(k): float(v) for k, v in spec.items()}
  out: dict[str, float] = {}
  for part in str(spec).split(","):
    part = part.strip()
    if not part:
      continue
    sep = ":" if ":" in part else "="
    if sep not in part:
      raise ValueError(f"config key {key}: cannot parse {part!r}; expected 'domain:value'")
    name, val = part.rsplit(sep, 1)
    try:
      out[name.strip()] = float(val)
    except ValueError as e:
      raise ValueError(f"config key {key}: weight of {name.strip()!r} is not a number: "
                       f"{val!r}") from e
  return out


@dataclasses.dataclass(frozen=True)
class Constraints:
  """What a recommended mixture must satisfy (names at the boundary).

  min_weight / max_weight: a scalar for every domain or {domain: value}.
  max_epochs: cap on passes over each domain's unique tokens (0 = no cap); needs
    `tokens` ({domain: unique tokens}) and `budget_tokens` (tokens the target trains on).
    When given, these two also set the pool size a surface with repetition features
    predicts for (its sampler's `tokens` and `budget`).
  pinned: {domain: weight} fixed exactly.
  trust_radius: radius of the trust region around the reference (0 = off);
    trust_kind "l1" (sum |w - ref|) or "kl" (KL(w || ref), nats).
  sampler_min_weight: smallest non-zero weight the data sampler can represent; smaller
    weights are set to 0 and the rest renormalised.
  """
  min_weight: float | Mapping[str, float] = 0.0
  max_weight: float | Mapping[str, float] = 1.0
  max_epochs: float = 0.0
  tokens: Mapping[str, float] | None = None
  budget_tokens: float | None = None
  pinned: Mapping[str, float] = dataclasses.field(default_factory=dict)
  trust_radius: float = 0.0
  trust_kind: str = "l1"
  sampler_min_weight: float = 0.0

  def to_dict(self) -> dict[str, Any]:
    def plain(v):
      return dict(v) if isinstance(v, Mapping) else v
    return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "Constraints":
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise ValueError(f"unknown constraint(s) {unknown}; known: {sorted(names)}")
    return cls(**dict(d))

  def resolve(self, domains: Sequence[str], reference: np.ndarray) -> "FeasibleSet":
    return FeasibleSet.build(self, list(domains), np.asarray(reference, np.float64))


@dataclasses.dataclass(frozen=True)
class FeasibleSet:
  """Constraints resolved to arrays over the canonical domain order (float64)."""
  domains: tuple[str, ...]
  lo: np.ndarray  # D, continuous lower bounds (min_weight, pinned)
  hi: np.ndarray  # D, continuous upper bounds (max_weight, max_epochs, pinned)
  pinned: np.ndarray  # D bool
  m: float  # sampler's smallest representable weight
  ref: np.ndarray  # D, the reference mixture
  radius: float  # trust radius, 0 = off
  kind: str  # "l1" | "kl"
  centre: np.ndarray  # D, feasible point of {box, simplex} nearest the reference
  sources: dict[str, list[str]]  # per domain: which constraints set lo/hi

  @property
  def has_trust(self) -> bool:
    return self.radius > 0

  @staticmethod
  def build(c: Constraints, domains: list[str], ref: np.ndarray) -> "FeasibleSet":
    dn = len(domains)
    if ref.shape != (dn,):
      raise ValueError(f"reference has shape {ref.shape}; expected ({dn},) over {domains}")
    if np.any(ref < -TOL) or abs(ref.sum() - 1) > 1e-6:
      raise ValueError(f"reference mixture must be >= 0 and sum to 1 (sum={ref.sum():.6g})")
    ref = np.clip(ref, 0, None) / np.clip(ref, 0, None).sum()
    if c.trust_kind not in ("l1", "kl"):
      raise ValueError(f"constraint trust_kind must be 'l1' or 'kl', got {c.trust_kind!r}")
    if c.trust_radius < 0 or c.sampler_min_weight < 0 or c.max_epochs < 0:
      raise ValueError("constraints trust_radius, sampler_min_weight and max_epochs "
                       "must be >= 0")
    lo = _per_domain(c.min_weight, domains, 0.0, "min_weight")
    hi = _per_domain(c.max_weight, domains, 1.0, "max_weight")
    src: dict[str, list[str]] = {d: [] for d in domains}
    for i, d in enumerate(domains):
      if lo[i] > 0:
        src[d].append(f"min_weight={lo[i]:.6g}")
      if hi[i] < 1:
        src[d].append(f"max_weight={hi[i]:.6g}")
    if np.any(lo < 0) or np.any(hi < 0):
      raise ValueError("constraints min_weight and max_weight must be >= 0")
    if c.max_epochs > 0:
      if c.tokens is None or not c.budget_tokens:
        raise ValueError("constraint max_epochs needs `tokens` per domain and "
                         "`budget_tokens` (the target's training tokens)")
      missing = [d for d in domains if d not in c.tokens]
      if missing:
        raise ValueError(f"constraint max_epochs: no token count for domain(s) {missing}")
      for i, d in enumerate(domains):
        cap = c.max_epochs * float(c.tokens[d]) / float(c.budget_tokens)
        if cap < hi[i]:
          hi[i] = cap
          src[d].append(f"max_epochs={c.max_epochs:g} ({float(c.tokens[d]):.4g} tokens of "
                        f"a {float(c.budget_tokens):.4g}-token budget -> w <= {cap:.6g})")
    pinned = np.zeros(dn, bool)
    for d, v in dict(c.pinned).items():
      if d not in domains:
        raise ValueError(f"constraint pinned names unknown domain {d!r}; "
                         f"known domains: {domains}")
      i = domains.index(d)
      if v < 0 or v > 1:
        raise ValueError(f"constraint pinned[{d}]={v} must be in [0, 1]")
      if v < lo[i] - TOL or v > hi[i] + TOL:
        raise InfeasibleConstraintsError(
            f"constraints are infeasible: pinned[{d}]={v:.6g} conflicts with "
            f"{', '.join(src[d])}")
      lo[i] = hi[i] = float(v)
      pinned[i] = True
      src[d].append(f"pinned={v:.6g}")
    m = float(c.sampler_min_weight)
    for i, d in enumerate(domains):
      if pinned[i] and 0 < lo[i] < m - TOL:
        raise InfeasibleConstraintsError(
            f"constraints are infeasible: pinned[{d}]={lo[i]:.6g} is below "
            f"sampler_min_weight={m:.6g}")
      if lo[i] > hi[i] + TOL:
        raise InfeasibleConstraintsError(
            f"constraints are infeasible for domain {d}: {', '.join(src[d])}")
    lo_eff, hi_eff = semicontinuous_bounds(lo, hi, m, domains, src)
    if lo_eff.sum() > 1 + TOL:
      top = [f"{domains[i]} ({', '.join(src[domains[i]]) or 'min'}: {lo_eff[i]:.4g})"
             for i in np.argsort(-lo_eff)[:5] if lo_eff[i] > 0]
      raise InfeasibleConstraintsError(
          f"constraints are infeasible: the minimum weights sum to {lo_eff.sum():.6g} > 1; "
          f"largest: {'; '.join(top)}")
    if hi_eff.sum() < 1 - TOL:
      capped = [f"{domains[i]} ({', '.join(src[domains[i]])})" for i in range(dn)
                if src[domains[i]] and hi_eff[i] < 1]
      raise InfeasibleConstraintsError(
          f"constraints are infeasible: the maximum weights sum to {hi_eff.sum():.6g} < 1; "
          f"capped domains: {'; '.join(capped[:8])}")
    lo, hi = np.minimum(lo, hi), hi
    radius = float(c.trust_radius)
    centre = trust_centre(ref, lo, hi, c.trust_kind) if radius > 0 else project_box_simplex(
        ref, lo, hi)
    fs = FeasibleSet(tuple(domains), lo, hi, pinned, m, ref, radius, c.trust_kind, centre,
                     src)
    if radius > 0:
      dist = fs.distance(centre)
      if dist > radius + TOL:
        raise InfeasibleConstraintsError(
            f"constraints are infeasible: trust region ({c.trust_kind} radius {radius:.6g}) "
            f"around the reference does not reach the mixtures allowed by the other "
            f"constraints (nearest is at {c.trust_kind} distance {dist:.6g})")
    if m > 0:  # fail before any search if no representable mixture exists
      fs.make_feasible(centre)
    return fs

  def distance(self, w: np.ndarray) -> float:
    return trust_distance(w, self.ref, self.kind)

  def violations(self, w: np.ndarray, tol: float = TOL) -> list[str]:
    """Every constraint `w` breaks, as readable strings (empty when feasible)."""
    w = np.asarray(w, np.float64)
    out = []
    if w.shape != (len(self.domains),):
      return [f"shape {w.shape} != ({len(self.domains)},)"]
    if not np.all(np.isfinite(w)):
      out.append("non-finite weights")
    if abs(w.sum() - 1) > tol:
      out.append(f"weights sum to {w.sum():.12g}, not 1")
    for i, d in enumerate(self.domains):
      if w[i] < -tol:
        out.append(f"{d}: negative weight {w[i]:.3g}")
      if w[i] < self.lo[i] - tol:
        out.append(f"{d}: {w[i]:.9g} below its minimum {self.lo[i]:.9g} "
                   f"({', '.join(self.sources[d])})")
      if w[i] > self.hi[i] + tol:
        out.append(f"{d}: {w[i]:.9g} above its maximum {self.hi[i]:.9g} "
                   f"({', '.join(self.sources[d])})")
      if self.m > 0 and tol < w[i] < self.m - tol:
        out.append(f"{d}: {w[i]:.3g} is below sampler_min_weight {self.m:.3g} but not 0")
    if self.has_trust:
      dist = self.distance(w)
      if dist > self.radius + tol:
        out.append(f"trust region: {self.kind} distance {dist:.9g} > radius {self.radius:.9g}")
    return out

  def make_feasible(self, w: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """The exact feasible mixture for a candidate `w` (approximately feasible already).

    1. Threshold: weights below the sampler's smallest weight (and not required to be
       positive) are set to 0; the rest are renormalised, or projected onto the box when
       renormalising would break it (active domains keep at least that smallest weight).
    2. Trust region: if outside, move along the segment towards the trust-region centre
       (computed for the same set of active domains) until inside.
    3. Repair: if the active set cannot meet the constraints, retry with other active
       sets (`_active_set_candidates`); raise InfeasibleConstraintsError naming the
       constraints if none works.
    Returns the mixture and a report: {"zeroed": [...], "renormalised": bool, ...}.
    """
    w = np.clip(np.asarray(w, np.float64), 0, None)
    w = w / w.sum() if w.sum() > 0 else np.full_like(w, 1 / len(w))
    lo_eff, hi_eff = semicontinuous_bounds(self.lo, self.hi, self.m)
    tried: set[tuple[bool, ...]] = set()
    for base in self._active_set_candidates(w, lo_eff, hi_eff):
      key = tuple(bool(b) for b in base)
      if key in tried:
        continue
      tried.add(key)
      active = base.copy()
      lo_s = np.where(active, np.maximum(lo_eff, self.m), 0.0)  # active: >= m
      hi_s = np.where(active, hi_eff, 0.0)
      if lo_s.sum() > 1 + TOL or hi_s.sum() < 1 - TOL:
        continue
      v = np.where(active, w, 0.0)
      renorm = v / v.sum() if v.sum() > 0 else None
      if renorm is not None and np.all(renorm >= lo_s - 1e-12) and np.all(
          renorm <= hi_s + 1e-12):
        w1 = fix_sum(np.clip(renorm, lo_s, hi_s), lo_s, hi_s)
        how = "renormalised"
      else:
        w1 = project_box_simplex(v, lo_s, hi_s)
        how = "projected"
      if self.has_trust:
        c = self._reachable_centre(lo_s, hi_s)
        if c is None:
          continue
        w1 = retract(c, w1, self.ref, self.radius, self.kind)
      if not self.violations(w1):
        zeroed = [self.domains[i] for i in range(len(w)) if not active[i] and w[i] > 0]
        return w1, {"zeroed": zeroed, "how": how,
                    "renormalised": bool(zeroed),
                    "moved_l1": float(np.abs(w1 - w).sum())}
    raise InfeasibleConstraintsError(
        f"constraints are infeasible together: sampler_min_weight={self.m:.6g} with "
        f"the trust region ({self.kind} radius {self.radius:.6g}) and the per-domain "
        f"bounds leave no representable mixture (tried {len(tried)} sets of active "
        f"domains)")

  def _reachable_centre(self, lo_s: np.ndarray, hi_s: np.ndarray) -> np.ndarray | None:
    """The feasible point nearest the reference under bounds (lo_s, hi_s), or None when
    there is none or it lies outside the trust region."""
    try:
      c = trust_centre(self.ref, lo_s, hi_s, self.kind)
    except InfeasibleConstraintsError:
      return None
    return None if self.distance(c) > self.radius else c

  def _active_set_candidates(self, w: np.ndarray, lo_eff: np.ndarray, hi_eff: np.ndarray):
    """Active sets to try, best guesses first: thresholds of w, of the trust-region
    centre and of the reference (each repaired by adding back domains until the caps
    reach 1), then, as the last resort, every active set over the free domains (up to
    2^12), nearest to w first."""
    must = lo_eff > 0
    can = hi_eff > 0
    yield from self._threshold_sets(w, lo_eff, hi_eff, must, can)
    free = np.nonzero(can & ~must)[0]
    if self.m <= 0 or len(free) > 12:
      return
    scored = []
    for bits in range(1 << len(free)):
      active = must.copy()
      active[free[[(bits >> k) & 1 == 1 for k in range(len(free))]]] = True
      lo_s = np.where(active, np.maximum(lo_eff, self.m), 0.0)
      hi_s = np.where(active, hi_eff, 0.0)
      if lo_s.sum() > 1 + TOL or hi_s.sum() < 1 - TOL:
        continue
      if self.has_trust and self._reachable_centre(lo_s, hi_s) is None:
        continue
      scored.append((float(np.abs(np.clip(w, lo_s, hi_s) - w).sum()), bits, active))
    for _, _, active in sorted(scored, key=lambda t: t[:2]):
      yield active

  def _threshold_sets(self, w, lo_eff, hi_eff, must, can):
    for src, thr in ((w, 1.0), (self.centre, 1.0), (self.centre, 0.5), (self.ref, 0.5)):
      active = can & (must | (src >= thr * self.m if self.m > 0 else src >= 0))
      # Repair: add back the largest of the dropped domains until the caps reach 1.
      order = np.argsort(-(src + 1e-12 * hi_eff))
      for i in order:
        if np.where(active, hi_eff, 0).sum() >= 1 - TOL:
          break
        if can[i]:
          active[i] = True
      yield active


def semicontinuous_bounds(lo: np.ndarray, hi: np.ndarray, m: float,
                          domains: Sequence[str] | None = None,
                          src: dict[str, list[str]] | None = None
                          ) -> tuple[np.ndarray, np.ndarray]:
  """Bounds once the smallest representable weight m is applied: a positive lower bound
  below m becomes m; an upper bound below m forces the domain to 0."""
  lo_eff = np.where((lo > 0) & (lo < m), m, lo)
  hi_eff = np.where(hi < m - TOL, 0.0, hi)
  bad = np.nonzero(lo_eff > hi_eff + TOL)[0]
  if bad.size:
    names = [domains[i] if domains else str(i) for i in bad]
    why = [", ".join(src[n]) for n in names] if src else []
    raise InfeasibleConstraintsError(
        f"constraints are infeasible: domain(s) {names} must be positive but their "
        f"maximum is below sampler_min_weight={m:.6g} ({'; '.join(why)})")
  return lo_eff, hi_eff


def fix_sum(w: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
  """Moves the rounding residual 1 - sum(w) onto the coordinates with room for it."""
  w = w.copy()
  for _ in range(4):
    r = 1.0 - w.sum()
    if r == 0:
      break
    room = (hi - w) if r > 0 else (w - lo)
    room = np.where(w > 0, room, 0.0) if np.any(np.where(w > 0, room, 0) > abs(r)) else room
    i = int(np.argmax(room))
    w[i] = min(max(w[i] + r, lo[i]), hi[i])
  return w


def project_box_simplex(v: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
  """Exact Euclidean projection of v onto {lo <= w <= hi, sum w = 1} (float64).

  w = clip(v - tau, lo, hi); sum is piecewise linear and non-increasing in tau, so tau is
  found exactly on the segment between consecutive breakpoints.
  """
  v = np.asarray(v, np.float64)
  if lo.sum() > 1 + TOL or hi.sum() < 1 - TOL:
    raise InfeasibleConstraintsError(
        f"box is empty on the simplex (sum lo={lo.sum():.6g}, sum hi={hi.sum():.6g})")
  bps = np.unique(np.concatenate([v - hi, v - lo]))
  g = np.clip(v[None, :] - bps[:, None], lo, hi).sum(1)  # non-increasing in bps
  k = np.searchsorted(-g, -1.0, side="left")  # first bp with g <= 1
  if k == 0:
    tau = bps[0]
  elif k >= len(bps):
    tau = bps[-1]
  else:
    g0, g1 = g[k - 1], g[k]
    tau = bps[k - 1] + (g0 - 1.0) * (bps[k] - bps[k - 1]) / (g0 - g1) if g0 > g1 else bps[k]
  return fix_sum(np.clip(v - tau, lo, hi), lo, hi)


def trust_distance(w: np.ndarray, ref: np.ndarray, kind: str) -> float:
  w = np.asarray(w, np.float64)
  if kind == "l1":
    return float(np.abs(w - ref).sum())
  pos = w > 0
  if np.any(pos & (ref <= 0)):
    return math.inf
  return float(np.sum(w[pos] * np.log(w[pos] / ref[pos])))


def trust_centre(ref: np.ndarray, lo: np.ndarray, hi: np.ndarray, kind: str) -> np.ndarray:
  """The point of {box, simplex} nearest the reference: minimal L1 distance (clip, then
  move the remainder onto coordinates with room, all in one direction), or the KL
  I-projection clip(ref * s, lo, hi) with the scalar s found by bisection."""
  if kind == "l1":
    w = np.clip(ref, lo, hi)
    r = 1.0 - w.sum()
    room = (hi - w) if r > 0 else (w - lo)
    if room.sum() < abs(r) - TOL:
      raise InfeasibleConstraintsError("box is empty on the simplex")
    if room.sum() > 0:
      w = w + np.sign(r) * abs(r) * room / room.sum()
    return fix_sum(np.clip(w, lo, hi), lo, hi)
  if np.any((ref <= 0) & (lo > 0)):
    raise InfeasibleConstraintsError(
        "constraints are infeasible: a KL trust region keeps domains with zero reference "
        "weight at 0, but a minimum weight requires them")
  pos = ref > 0
  if np.where(pos, hi, 0).sum() < 1 - TOL:
    raise InfeasibleConstraintsError(
        "constraints are infeasible: with a KL trust region only domains in the reference "
        "can be used, and their maximum weights sum to < 1")
  a, b = -60.0, 60.0
  for _ in range(200):
    mid = 0.5 * (a + b)
    s = np.clip(ref * math.exp(mid), lo, np.where(pos, hi, 0)).sum()
    a, b = (mid, b) if s < 1 else (a, mid)
  w = np.clip(ref * math.exp(0.5 * (a + b)), lo, np.where(pos, hi, 0))
  return fix_sum(w, lo, np.where(pos, hi, 0))


def retract(c: np.ndarray, w: np.ndarray, ref: np.ndarray, radius: float,
            kind: str) -> np.ndarray:
  """The point c + a (w - c) with the largest a in [0, 1] inside the trust region (the
  distance is convex along the segment and c is inside)."""
  if trust_distance(w, ref, kind) <= radius:
    return w
  a, b = 0.0, 1.0
  for _ in range(200):
    mid = 0.5 * (a + b)
    if trust_distance(c + mid * (w - c), ref, kind) <= radius * (1 - 1e-12):
      a = mid
    else:
      b = mid
  out = c + a * (w - c)
  out = np.where(np.abs(out) < 1e-15, 0.0, out)
  return out
