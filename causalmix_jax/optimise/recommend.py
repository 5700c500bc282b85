"""`recommend`: from fitted surface(s), a pool's covariates, a reference mixture and the
constraints to a Recommendation (names at this boundary, arrays inside the search)."""

from __future__ import annotations

import dataclasses
import inspect
import logging
import numbers
import time
import weakref
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from causalmix_jax.optimise import companion
from causalmix_jax.optimise import constraints as cons
from causalmix_jax.optimise import search
from causalmix_jax.recommendation import Improvement, Interval, Recommendation
from causalmix_jax.surface import decisions

log = logging.getLogger(__name__)

METHODS = ("S", "A")
# What the safe objective compares a pick with off the sweep's support (`off_support`).
OFF_SUPPORT = ("shrink", "uniform", "anchors")
# "shrink": the fallback also scores the points at k / SHRINK_STEPS of the way from
# uniform to the failed pick, k = 1 .. SHRINK_STEPS - 1 (a grid of the move's length,
# not a tuned constant: finer grids change the pick by at most 1 / SHRINK_STEPS).
SHRINK_STEPS = 16
# When the safe objective's off-support check runs (`off_support_trigger`): "heldout"
# as "range", and on every pool when the guarded decision did better on the sweep's own
# pool states held out; "range" on the support verdict or any covariate outside the
# sweep's range; "verdict" on the held-out-calibrated support verdict alone; "always"
# on every pool.
OFF_SUPPORT_TRIGGERS = ("heldout", "range", "verdict", "always")
# What the safe objective minimises inside its region (`safe_score`): "mean_inside"
# minimises the posterior mean where the off-support check does not run and the bound
# where it does.
SAFE_SCORES = ("bound", "mean", "mean_inside")
# What the off-support check compares a pick with (`safe_baseline`): "capped": uniform
# with no domain repeated for more epochs than the sweep's runs repeated it
# (`capped_uniform`), the same as uniform where uniform stays inside them; or "uniform".
SAFE_BASELINES = ("capped", "uniform")
# What the safe objective does with a pick whose posterior mean loss is above that of
# the off-support check's baseline (`mean_guard`): "baseline" takes that baseline
# instead (uniform kept inside the sweep's epochs, by default); "uniform" compares with,
# and takes, uniform itself; "none" keeps it.
MEAN_GUARDS = ("baseline", "uniform", "none")
# Which candidate the off-support check's fallback takes (`fallback_score`): "bound" the
# one whose paired difference to the baseline has the lowest upper bound; "mean" the one
# with the lowest posterior mean loss among those whose upper bound is at most 0 (the
# baseline among them).
FALLBACK_SCORES = ("bound", "mean")
# Whether the pick is averaged with the surface's companion model's own pick
# (`decision_average`): "companion" where the surface was fitted with one
# (surface.companion); "checked" the same where the mean also passes the safe
# objective's off-support check and mean guard; "guarded" where it passes the mean
# guard alone; "held" where it passes the mean guard and the safe objective kept the
# surface's own pick (neither its check nor its guard replaced it); "none" never.
DECISION_AVERAGES = ("guarded", "companion", "checked", "held", "none")
# recommend's settings of the decision rule and the values each takes (first: default).
SAFE_SETTINGS = {"off_support": OFF_SUPPORT, "off_support_trigger": OFF_SUPPORT_TRIGGERS,
                 "safe_score": SAFE_SCORES, "safe_baseline": SAFE_BASELINES,
                 "mean_guard": MEAN_GUARDS, "fallback_score": FALLBACK_SCORES,
                 "decision_average": DECISION_AVERAGES}


def check_safe_setting(name: str, value: str) -> str:
  """`value` if it is one SAFE_SETTINGS[name] knows, else a ValueError naming both."""
  known = SAFE_SETTINGS[name]
  if value not in known:
    raise ValueError(f"{name}: unknown {value!r}; known: {list(known)}")
  return value

# surface -> {use: its sampler function}. A surface may build a fresh closure or
# partial in each sampler() call; reusing the first one keeps jit's cache warm across
# calls (the function depends on the surface only; everything else travels in params).
_SAMPLER_FNS: "weakref.WeakKeyDictionary[Any, dict[str, Any]]" = (
    weakref.WeakKeyDictionary())


def surface_sampler(surface: Any, tokens_D: np.ndarray | None = None,
                    budget: float | None = None, use: str = "decide"
                    ) -> tuple[Any, Any]:
  """(fn, params) of the surface, for the pool's token counts and the training budget
  when the surface models repetition (its sampler takes `tokens` and `budget`): with
  use "decide", its `optimiser_sampler` where it has one (the draws it decides on);
  with use "report", its `report_sampler` where it has one (the draws a
  recommendation's reported figures come from), else the decisions' draws; else its
  `sampler`."""
  if use not in ("decide", "report"):
    raise ValueError(f"use: unknown {use!r}; known: ['decide', 'report']")
  sampler = getattr(surface, "optimiser_sampler", None) or surface.sampler
  if use == "report":
    sampler = getattr(surface, "report_sampler", None) or sampler
  kwargs = {}
  try:
    sig = inspect.signature(sampler).parameters
  except (TypeError, ValueError):
    sig = {}
  if tokens_D is not None and "tokens" in sig:
    kwargs["tokens"] = tokens_D
  if budget is not None and "budget" in sig:
    kwargs["budget"] = float(budget)
  fn, params = sampler(**kwargs)
  try:
    fn = _SAMPLER_FNS.setdefault(surface, {}).setdefault(use, fn)
  except TypeError:  # not weak-referenceable
    pass
  return fn, params


# ---------------------------------------------------------------- surface adapters


def default_covariates(surface: Any) -> np.ndarray:
  """The surface's default covariates (the sweep's reference pool)."""
  if not surface.features:
    return np.zeros(0, np.float64)
  for name in ("x_default", "x_ref", "x_mean", "default_x"):
    v = getattr(surface, name, None)
    if v is not None:
      v = v() if callable(v) else v
      if isinstance(v, Mapping):
        return covariate_vector(surface, v)
      return np.asarray(v, np.float64).reshape(len(surface.features))
  raise ValueError("covariates=None but the surface exposes no default covariates; pass "
                   f"covariates for its features {list(surface.features)}")


def covariate_vector(surface: Any, covariates: Any) -> np.ndarray:
  """Maps {feature: value} (names with or without the `x_` prefix) or a length-F vector
  onto the surface's feature order; a clear error names the missing features."""
  feats = list(surface.features)
  if covariates is None:
    return default_covariates(surface)
  if isinstance(covariates, Mapping):
    out, missing = [], []
    for f in feats:
      bare = f[2:] if f.startswith("x_") else f
      for k in (f, "x_" + bare, bare):
        if k in covariates:
          out.append(float(covariates[k]))
          break
      else:
        missing.append(f)
    if missing:
      raise ValueError(f"covariates are missing feature(s) the surface uses: {missing}")
    return np.asarray(out, np.float64)
  arr = np.asarray(covariates, np.float64).reshape(-1)
  if arr.shape[0] != len(feats):
    raise ValueError(f"covariates have {arr.shape[0]} values; the surface uses "
                     f"{len(feats)} features {feats}")
  return arr


def default_reference(surface: Any) -> np.ndarray:
  """The sweep's mean mixture when the surface knows it, else the uniform mixture."""
  dn = len(surface.domains)
  for name in ("w_ref", "w_mean", "reference", "reference_mixture", "w_default"):
    v = getattr(surface, name, None)
    if v is not None:
      v = v() if callable(v) else v
      if isinstance(v, Mapping):
        return reference_vector(surface.domains, v)
      v = np.asarray(v, np.float64).reshape(-1)
      if v.shape == (dn,) and abs(v.sum() - 1) < 1e-4 and np.all(v >= 0):
        return v / v.sum()
  log.info("surface exposes no sweep mean mixture; reference = uniform")
  return np.full(dn, 1.0 / dn)


def reference_vector(domains: Sequence[str], ref: Any) -> np.ndarray:
  if isinstance(ref, Mapping):
    unknown = sorted(set(ref) - set(domains))
    if unknown:
      raise ValueError(f"reference names unknown domain(s) {unknown}; known: {list(domains)}")
    v = np.asarray([float(ref.get(d, 0.0)) for d in domains], np.float64)
  else:
    v = np.asarray(ref, np.float64).reshape(-1)
    if v.shape != (len(domains),):
      raise ValueError(f"reference has {v.shape[0]} weights; expected {len(domains)}")
  if not np.all(np.isfinite(v)):
    bad = [d for d, x in zip(domains, v) if not np.isfinite(x)]
    raise ValueError(f"reference: non-finite weight for domain(s) {bad}")
  if np.any(v < 0) or abs(v.sum() - 1) > 1e-6:
    raise ValueError(f"reference mixture must be >= 0 and sum to 1 (sum={v.sum():.6g})")
  return v / v.sum()


def _applied_decision_scale(surfaces: Sequence[Any], use: str = "applied") -> float:
  """The factor on the spread of the paired difference to uniform: the largest scale a
  surface's fit calibrated for that use (`info["decision_calibration"]`): "applied"
  for the safe check (surface.decision_calibration = "conformal"), "reported" for the
  reported gain over uniform ("conformal" or "report"; fits saved before "report"
  existed carry only "applied"); 1 when none did."""
  scales = []
  for s in surfaces:
    d = (getattr(s, "info", None) or {}).get("decision_calibration") or {}
    if d.get(use, d.get("applied")) and d.get("scale"):
      scales.append(float(d["scale"]))
  return max(scales, default=1.0)


def _off_support_reasons(supports: Mapping[str, Mapping[str, Any]],
                         trigger: str,
                         guards: Mapping[str, Mapping[str, Any]] | None = None
                         ) -> list[str]:
  """Why the safe objective's uniform check runs, one line per reason (empty: it does
  not): the support verdict, (triggers "range" and "heldout") covariates outside the
  sweep's range, and (trigger "heldout") the surface's held-out evidence for the guard
  (`guards`: each outcome's `heldout_guard` fit info); trigger "always" gives its own
  reason first, and the others still name what else holds."""
  out = (["off_support_trigger 'always': the check runs on every pool"]
         if trigger == "always" else [])
  for outcome, g in (guards or {}).items():
    if trigger == "heldout" and g and g.get("guard"):
      se = (f", difference +- {g['diff_se']:.2g}" if g.get("diff_se") is not None
            else "")
      out.append(f"y_{outcome}: on {g['cells']} held-out pool states of the sweep the "
                 f"guarded pick did better (mean loss {g['loss_guarded']:.4g} vs "
                 f"{g['loss_unguarded']:.4g}{se})")
  for outcome, r in supports.items():
    if not r.get("inside", True):
      beyond = r.get("beyond") or []
      what = (", ".join(beyond) + " beyond the sweep's held-out limits" if beyond
              else "outside the sweep's support")
      out.append(f"y_{outcome}: {what}")
    ranged = list(r.get("outside_range") or []) if trigger != "verdict" else []
    if ranged:
      more = f" and {len(ranged) - 3} more" if len(ranged) > 3 else ""
      out.append(f"y_{outcome}: {len(ranged)} covariate(s) outside the sweep's range "
                 f"({', '.join(ranged[:3])}{more})")
  return out


def _support_report(surface: Any, x_F: np.ndarray, names: list[str]) -> dict[str, Any]:
  """The surface's support report for x, with `inside` set; warns when outside."""
  fn = getattr(surface, "support", None)
  if fn is None or len(names) == 0:
    return {"inside": True}
  try:
    rep = fn(x_F)
  except TypeError:
    rep = fn(dict(zip(names, x_F.tolist())))
  rep = dict(rep) if isinstance(rep, Mapping) else {"value": rep}
  if "inside" in rep:
    outside = not bool(rep["inside"])
  else:
    o = rep.get("outside", False)
    outside = bool(o) if not isinstance(o, (int, float)) else o > 0
  for k in ("distance", "max_distance_sd", "max_excess", "n_outside"):
    v = rep.get(k)
    if isinstance(v, (int, float)) and v > 0:
      outside = True
  rep["inside"] = not outside
  if outside:
    short = {k: v for k, v in rep.items() if not isinstance(v, Mapping)}
    rep["warning"] = ("the pool's covariates lie outside the sweep's support; the "
                      "surface extrapolates")
    key = (id(surface), tuple(np.round(np.asarray(x_F, np.float64), 9).tolist()))
    if key not in _WARNED_SUPPORT:  # once per surface and pool, however many searches
      _WARNED_SUPPORT.add(key)
      log.warning("%s: %s", rep["warning"], short)
  return rep


_WARNED_SUPPORT: set[tuple[int, tuple[float, ...]]] = set()


# ---------------------------------------------------------------- recommend


def _safe_region(surfaces: Sequence[Any], domains: Sequence[str],
                 constraints: cons.Constraints, ref: np.ndarray
                 ) -> tuple[cons.Constraints, cons.FeasibleSet, np.ndarray]:
  """The `safe` objective's constraints (and their feasible set) and anchors: each
  domain's weight capped at the largest the sweep tried (never below the reference's,
  never above the user's cap), and the sweep's best-known mixtures and uniform (scored
  beside the search). Surfaces that do not record their sweep's mixtures leave the
  constraints as they are, with no anchors."""
  st = getattr(surfaces[0], "support_stats", None) or {}
  if "w_max" not in st:
    return constraints, constraints.resolve(domains, ref), np.zeros((0, len(domains)))
  w_max = np.maximum(np.asarray(st["w_max"], np.float64), ref)
  user = constraints.max_weight
  user_d = np.asarray([float(user.get(d, 1.0)) if isinstance(user, Mapping) else float(user)
                       for d in domains])
  cap = np.minimum(user_d, w_max)
  pinned = constraints.pinned or {}
  cap = np.array([max(c, float(pinned.get(d, 0.0))) for c, d in zip(cap, domains)])
  capped = dataclasses.replace(constraints,
                               max_weight={d: float(c) for d, c in zip(domains, cap)})
  try:
    fs = capped.resolve(domains, ref)
  except ValueError as e:  # the cap conflicts with the user's constraints: keep theirs
    log.info("safe objective: the sweep's weight range conflicts with the constraints "
             "(%s); using the constraints alone", e)
    capped, fs = constraints, constraints.resolve(domains, ref)
  best = np.asarray(st.get("best_w", np.zeros((0, len(domains)))), np.float64)
  uniform = np.full((1, len(domains)), 1.0 / len(domains))
  return capped, fs, np.concatenate([best.reshape(-1, len(domains)), uniform])


def shrink_segment(w_D: np.ndarray, steps: int,
                   start_D: np.ndarray | None = None) -> np.ndarray:
  """The points k / steps of the way from `start_D` (default uniform) to w_D,
  k = 1 .. steps - 1 ((steps - 1) x D)."""
  w_D = np.asarray(w_D, np.float64)
  start_D = (np.full_like(w_D, 1.0 / len(w_D)) if start_D is None
             else np.asarray(start_D, np.float64))
  frac_K = np.arange(1, steps)[:, None] / steps
  return (1.0 - frac_K) * start_D + frac_K * w_D


def capped_uniform(epochs_max_D: np.ndarray, tokens_D: np.ndarray,
                   budget: float) -> np.ndarray:
  """Uniform, with no domain trained for more passes over its unique tokens than
  `epochs_max_D` (the sweep's most): domain d's weight is at most
  epochs_max_d * tokens_d / budget, and the weight a cap removes is shared evenly by
  the domains under their caps (water-filling). Where the caps sum to less than one, no
  mixture stays inside them all, and the caps scaled to sum to one (each domain past
  the sweep's most by the same factor) are returned. ValueError on caps that are not
  finite and non-negative, or all zero."""
  cap_D = (np.asarray(epochs_max_D, np.float64) * np.asarray(tokens_D, np.float64)
           / float(budget))
  if not np.all(np.isfinite(cap_D)) or np.any(cap_D < 0) or cap_D.sum() <= 0:
    raise ValueError(f"capped_uniform: caps must be finite, >= 0 and not all 0, got "
                     f"{cap_D.tolist()}")
  if cap_D.sum() <= 1.0:
    return cap_D / cap_D.sum()
  c_sorted, n = np.sort(cap_D), len(cap_D)
  level = 1.0 / n
  for k in range(n):  # the k smallest caps bind; the rest share what is left evenly
    level = (1.0 - c_sorted[:k].sum()) / (n - k)
    if level <= c_sorted[k]:
      break
  return np.minimum(cap_D, level)


def _check_baseline(surface: Any, safe_baseline: str, tokens_D: np.ndarray | None,
                    budget: float | None) -> tuple[np.ndarray | None, str]:
  """The capped-uniform baseline of the off-support check and why, or (None, reason)
  where it is uniform: the setting is "uniform", or the surface does not record the
  sweep's epochs, or the pool's tokens and budget are not given, or uniform already
  stays inside the sweep's epochs."""
  if safe_baseline == "uniform":
    return None, "uniform"
  st = getattr(surface, "support_stats", None) or {}
  if "epochs_max" not in st or tokens_D is None or not budget:
    return None, ("uniform: the surface does not record its sweep's epochs, or the "
                  "pool's tokens and budget are not given")
  w_D = capped_uniform(np.asarray(st["epochs_max"], np.float64), tokens_D, float(budget))
  if np.allclose(w_D, 1.0 / len(w_D), atol=1e-9):
    return None, "uniform: uniform stays inside the sweep's epochs"
  return w_D, "capped uniform: uniform repeats a domain past the sweep's most epochs"


def best_known_mixture(surface: Any) -> np.ndarray | None:
  """The sweep's best-known mixture (the mixture whose runs, averaged over seed
  replicates, did best against their pool state's mean: `support_stats["best_w"][0]`),
  or None when the surface does not record it."""
  st = getattr(surface, "support_stats", None) or {}
  best = st.get("best_w") if isinstance(st, Mapping) else None
  if best is None or len(best) == 0:
    return None
  w = np.asarray(best[0], np.float64).reshape(-1)
  if w.shape != (len(surface.domains),) or not np.all(np.isfinite(w)) or w.sum() <= 0:
    return None
  return np.maximum(w, 0.0) / np.maximum(w, 0.0).sum()


def _average_with_companion(surfaces: Sequence[Any], setting: str,
                            domains: Sequence[str], w_pick_D: np.ndarray,
                            x_F: np.ndarray, tokens_D: np.ndarray | None,
                            budget: float | None, ref_D: np.ndarray,
                            seed: int) -> dict[str, Any]:
  """What `decision_average` does for this pick: {"used": False, "reason": ...}, or
  {"used": True, "mean": the mean of the pick and the companion's pick (not yet made
  feasible), and both picks by domain}."""
  have = [s for s in surfaces if getattr(s, "companion", None) is not None]
  if setting == "none":
    return {"used": False, "reason": "decision_average = 'none'"}
  if not have:
    return {"used": False, "reason": "the surface has no companion"}
  if len(surfaces) > 1:
    log.warning("decision_average: %d of %d surfaces carry a companion model; a "
                "recommendation over several outcomes is not averaged with them",
                len(have), len(surfaces))
    return {"used": False, "reason": "several surfaces (multi-objective)"}
  prior_D = ref_D if tokens_D is None else tokens_D
  model = surfaces[0].companion
  pool = {}
  if getattr(model, "reads_epochs", False):
    # Trees that read epochs answer for the pool's tokens and budget; what is not
    # given is the sweep's median pool's.
    model = companion.at_pool(model, tokens_D, budget)
    pool = {"companion_pool": {
        (True, True): "the pool's tokens and budget",
        (True, False): "the pool's tokens and the sweep's median budget",
        (False, True): "the sweep's median tokens and the pool's budget",
        (False, False): "the sweep's median pool"}[(tokens_D is not None,
                                                      budget is not None)]}
  w_c = companion.companion_pick(model, x_F, prior_D, seed)
  return {"used": True, "mean": companion.averaged(w_pick_D, w_c), "setting": setting,
          **pool, "prior": "token shares" if tokens_D is not None else "reference",
          "surface_pick": {d: float(v) for d, v in zip(domains, w_pick_D)},
          "companion_pick": {d: float(v) for d, v in zip(domains, w_c)}}


def _check_int(name: str, value: Any, least: int) -> int:
  """An integer argument (an integral float passes), at least `least`."""
  integral = isinstance(value, numbers.Integral) or (
      isinstance(value, numbers.Real) and np.isfinite(value) and float(value).is_integer())
  if isinstance(value, bool) or not integral:
    raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
  if int(value) < least:
    raise ValueError(f"{name} must be >= {least}, got {value!r}")
  return int(value)


def _check_arguments(ci: Any, seed: Any, n_candidates: Any, n_starts: Any,
                     n_steps: Any) -> tuple[float, int, int, int, int]:
  """recommend's numeric arguments, each checked with its name."""
  n_candidates = _check_int("n_candidates", n_candidates, 1)
  n_starts = _check_int("n_starts", n_starts, 1)
  n_steps = _check_int("n_steps", n_steps, 0)
  seed = _check_int("seed", seed, 0)
  try:
    ci_f = float(ci)
  except (TypeError, ValueError):
    raise ValueError(f"ci must be a number in (0, 1), got {ci!r}") from None
  if not 0 < ci_f < 1:  # NaN fails too
    raise ValueError(f"ci must be in (0, 1), got {ci!r}")
  return ci_f, seed, n_candidates, n_starts, n_steps


def _check_pool_size(constraints: cons.Constraints) -> None:
  """The pool's token counts and the budget, when given, are finite and positive."""
  budget = constraints.budget_tokens
  if budget is not None and not (np.isfinite(float(budget)) and float(budget) > 0):
    raise ValueError(f"constraints.budget_tokens must be > 0, got {budget!r}")
  for d, v in (constraints.tokens or {}).items():
    if not (np.isfinite(float(v)) and float(v) > 0):
      raise ValueError(f"constraints.tokens[{d!r}] must be > 0, got {v!r}")


def _summary(u_S: np.ndarray, ci: float) -> Interval:
  q = np.quantile(u_S, [0.5 * (1 - ci), 0.5 * (1 + ci)])
  return Interval(float(u_S.mean()), float(q[0]), float(q[1]))


def _improvement(z_base_S: np.ndarray, z_w_S: np.ndarray, ci: float,
                 scale: float = 1.0) -> Improvement:
  """The paired difference's summary; its draws' spread around their mean times
  `scale` (a surface's decision calibration)."""
  d = decisions.spread_scaled(z_base_S - z_w_S, scale)  # loss units: positive = better
  q = np.quantile(d, [0.5 * (1 - ci), 0.5 * (1 + ci)])
  return Improvement(float(d.mean()), float(q[0]), float(q[1]), float((d > 0).mean()))


def _reported_draws(surfaces: Sequence[Any], tokens_D: np.ndarray | None,
                    budget: float | None, xs, coefs, w_RxD: np.ndarray,
                    decided_SxR: np.ndarray) -> np.ndarray:
  """The draws of the rows w_RxD the Recommendation reports from: the decisions' own
  (`decided_SxR`, the same rows) unless a surface reports apart from how it decides
  (`reports_apart`: surface.covariate_extrapolation = "clip_decisions", which reads
  the covariates apart, or surface.conformal_units = "pools_reported", which scales
  the spread apart); then the rows are drawn again from each surface's
  `report_sampler`, so the reported predictions and gains carry the intervals
  `predict` and `cate` give at the pool's covariates."""
  if not any(getattr(s, "reports_apart", False) for s in surfaces):
    return decided_SxR
  fns, params = zip(*(surface_sampler(s, tokens_D, budget, use="report")
                      for s in surfaces))
  return np.asarray(search.draws(tuple(fns), tuple(params), xs, coefs,
                                 jnp.asarray(w_RxD, jnp.float32)), np.float64)


def recommend(surface: Any, covariates: Any = None, reference: Any = None,
              constraints: cons.Constraints | Mapping[str, Any] | None = None,
              objective: str = "safe", method: str = "S", *, ci: float = 0.9,
              outcome_weights: Sequence[float] | Mapping[str, float] | None = None,
              seed: int = 0, n_candidates: int = 16_384, n_starts: int = 64,
              n_steps: int = 300, off_support: str = "shrink",
              safe_score: str = "bound",
              off_support_trigger: str = "heldout",
              safe_baseline: str = "capped",
              mean_guard: str = "baseline",
              fallback_score: str = "bound",
              decision_average: str = "guarded") -> Recommendation:
  """The best feasible mixture for a pool under the posterior of the fitted surface.

  surface: a Surface, or a sequence of Surfaces over the same domains (multi-objective:
    minimise sum_k outcome_weights[k] * loss_k, loss = -y for maximised outcomes).
  covariates: {feature: value} or a vector in the surface's feature order; None = the
    sweep's reference pool. A warning is logged when outside the sweep's support.
  reference: {domain: weight} or a vector; None = the sweep's mean mixture.
  constraints: Constraints (or its dict); None = only the simplex.
  objective: "safe" (default), "mean", "bound" ("lcb": the risk-averse end of the `ci`
    credible interval: the upper one for a loss) or "pi" (probability of improving on
    the reference). "safe" searches on the bound inside the mixtures the sweep tried
    (each domain's weight at most the largest the sweep gave it, or the reference's if
    larger), scores the sweep's best-known mixtures, the reference and uniform beside
    the search's candidates, and picks the one with the lowest bound. When the pool's
    covariates lie outside the sweep's support, that pick must also have its paired
    difference to the check's baseline <= 0 at the upper (1+ci)/2 bound: uniform, kept
    inside the epochs the sweep ran (`safe_baseline`). Otherwise the candidate whose
    difference has the lowest upper bound is taken, by default among them the points
    part of the way from the baseline to the pick (`off_support`; this check also runs
    when any covariate is outside the sweep's range). The baseline's own bound is 0, so
    off the support the pick moves away from it only with that confidence: when the
    intervals hold, it is not worse than the baseline. Off the sweep's covariate support
    the surface's intervals widen, and the pick stays closer to it. When the surface's fit
    calibrated that paired difference on its held-out pool states
    (surface.decision_calibration = "conformal"), its spread around its mean is scaled
    by the fitted factor, in this check and in the reported gain over uniform; with
    "report", in the reported gain only (the pick is "none"'s).
  off_support: what "safe" does off the support. "shrink" (default): the check above,
    where the fallback's candidates also include the points on the segment from
    uniform to the failed pick (`SHRINK_STEPS`), so a shorter move toward the pick is
    taken where it, unlike the whole move, is better than uniform at the bound. Where
    the gain flattens along the move while its spread grows with the move's length,
    the shorter move keeps most of the gain for less risk.
    "uniform": the check above without the segment (the fallback is usually uniform).
    "anchors": the pick is the candidate whose largest upper (1+ci)/2 bound of its
    paired difference to any anchor (the sweep's best-known mixtures and uniform) is
    lowest, so it may be worse than uniform by at most what uniform may be worse than
    the best anchor.
  off_support_trigger: when "safe" counts a pool as off the support. "heldout"
    (default): as "range", and on every pool when the surface's fit found that the
    guarded decision did better than the unguarded one on the sweep's own pool states
    held out (its info's `heldout_guard`; surfaces without it, or sweeps of one pool
    state, behave as "range"). "range": the support verdict or any covariate outside
    the sweep's range. "verdict": the support verdict alone (calibrated on the sweep's
    own pools held out, so it flags about 4/(states + 1) of pools drawn like the
    sweep's; a covariate outside the range counts only when it lies farther beyond it
    than any of the sweep's own states held out did, or when the verdict's other
    limits are passed). "always": on every pool, inside the support too, so a pick is
    taken only where it beats uniform at that bound (with the default `off_support`,
    a failed pick is shrunk toward uniform rather than dropped).
  safe_score: what "safe" minimises inside its region: "bound" (default: the upper end
    of the interval, as above), "mean" (the posterior mean loss, the pick with the
    lowest expected loss under the posterior) or "mean_inside" (the mean where the
    off-support check does not run, `off_support_trigger`; the bound where it does).
    The cap, the anchors and the off-support check are the same for all three;
    `diagnostics["safe_check"]["score"]` says which score the pick minimised.
  safe_baseline: what the off-support check compares the pick with. "capped"
    (default): uniform with no domain repeated for more epochs than the sweep's runs
    repeated it (`capped_uniform`, for the pool's tokens and budget). A baseline that
    repeats a scarce domain past anything the sweep ran is itself an extrapolation, and
    the check's paired difference then carries the baseline's uncertainty, not the
    pick's. The capped baseline is also a candidate, and the shrink segment runs from
    it. Where uniform stays inside the sweep's epochs, or the surface or the
    constraints do not say them, the baseline is uniform. "uniform": always uniform.
    The reported gain over uniform stays over uniform.
  mean_guard: "baseline" (default): when the safe objective's pick, after the
    off-support check, has a posterior mean loss above that of the check's baseline
    (`safe_baseline`: uniform kept inside the sweep's epochs; uniform as the region
    above and the constraints allow it where uniform stays inside them), that baseline
    is taken instead. The bound prefers mixtures whose loss is known tightly, so it may
    settle on a mixture the posterior itself expects to do worse than the baseline.
    Where uniform repeats a domain past the sweep's epochs, the guard does not rest on
    the surface's extrapolation of that repetition. "uniform": the same against
    uniform itself, always. "none" keeps such a pick.
  fallback_score: which candidate the off-support check takes when the pick fails it
    (`off_support` "shrink" or "uniform"). "bound" (default): the one whose paired
    difference to the baseline has the lowest upper bound, the candidate the posterior
    is surest beats the baseline. "mean": among the candidates whose upper bound is at
    most 0 (the baseline, whose bound is 0, always among them), the one with the lowest
    posterior mean loss. Both keep the check's promise; "mean" trades a tighter
    lower bound on the gain for a larger expected gain, and on the shrink segment it
    usually moves farther toward the failed pick.
  decision_average: "companion": where the surface carries a companion model
    (fitted with surface.companion = "trees"), the recommendation is the mean of the
    pick above and the companion's own pick (RegMix's top-k around the pool's token
    shares, or the reference when tokens are not given: `companion.py`), made
    feasible; the surface's posterior scores and reports it like any pick. The safe
    objective's check and guard apply to the surface's pick, not to the mean, so the
    mean carries no promise against uniform. Surfaces without a companion, and
    several surfaces (multi-objective; a warning is logged when any has one), are not
    averaged. "checked": the same, but under the safe objective the mean is taken only
    where it passes the two tests the surface's own pick passed: where the off-support
    check ran, its paired difference to the check's baseline must be <= 0 at the upper
    bound; and (unless mean_guard = "none") its posterior mean loss must not be above
    that of the mean guard's reference. Otherwise the surface's pick is kept.
    "guarded" (default): the second test alone (the mean guard), also off the
    support (judged against "none" on fresh zoo world seeds: experiments/surface_zoo,
    "World seeds 81 and 82"). "held": the mean guard's test, and only where the
    safe objective kept the surface's own pick: where its off-support check or its
    mean guard replaced the pick by a fallback, the fallback stands (the surface was
    not sure of a move, and the companion gives no interval that would make it
    sure). "none": never.
  The Recommendation reports the pick's improvement over the reference, over uniform
  and, when the surface records its sweep, over the sweep's best-known mixture
  (`best_known`), each from joint posterior draws: the draws it decided on, or where
  the surface decides on clipped covariates but reads them as they are
  (surface.covariate_extrapolation = "clip_decisions"), the draws it reads them by.
  method: "S" (search: candidates + multi-start mirror descent + the A step) or "A"
    (step from the reference along the marginal returns, with a line search).
  n_candidates (>= 1), n_starts (>= 1), n_steps (>= 0): the search's size; seed >= 0.
  Bad arguments raise ValueError naming the argument.
  """
  t0 = time.time()
  ci, seed, n_candidates, n_starts, n_steps = _check_arguments(
      ci, seed, n_candidates, n_starts, n_steps)
  surfaces = list(surface) if isinstance(surface, (list, tuple)) else [surface]
  domains = list(surfaces[0].domains)
  for s in surfaces[1:]:
    if list(s.domains) != domains:
      raise ValueError(f"surfaces disagree on domains: {domains} vs {list(s.domains)}")
  safe = str(objective).lower() == "safe"
  check_safe_setting("safe_score", safe_score)
  check_safe_setting("off_support", off_support)
  check_safe_setting("off_support_trigger", off_support_trigger)
  check_safe_setting("safe_baseline", safe_baseline)
  check_safe_setting("mean_guard", mean_guard)
  check_safe_setting("fallback_score", fallback_score)
  check_safe_setting("decision_average", decision_average)
  if not safe:  # the safe objective's score is set once the check's reasons are known
    objective = search.canonical_objective(objective)
  method = method.upper()
  if method not in METHODS:
    raise ValueError(f"unknown method {method!r}; use 'S' (search) or 'A' (analytic step)")
  if outcome_weights is None:
    ow = [1.0] * len(surfaces)
  elif isinstance(outcome_weights, Mapping):
    names = [s.outcome for s in surfaces]
    unknown = sorted(set(outcome_weights) - set(names))
    if unknown:
      raise ValueError(f"outcome_weights name unknown outcome(s) {unknown}; have {names}")
    ow = [float(outcome_weights.get(n, 0.0)) for n in names]
  else:
    ow = [float(v) for v in outcome_weights]
  if len(ow) != len(surfaces):
    raise ValueError(f"{len(ow)} outcome weights for {len(surfaces)} surfaces")
  if not all(np.isfinite(ow)):
    raise ValueError(f"outcome_weights must be finite, got {ow}")
  single = len(surfaces) == 1
  signs = [-1.0 if s.maximize else 1.0 for s in surfaces]
  s_out = signs[0] if single else 1.0  # loss -> reported units
  coefs = jnp.asarray([w * s for w, s in zip(ow, signs)], jnp.float32)

  # Covariates: one dict of names -> values covering all surfaces.
  xs, cov_report, supports = [], {}, {}
  for s in surfaces:
    x = covariate_vector(s, covariates)
    if not np.all(np.isfinite(x)):
      bad = [f for f, v in zip(s.features, x) if not np.isfinite(v)]
      raise ValueError(f"covariates: non-finite value for feature(s) {bad}")
    xs.append(jnp.asarray(x, jnp.float32))
    cov_report.update(dict(zip(list(s.features), x.tolist())))
    supports[s.outcome] = _support_report(s, x, list(s.features))
  support = supports[surfaces[0].outcome] if single else supports
  ref = default_reference(surfaces[0]) if reference is None else reference_vector(
      domains, reference)
  if constraints is None:
    constraints = cons.Constraints()
  elif isinstance(constraints, Mapping):
    constraints = cons.Constraints.from_dict(constraints)
  _check_pool_size(constraints)
  anchors = np.zeros((0, len(domains)))
  if safe:
    constraints, fs, anchors = _safe_region(surfaces, domains, constraints, ref)
  else:
    fs = constraints.resolve(domains, ref)

  tokens_D = None
  if constraints.tokens is not None:
    missing = [d for d in domains if d not in constraints.tokens]
    if missing:
      raise ValueError(f"constraints.tokens has no count for domain(s) {missing}")
    tokens_D = np.asarray([float(constraints.tokens[d]) for d in domains])
  budget = constraints.budget_tokens
  fns, params = [], []
  for s in surfaces:
    fn, p = surface_sampler(s, tokens_D, budget)
    fns.append(fn)
    params.append(p)
  base_D, base_reason = (_check_baseline(surfaces[0], safe_baseline, tokens_D, budget)
                         if safe else (None, "uniform"))
  if base_D is not None:
    base_D = fs.make_feasible(base_D)[0]
  reasons: list[str] = []
  if safe:
    # By default (trigger "heldout") the check fires on any sign of extrapolation (the
    # calibrated verdict, or any covariate outside the sweep's range, where the
    # surface's covariate terms extrapolate), and on every pool when the sweep's own
    # pool states, held out, did better with it. A needless check costs little (the
    # pick must beat the baseline with 95% confidence); a missed one can cost a bad
    # mixture.
    reasons = _off_support_reasons(
        supports, off_support_trigger,
        {s.outcome: (getattr(s, "info", None) or {}).get("heldout_guard")
         for s in surfaces})
    objective = ("mean" if safe_score == "mean" or (safe_score == "mean_inside"
                                                     and not reasons) else "bound")
  prob = search.Problem(tuple(fns), objective, float(ci), fs.kind, fs.has_trust)
  f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
  ref_j, lo_j, hi_j, c_j = f32(fs.ref), f32(fs.lo), f32(fs.hi), f32(fs.centre)
  radius = jnp.float32(fs.radius)
  params, xs = tuple(params), tuple(xs)

  t_search = time.time()
  w_a, l_a, theta = search.search_a(prob, params, xs, coefs, ref_j, lo_j, hi_j, c_j, radius)
  pool_w = [np.asarray(w_a)[np.argsort(np.asarray(l_a))[:4]]]
  if method == "S":
    settings = search.SearchSettings(n_candidates=int(n_candidates), n_starts=int(n_starts),
                                     n_steps=int(n_steps))
    fixed = search.fixed_points(len(domains), fs.ref, fs.centre)
    cand = search.candidate_pool(np.random.default_rng(seed), fs.ref,
                                 max(settings.n_candidates - len(fixed), settings.n_starts),
                                 fixed)
    w_s, _ = search.search_s(prob, settings, params, xs, coefs, jnp.asarray(cand), ref_j,
                             lo_j, hi_j, c_j, radius)
    pool_w.insert(0, np.asarray(w_s))
  n_searched = sum(len(a) for a in pool_w)
  cands = np.concatenate(pool_w + [anchors, fs.ref[None]] + (
      [] if base_D is None else [base_D[None]])).astype(np.float64)
  i_base = None if base_D is None else len(cands) - 1  # the check's baseline's row
  jax.block_until_ready(theta)
  search_seconds = time.time() - t_search

  # Exact feasibility in float64, then exact scoring of the feasible points.
  feasible, infos = [], []
  for w in cands:
    wf, info = fs.make_feasible(w)
    feasible.append(wf)
    infos.append(info)
  w_all = np.stack(feasible)
  # Scored beside the candidates: the reference, uniform, (when the surface records its
  # sweep) the sweep's best-known mixture, for the paired improvements, and the check's
  # baseline when it is not uniform.
  w_known = best_known_mixture(surfaces[0])
  extra = [fs.ref[None], np.full((1, len(domains)), 1 / len(domains))]
  extra += [] if w_known is None else [w_known[None]]
  extra += [] if base_D is None else [base_D[None]]
  dscale = _applied_decision_scale(surfaces)
  rscale = _applied_decision_scale(surfaces, "reported")

  def score(w_all: np.ndarray):
    """Joint draws of the candidates and the extras, the candidates' losses and the
    upper bounds of their paired differences to the check's baseline (the draws are a
    function of the surface's parameters, so rows scored in separate calls are joint
    too)."""
    z = np.asarray(search.draws(prob.fns, params, xs, coefs, jnp.asarray(
        np.concatenate([w_all] + extra), jnp.float32)), np.float64)
    n = len(w_all)
    z_w, z_ref, z_uni = z[:, :n], z[:, n], z[:, n + 1]
    z_known = None if w_known is None else z[:, n + 2]
    z_base = z_uni if base_D is None else z[:, -1]
    loss = np.asarray(search.loss_from_draws(prob, jnp.asarray(z_w), jnp.asarray(z_ref),
                                             smooth=False), np.float64)
    ub = decisions.scaled_upper(z_w - z_base[:, None], 0.5 * (1 + ci), dscale)
    return z, z_w, z_ref, z_uni, z_known, z_base, loss, ub

  z, z_w, z_ref, z_uni, z_known, z_base, loss, contrast_ub = score(w_all)

  def uniform_ub(i: int) -> float:
    """Upper bound of candidate i's paired difference to uniform, in reported units."""
    if base_D is None:
      return s_out * float(contrast_ub[i])
    return s_out * float(decisions.scaled_upper((z_w[:, i] - z_uni)[:, None],
                                                0.5 * (1 + ci), dscale)[0])

  safe_check = None
  i_guard, guard_to = None, None  # the mean guard's reference row (safe objective)
  if objective == "pi":  # most probable improvement, then the lower mean loss
    best = int(np.lexsort((z_w.mean(0), np.round(loss, 9)))[0])
  elif safe:
    # Inside the sweep's covariate support the best-scoring candidate (by the bound, or
    # `safe_score`) is taken (the surface was checked on held-out pools like this
    # one). Off it, the pick must also be no worse than the baseline (by default
    # uniform kept inside the sweep's epochs, `safe_baseline`) at the upper bound of
    # their paired difference (uncertainty about the pool's level, shared by every
    # mixture, cancels); if it is not, the candidate whose difference has the lowest
    # upper bound is taken instead. The baseline is a
    # candidate (bound 0), so off the support the pick is not worse than it unless the
    # interval of that difference is wrong.
    best = int(np.argmin(loss))
    replaced = bool(reasons) and contrast_ub[best] > 0
    safe_check = {"ran": bool(reasons), "reasons": reasons, "replaced": replaced,
                  "fallback": off_support, "score": objective,
                  "fallback_score": fallback_score,
                  "decision_scale": dscale, "report_scale": rscale,
                  "trigger": off_support_trigger,
                  "bound_pick": {d: float(v) for d, v in zip(domains, w_all[best])},
                  "bound_pick_difference_to_uniform_upper_bound": uniform_ub(best),
                  "baseline": base_reason}
    if base_D is not None:
      safe_check.update(
          baseline_weights={d: float(v) for d, v in zip(domains, base_D)},
          bound_pick_difference_to_baseline_upper_bound=s_out * float(contrast_ub[best]))
    if reasons and off_support == "anchors":
      # Minimax against the anchors: each candidate's worst upper bound of its paired
      # difference to an anchor (the baseline's draws, uniform's by default, are the
      # last anchor column).
      z_a = np.concatenate([z_w[:, n_searched:n_searched + len(anchors) - 1],
                            z_base[:, None]], 1) if len(anchors) else z_base[:, None]
      worst = np.max(np.quantile(z_w[:, :, None] - z_a[:, None, :], 0.5 * (1 + ci),
                                 axis=0), axis=1)
      pick = int(np.argmin(np.round(worst, 12)))
      replaced = pick != best
      safe_check.update(replaced=replaced,
                        anchor_difference_upper_bound=s_out * float(worst[pick]))
      if replaced:
        log.info("safe objective: %s; the candidate whose largest %.0f%% upper bound "
                 "of its paired difference to an anchor is lowest (%+.4g) replaces the "
                 "lowest-bound pick", "; ".join(reasons), 100 * 0.5 * (1 + ci),
                 s_out * float(worst[pick]))
      best = pick
    elif replaced:
      n_before = len(w_all)
      if off_support == "shrink":  # the segment's points join the scored candidates
        seg = [fs.make_feasible(w)
               for w in shrink_segment(w_all[best], SHRINK_STEPS, base_D)]
        w_seg = np.stack([wf for wf, _ in seg])
        _, z_seg, _, _, _, _, loss_seg, ub_seg = score(w_seg)
        w_all, infos = np.concatenate([w_all, w_seg]), infos + [i for _, i in seg]
        z_w = np.concatenate([z_w, z_seg], 1)
        loss, contrast_ub = (np.concatenate(a) for a in ((loss, loss_seg),
                                                          (contrast_ub, ub_seg)))
      best = int(np.argmin(np.round(contrast_ub, 12)))
      if fallback_score == "mean":
        # Among the candidates the check lets through (upper bound <= 0: the baseline,
        # bound 0, always), the lowest posterior mean loss; ties to the lower bound.
        ok = np.flatnonzero(np.round(contrast_ub, 12) <= 0)
        if len(ok):
          mean_loss = np.round(z_w[:, ok].mean(0), 12)
          best = int(ok[np.lexsort((contrast_ub[ok], mean_loss))[0]])
      if off_support == "shrink":
        # The fraction of the way from the baseline to the failed pick at which the
        # fallback lies; None when the fallback is another candidate (the baseline
        # included).
        safe_check["shrink_fraction"] = (
            (best - n_before + 1) / SHRINK_STEPS if best >= n_before else None)
      log.info("safe objective: %s; the lowest-bound pick's paired difference to "
               "the baseline (%s) has %.0f%% upper bound %+.4g, not below 0, so the "
               "candidate with the lowest such bound is taken", "; ".join(reasons),
               base_reason, 100 * 0.5 * (1 + ci),
               safe_check.get("bound_pick_difference_to_baseline_upper_bound",
                              safe_check["bound_pick_difference_to_uniform_upper_bound"]))
    # The mean guard, against uniform as the safe region allows it (the sweep's weight
    # caps and the constraints): the last anchor, already scored; scored here only for
    # surfaces that give no anchors. With "baseline", against the check's baseline
    # where that is not uniform (the last of the scored candidates before any shrink
    # segment).
    if len(anchors):
      i_uni = n_searched + len(anchors) - 1
    else:
      u_D, u_info = fs.make_feasible(np.full(len(domains), 1.0 / len(domains)))
      _, z_u, _, _, _, _, loss_u, ub_u = score(u_D[None])
      w_all, infos = np.concatenate([w_all, u_D[None]]), infos + [u_info]
      z_w = np.concatenate([z_w, z_u], 1)
      loss, contrast_ub = np.concatenate([loss, loss_u]), np.concatenate([contrast_ub, ub_u])
      i_uni = len(w_all) - 1
    i_guard, guard_to = i_uni, "uniform"
    if mean_guard == "baseline" and i_base is not None:
      i_guard, guard_to = i_base, "the capped uniform"

    def mean_diff(i: int) -> float:  # the pick's posterior mean less row i's; > 0: worse
      return float(z_w[:, best].mean() - z_w[:, i].mean())
    diff_mean = mean_diff(i_guard)
    guarded = (mean_guard != "none" and diff_mean > 0
               and not np.allclose(w_all[best], w_all[i_guard], atol=1e-9))
    safe_check.update(mean_guard=mean_guard, mean_guard_replaced=guarded,
                      mean_guard_reference=guard_to,
                      pick_mean_difference_to_uniform=s_out * mean_diff(i_uni),
                      pick_mean_difference_to_guard_reference=s_out * diff_mean)
    if guarded:
      log.info("safe objective: the pick's posterior mean loss is %.4g above that of "
               "%s, which is taken instead (mean_guard)", diff_mean, guard_to)
      best = i_guard
    safe_check["took_uniform"] = bool(np.allclose(w_all[best], 1.0 / len(domains),
                                                  atol=1e-6))
    if base_D is not None:
      safe_check["took_baseline"] = bool(np.allclose(w_all[best], base_D, atol=1e-6))
  else:
    best = int(np.argmin(loss))
  averaging = _average_with_companion(surfaces, decision_average, domains, w_all[best],
                                      np.asarray(xs[0], np.float64), tokens_D, budget,
                                      fs.ref, seed)
  if averaging.get("used"):
    w_mean, m_info = fs.make_feasible(averaging.pop("mean"))
    averaging["moved_l1_by_projection"] = float(m_info["moved_l1"])
    _, z_m, _, _, _, _, loss_m, ub_m = score(w_mean[None])
    w_all, infos = np.concatenate([w_all, w_mean[None]]), infos + [m_info]
    z_w, loss = np.concatenate([z_w, z_m], 1), np.concatenate([loss, loss_m])
    contrast_ub = np.concatenate([contrast_ub, ub_m])
    why = None
    if decision_average in ("checked", "guarded", "held") and safe_check is not None:
      # The safe objective's tests, put to the mean as to its own pick ("guarded":
      # the mean guard's alone; "held": that, where the pick was not replaced).
      fell_back = [t for t, k in (("off-support check", "replaced"),
                                  ("mean guard", "mean_guard_replaced"))
                   if safe_check.get(k)]
      if decision_average == "held" and fell_back:
        why = (f"the safe objective's {' and '.join(fell_back)} replaced the surface's "
               "pick, so its fallback stands")
      elif decision_average == "checked" and safe_check["ran"] and contrast_ub[-1] > 0:
        why = ("the off-support check ran and the mean's paired difference to its "
               f"baseline has upper bound {s_out * float(contrast_ub[-1]):+.4g}, not "
               "below 0")
      elif mean_guard != "none" and z_w[:, -1].mean() > z_w[:, i_guard].mean():
        why = (f"its posterior mean loss is above that of {guard_to} (the mean "
               "guard's reference)")
    if why is None:
      best = len(w_all) - 1
    else:
      averaging.update(used=False, reason=f"{decision_average}: " + why)
      log.info("decision average: the surface's pick is kept: %s", why)
  w_best = w_all[best]
  bad = fs.violations(w_best)
  if bad:  # make_feasible guarantees this; keep the check as a tripwire.
    raise AssertionError(f"recommended mixture breaks constraints: {bad}")
  info = infos[best]
  if info["zeroed"]:
    log.info("sampler_min_weight=%g: set %s to 0 and renormalised", fs.m, info["zeroed"])

  # The pick, the reference, uniform and the best-known mixture (the first rows of
  # `extra`), as the Recommendation reports them.
  decided = [z_w[:, best], z_ref, z_uni] + ([] if z_known is None else [z_known])
  z_rep = _reported_draws(surfaces, tokens_D, budget, xs, coefs,
                          np.concatenate([w_best[None]] + extra[:len(decided) - 1]),
                          np.stack(decided, 1))
  z_pick, z_ref, z_uni = z_rep[:, 0], z_rep[:, 1], z_rep[:, 2]
  z_known = None if z_known is None else z_rep[:, 3]
  theta_np = np.asarray(theta, np.float64) * s_out
  return Recommendation(
      domains=tuple(domains),
      weights={d: float(w_best[i]) for i, d in enumerate(domains)},
      predicted=_summary(s_out * z_pick, ci),
      reference={d: float(fs.ref[i]) for i, d in enumerate(domains)},
      reference_predicted=_summary(s_out * z_ref, ci),
      uniform_predicted=_summary(s_out * z_uni, ci),
      improvement_over_reference=_improvement(z_ref, z_pick, ci),
      improvement_over_uniform=_improvement(z_uni, z_pick, ci, rscale),
      best_known=({} if w_known is None
                  else {d: float(v) for d, v in zip(domains, w_known)}),
      improvement_over_best_known=(None if z_known is None
                                   else _improvement(z_known, z_pick, ci)),
      outcome=surfaces[0].outcome if single else "+".join(
          f"{w:g}*{s.outcome}" for w, s in zip(ow, surfaces)),
      maximize=bool(surfaces[0].maximize) if single else False,
      method=method,
      objective="safe" if safe else objective,
      ci=float(ci),
      objective_value=(-float(loss[best]) if objective == "pi" else s_out * float(loss[best])),
      constraints=constraints.to_dict(),
      covariates=cov_report,
      support=support,
      zeroed=tuple(info["zeroed"]),
      theta={d: float(theta_np[i]) for i, d in enumerate(domains)},
      diagnostics={"search_seconds": search_seconds, "total_seconds": time.time() - t0,
                   "n_candidates_final": int(len(w_all)), "projection": info["how"],
                   "moved_l1_by_projection": info["moved_l1"],
                   "outcome_weights": ow, "posterior_draws": int(z.shape[0]),
                   "difference_to_uniform_upper_bound": uniform_ub(best),
                   **({"safe_check": safe_check} if safe_check is not None else {}),
                   "decision_average": averaging,
                   "trust_distance": (fs.distance(w_best) if fs.has_trust else None)},
  )
