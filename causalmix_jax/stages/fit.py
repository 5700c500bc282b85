"""The `fit` stage: the sweep's runs table -> the surface for `y_<cfg.outcome>` under
`surface/` (surface.json + posterior.npz, diagnostics.json with held-out checks,
pred_vs_actual.png, metrics.jsonl); each extra outcome named by
`cfg.optimise.outcome_weights` is fitted alike into `surface/<name>/`."""

from __future__ import annotations

import logging
import pathlib

import ml_collections

from causalmix_jax import artifacts
from causalmix_jax import metrics
from causalmix_jax import study as study_lib
from causalmix_jax.analysis import plots
from causalmix_jax.optimise import constraints
from causalmix_jax.surface import diagnostics
from causalmix_jax.surface import fit

log = logging.getLogger(__name__)


def run(cfg: ml_collections.ConfigDict, workdir: pathlib.Path) -> pathlib.Path:
  study = study_lib.Study(workdir)
  runs, source = study.runs, study.path(study_lib.RUNS_PARQUET)
  outcome, scfg = str(cfg.outcome), cfg.surface
  if outcome not in runs.outcomes and outcome.removeprefix("y_") not in runs.outcomes:
    raise KeyError(f"config key `outcome`={outcome!r}: the runs table {source} has "
                   f"outcomes {runs.outcomes}")
  extra = list(constraints.parse_domain_values(cfg.optimise.outcome_weights,
                                               "optimise.outcome_weights"))
  bad = [n for n in extra if n not in runs.outcomes and n.removeprefix("y_") not in
         runs.outcomes]
  if bad:
    raise KeyError(f"config key optimise.outcome_weights names outcome(s) {bad} that "
                   f"the runs table {source} lacks; it has {runs.outcomes}")
  out_dir = study.path(study_lib.SURFACE_DIR)
  writer = metrics.MetricsWriter(out_dir / "metrics.jsonl")
  surface = fit.fit_surface(runs, outcome, method=str(scfg.method), config=scfg)
  surface.save(out_dir)
  log.info("fit: %d-fold cross-validation of the surface", int(scfg.n_folds))
  cv_cfg = ml_collections.ConfigDict(scfg.to_dict())
  cv_cfg.inference = "exact"  # closed-form refits keep the held-out check cheap
  cv = diagnostics.cross_validate(
      runs, outcome, lambda tr: fit.fit_surface(tr, outcome, str(scfg.method), cv_cfg),
      n_folds=int(scfg.n_folds), seed=int(scfg.seed))
  diag = diagnostics.summary(surface, cv, n_folds=int(scfg.n_folds))
  artifacts.write_json(study.path(study_lib.SURFACE_DIAGNOSTICS), diag)
  artifacts.write_figure(out_dir / "pred_vs_actual.png", plots.plot_pred_vs_actual(
      cv, f"{surface.outcome} ({surface.info['method']})"))
  writer.write(**{k: v for k, v in diag.items()
                  if isinstance(v, (int, float, str)) or v is None})
  for name in extra:
    if name.removeprefix("y_") == surface.outcome:
      s = surface
    else:
      log.info("fit: outcome %s for optimise.outcome_weights", name)
      s = fit.fit_surface(runs, name, method=str(scfg.method), config=scfg)
    s.save(out_dir / name)
    artifacts.write_json(out_dir / name / "diagnostics.json",
                         diagnostics.summary(s, None))
    writer.write(event="outcome_surface", outcome=s.outcome,
                 fit_seconds=s.info["fit_seconds"])
  writer.close()
  return study.path(study_lib.SURFACE_JSON)
