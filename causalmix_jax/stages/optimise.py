"""The `optimise` stage: the fitted surface(s), the covariates and token counts of the pool
the recommendation is for (`pool.deploy`; the built pool by default) and the configured
constraints -> `optimise/mixture.json` (+ mixture.yaml, metrics.jsonl)."""

from __future__ import annotations

import logging
import pathlib

import ml_collections

from causalmix_jax import study as study_lib
from causalmix_jax.metrics import MetricsWriter
from causalmix_jax.optimise import constraints
from causalmix_jax.optimise import search
from causalmix_jax.optimise import settings
from causalmix_jax.optimise.recommend import METHODS
from causalmix_jax.optimise.recommend import check_safe_setting
from causalmix_jax.optimise.recommend import recommend

log = logging.getLogger(__name__)


def _check_choices(oc: ml_collections.ConfigDict) -> None:
  """A ValueError naming the config key when optimise.objective, .method or one of the
  safe objective's settings (`SAFE_SETTINGS`) is not one `recommend` knows (checked
  before any surface is read)."""
  objective = str(oc.objective)
  if objective.lower() != "safe":
    try:
      search.canonical_objective(objective)
    except ValueError as e:
      raise ValueError(f"config key optimise.objective={objective!r}: {e}; or 'safe' "
                       "(the default)") from None
  if str(oc.method).upper() not in METHODS:
    raise ValueError(f"config key optimise.method={oc.method!r} is not one of "
                     f"{list(METHODS)}")
  for key, value in settings.safe_settings(oc).items():
    try:
      check_safe_setting(key, value)
    except ValueError as e:
      raise ValueError(f"config key optimise.{key}={value!r}: {e}") from None


def run(cfg: ml_collections.ConfigDict, workdir: pathlib.Path) -> pathlib.Path:
  study, oc = study_lib.Study(workdir), cfg.optimise
  _check_choices(oc)
  weights = constraints.parse_domain_values(oc.outcome_weights, "optimise.outcome_weights")
  # The study's own outcome first (its surface sets the reference and support report).
  weights = dict(sorted(weights.items(), key=lambda kv: (
      kv[0].removeprefix("y_") != str(cfg.outcome).removeprefix("y_"), kv[0])))
  surfaces = [study.surface(n) for n in weights] or [study.surface()]
  domains = list(surfaces[0].domains)
  tokens = None
  if study.has(study_lib.POOL_JSON):
    if list(study.pool_json.get("domains", domains)) != domains:
      raise ValueError(f"{study.path(study_lib.POOL_JSON)}: domains "
                       f"{study.pool_json.get('domains')} differ from the surface's {domains}")
    tokens = study.deploy_tokens
  elif oc.max_epochs > 0:
    raise FileNotFoundError(f"config key optimise.max_epochs={oc.max_epochs} needs token "
                            f"counts from {study.path(study_lib.POOL_JSON)} (run the pool "
                            "stage first)")
  covariates = None
  if study.has(study_lib.COVARIATES_JSON):
    covariates = study.deploy_covariates
    for s in surfaces:
      missing = [f for f in s.features if f not in covariates and f"x_{f}" not in covariates
                 and f.removeprefix("x_") not in covariates]
      if missing:
        raise ValueError(f"{study.path(study_lib.COVARIATES_JSON)}: the surface for "
                         f"{s.outcome!r} uses feature(s) {missing} that the pool's "
                         "covariate vector lacks")
  elif any(s.features for s in surfaces):
    log.warning("%s not found: using the sweep's reference covariates",
                study.path(study_lib.COVARIATES_JSON))
  budget = settings.target_budget_tokens(cfg)
  rec = recommend(
      surfaces if len(surfaces) > 1 else surfaces[0], covariates=covariates,
      reference=settings.reference_from_config(str(oc.reference), surfaces[0], domains,
                                               tokens),
      constraints=settings.constraints_from_config(oc, domains, tokens, budget),
      objective=str(oc.objective), method=str(oc.method), ci=float(oc.ci),
      outcome_weights=list(weights.values()) or None, seed=int(cfg.seed),
      n_candidates=int(oc.n_candidates), n_starts=int(oc.n_starts), n_steps=int(oc.n_steps),
      **settings.safe_settings(oc))
  path = rec.write(study.path(study_lib.MIXTURE_JSON).parent)
  writer = MetricsWriter(path.parent / "metrics.jsonl")
  writer.write(event="recommend", method=rec.method, objective=rec.objective,
               predicted_mean=rec.predicted.mean, predicted_lo=rec.predicted.lo,
               predicted_hi=rec.predicted.hi,
               improvement_over_reference=rec.improvement_over_reference.mean,
               prob_better_than_reference=rec.improvement_over_reference.prob_better,
               improvement_over_uniform=rec.improvement_over_uniform.mean,
               improvement_over_best_known=(
                   None if rec.improvement_over_best_known is None
                   else rec.improvement_over_best_known.mean),
               zeroed=len(rec.zeroed), search_seconds=rec.diagnostics["search_seconds"],
               budget_tokens=budget)
  writer.close()
  cov = (study.surface_diagnostics.get("heldout_interval_coverage")
         if study.has(study_lib.SURFACE_DIAGNOSTICS) else None)
  log.info("optimise: %s -> predicted %s %.4g [%.4g, %.4g]; %+.4g vs reference "
           "(P(better)=%.2f)%s", path, rec.outcome, rec.predicted.mean, rec.predicted.lo,
           rec.predicted.hi, rec.improvement_over_reference.mean,
           rec.improvement_over_reference.prob_better,
           "" if cov is None or cov >= 0.8 else f"; held-out 90% intervals covered only "
           f"{cov:.0%} of runs: treat the interval and P(better) as optimistic")
  return path
