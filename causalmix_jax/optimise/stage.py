"""The `optimise` stage: fitted surface + the pool's covariates + the configured
constraints -> workdir/optimise/mixture.json (+ mixture.yaml, metrics.jsonl)."""

from __future__ import annotations

import logging
import pathlib
from typing import Any

import ml_collections
import numpy as np

from causalmix_jax import artifacts
from causalmix_jax.data import covariates as covariates_lib
from causalmix_jax.metrics import MetricsWriter
from causalmix_jax.optimise import constraints as cons
from causalmix_jax.optimise.recommend import default_reference, recommend

log = logging.getLogger(__name__)


def pool_tokens(pool_json: dict[str, Any], path: pathlib.Path) -> dict[str, float]:
  """Unique training tokens per domain from pool.json (`per_domain[d]["tokens"]`)."""
  per = pool_json.get("per_domain")
  if not isinstance(per, dict):
    raise ValueError(f"{path}: no 'per_domain' entry with token counts")
  out = {}
  for d in pool_json.get("domains", list(per)):
    if d not in per or "tokens" not in per[d]:
      raise ValueError(f"{path}: per_domain[{d!r}] has no 'tokens' count")
    out[d] = float(per[d]["tokens"])
  return out


def target_budget_tokens(cfg: ml_collections.ConfigDict) -> float:
  """Tokens the target model trains on: steps x batch x seq_len (x grad accumulation)."""
  o = cfg.target.optim
  return float(o.steps) * float(o.batch_size) * float(cfg.target.model.seq_len) * float(
      o.get("grad_accum", 1) or 1)


def constraints_from_config(oc: ml_collections.ConfigDict, domains: list[str],
                            tokens: dict[str, float] | None,
                            budget: float | None) -> cons.Constraints:
  """cfg.optimise -> Constraints; unknown domains in the per-domain keys are errors."""
  lo_over = cons.parse_domain_values(oc.domain_min, "optimise.domain_min")
  hi_over = cons.parse_domain_values(oc.domain_max, "optimise.domain_max")
  pinned = cons.parse_domain_values(oc.pinned, "optimise.pinned")
  for key, d in (("optimise.domain_min", lo_over), ("optimise.domain_max", hi_over),
                 ("optimise.pinned", pinned)):
    unknown = sorted(set(d) - set(domains))
    if unknown:
      raise ValueError(f"config key {key} names unknown domain(s) {unknown}; "
                       f"known: {domains}")
  lo = {d: lo_over.get(d, float(oc.min_weight)) for d in domains}
  hi = {d: hi_over.get(d, float(oc.max_weight)) for d in domains}
  return cons.Constraints(
      min_weight=lo, max_weight=hi, max_epochs=float(oc.max_epochs),
      tokens=tokens, budget_tokens=budget if tokens is not None else None, pinned=pinned,
      trust_radius=float(oc.trust_radius), trust_kind=str(oc.trust_kind),
      sampler_min_weight=float(oc.sampler_min_weight))


def load_surface(surface_dir: pathlib.Path) -> Any:
  """The fitted surface written by the `fit` stage."""
  from causalmix_jax.surface.surface import load_surface as load  # pylint: disable=g-import-not-at-top
  return load(surface_dir)


def _load_surfaces(cfg: ml_collections.ConfigDict, workdir: pathlib.Path):
  weights = cons.parse_domain_values(cfg.optimise.outcome_weights, "optimise.outcome_weights")
  sdir = workdir / "surface"
  if not weights:
    return [load_surface(sdir)], None
  surfaces = []
  for name in weights:
    sub = sdir / name
    if (sub / "surface.json").exists():
      surfaces.append(load_surface(sub))
    else:
      s = load_surface(sdir)
      if s.outcome != name:
        raise FileNotFoundError(
            f"config key optimise.outcome_weights names outcome {name!r}, but {sub} holds "
            f"no fitted surface (and {sdir} is fitted for {s.outcome!r})")
      surfaces.append(s)
  return surfaces, [weights[n] for n in weights]


def _reference(spec: str, surface: Any, domains: list[str],
               tokens: dict[str, float] | None) -> np.ndarray:
  spec = (spec or "sweep_mean").strip()
  if spec == "uniform":
    return np.full(len(domains), 1.0 / len(domains))
  if spec in ("token_shares", "sweep_mean"):
    if spec == "sweep_mean" and any(getattr(surface, a, None) is not None
                                    for a in ("w_mean", "w_ref", "reference")):
      return default_reference(surface)
    if tokens is None:
      if spec == "token_shares":
        raise ValueError("config key optimise.reference='token_shares' needs pool.json")
      return default_reference(surface)
    t = np.asarray([tokens[d] for d in domains], np.float64)
    return t / t.sum()
  w = cons.parse_domain_values(spec, "optimise.reference")
  unknown = sorted(set(w) - set(domains))
  if unknown:
    raise ValueError(f"config key optimise.reference names unknown domain(s) {unknown}")
  v = np.asarray([w.get(d, 0.0) for d in domains], np.float64)
  if abs(v.sum() - 1) > 1e-6:
    raise ValueError(f"config key optimise.reference: weights sum to {v.sum():.6g}, not 1")
  return v


def run_stage(cfg: ml_collections.ConfigDict, workdir: pathlib.Path) -> pathlib.Path:
  """Recommends the mixture for the pool in `workdir/pool` and writes
  `workdir/optimise/mixture.json` (returned), `mixture.yaml` and `metrics.jsonl`."""
  workdir = pathlib.Path(workdir)
  out_dir = workdir / "optimise"
  oc = cfg.optimise
  surfaces, outcome_weights = _load_surfaces(cfg, workdir)
  domains = list(surfaces[0].domains)
  pool_path = workdir / "pool" / "pool.json"
  tokens = None
  if pool_path.exists():
    pool_json = artifacts.read_json(pool_path, "pool.json")
    if list(pool_json.get("domains", domains)) != domains:
      raise ValueError(f"{pool_path}: domains {pool_json.get('domains')} differ from the "
                       f"surface's {domains}")
    tokens = pool_tokens(pool_json, pool_path)
  elif oc.max_epochs > 0:
    raise FileNotFoundError(f"config key optimise.max_epochs={oc.max_epochs} needs token "
                            f"counts from {pool_path} (run the pool stage first)")
  cov_path = workdir / "pool" / "covariates.json"
  covariates = None
  if cov_path.exists():
    covariates = covariates_lib.read_vector(cov_path)
    for s in surfaces:
      missing = [f for f in s.features
                 if f not in covariates and f"x_{f}" not in covariates
                 and f.removeprefix("x_") not in covariates]
      if missing:
        raise ValueError(f"{cov_path}: the surface for {s.outcome!r} uses feature(s) "
                         f"{missing} that the pool's covariate vector lacks")
  elif any(s.features for s in surfaces):
    log.warning("%s not found: using the sweep's reference covariates", cov_path)
  budget = target_budget_tokens(cfg)
  constraints = constraints_from_config(oc, domains, tokens, budget)
  reference = _reference(str(oc.reference), surfaces[0], domains, tokens)
  rec = recommend(surfaces if len(surfaces) > 1 else surfaces[0], covariates=covariates,
                  reference=reference, constraints=constraints, objective=str(oc.objective),
                  method=str(oc.method), ci=float(oc.ci), outcome_weights=outcome_weights,
                  seed=int(cfg.seed), n_candidates=int(oc.n_candidates),
                  n_starts=int(oc.n_starts), n_steps=int(oc.n_steps))
  path = rec.write(out_dir)
  writer = MetricsWriter(out_dir / "metrics.jsonl")
  writer.write(event="recommend", method=rec.method, objective=rec.objective,
               predicted_mean=rec.predicted.mean, predicted_lo=rec.predicted.lo,
               predicted_hi=rec.predicted.hi,
               improvement_over_reference=rec.improvement_over_reference.mean,
               prob_better_than_reference=rec.improvement_over_reference.prob_better,
               improvement_over_uniform=rec.improvement_over_uniform.mean,
               zeroed=len(rec.zeroed), search_seconds=rec.diagnostics["search_seconds"],
               budget_tokens=budget)
  writer.close()
  log.info("optimise: %s -> predicted %s %.4g [%.4g, %.4g]; %+.4g vs reference "
           "(P(better)=%.2f)", path, rec.outcome, rec.predicted.mean, rec.predicted.lo,
           rec.predicted.hi, rec.improvement_over_reference.mean,
           rec.improvement_over_reference.prob_better)
  return path
