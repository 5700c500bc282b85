"""The `fit` stage: reads the sweep's runs table, fits the surface configured in
`cfg.surface` to outcome `y_<cfg.outcome>`, and writes the surface (surface.json +
posterior.npz), diagnostics.json (r-hat, ESS, held-out R^2, Spearman, interval
coverage), pred_vs_actual.png and metrics.jsonl under workdir/surface/.

When `cfg.optimise.outcome_weights` names outcomes ("a:1,b:0.5"), each of them is also
fitted (same settings) and written to workdir/surface/<name>/ (surface.json +
posterior.npz + diagnostics.json), which is where the optimiser reads a multi-outcome
objective from. The stage's config keys must then include "optimise"."""

from __future__ import annotations

import logging
import pathlib

import ml_collections
import numpy as np

from causalmix_jax import artifacts
from causalmix_jax import metrics
from causalmix_jax import runs as runs_lib
from causalmix_jax.surface import diagnostics
from causalmix_jax.surface import fit

log = logging.getLogger(__name__)


def _plot(path: pathlib.Path, cv: dict, title: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(4.5, 4.5))
  ax.errorbar(cv["y"], cv["pred"], yerr=[cv["pred"] - cv["lo"], cv["hi"] - cv["pred"]],
              fmt="o", ms=3, alpha=0.6, elinewidth=0.6)
  lo = float(min(np.min(cv["y"]), np.min(cv["pred"])))
  hi = float(max(np.max(cv["y"]), np.max(cv["pred"])))
  ax.plot([lo, hi], [lo, hi], "k--", lw=1)
  ax.set_xlabel("actual")
  ax.set_ylabel("predicted (held-out fold, 90% interval)")
  ax.set_title(f"{title}\nR^2 {cv['r2']:.3f}, Spearman {cv['spearman']:.3f}")
  fig.tight_layout()
  with artifacts.atomic_path(path) as tmp:
    fig.savefig(tmp, format="png", dpi=110)
  plt.close(fig)


def weighted_outcomes(cfg: ml_collections.ConfigDict, outcomes: list[str],
                      source: pathlib.Path) -> list[str]:
  """The outcome names of `cfg.optimise.outcome_weights` (empty when unset), checked
  against the runs table's outcomes."""
  oc = cfg.get("optimise")
  spec = oc.get("outcome_weights", "") if oc is not None else ""
  if not spec:
    return []
  from causalmix_jax.optimise.constraints import parse_domain_values  # pylint: disable=g-import-not-at-top
  names = list(parse_domain_values(spec, "optimise.outcome_weights"))
  bad = [n for n in names if n not in outcomes and n.removeprefix("y_") not in outcomes]
  if bad:
    raise KeyError(f"config key optimise.outcome_weights names outcome(s) {bad} that "
                   f"the runs table {source} lacks; it has {outcomes}")
  return names


def run(cfg: ml_collections.ConfigDict, workdir: pathlib.Path) -> pathlib.Path:
  workdir = pathlib.Path(workdir)
  out_dir = workdir / "surface"
  runs = runs_lib.load_runs(workdir / "sweep" / "runs.parquet")
  outcome = str(cfg.outcome)
  if outcome not in runs.outcomes and outcome.removeprefix("y_") not in runs.outcomes:
    raise KeyError(f"config key `outcome`={outcome!r}: the runs table "
                   f"{workdir / 'sweep' / 'runs.parquet'} has outcomes {runs.outcomes}")
  extra = weighted_outcomes(cfg, list(runs.outcomes), workdir / "sweep" / "runs.parquet")
  scfg = cfg.surface
  writer = metrics.MetricsWriter(out_dir / "metrics.jsonl")
  surface = fit.fit_surface(runs, outcome, method=str(scfg.method), config=scfg)
  surface.save(out_dir)
  # Held-out checks: K-fold refits with the same method (closed-form posterior, so the
  # checks stay cheap whatever inference the final fit used).
  cv_cfg = ml_collections.ConfigDict(scfg.to_dict())
  cv_cfg.inference = "exact"
  n_folds = int(scfg.n_folds)
  log.info("fit: %d-fold cross-validation of the surface", n_folds)
  cv = diagnostics.cross_validate(
      runs, outcome, lambda tr: fit.fit_surface(tr, outcome, str(scfg.method), cv_cfg),
      n_folds=n_folds, seed=int(scfg.seed))
  info = surface.info
  diag = {"outcome": surface.outcome, "method": info["method"],
          "inference": info["inference"], "n_runs": info["n_runs"],
          "fit_seconds": info["fit_seconds"],
          "rhat_max": info.get("rhat_max"), "ess_min": info.get("ess_min"),
          "heldout_r2": cv["r2"], "heldout_spearman": cv["spearman"],
          "heldout_interval_coverage": cv["coverage"],
          "heldout_predictive_coverage": cv.get("predictive_coverage"),
          "noise_sd": info.get("noise_sd"), "cv_folds": n_folds,
          "chosen": info["chosen"], "nuisance": info["nuisance"],
          "evidence": info["evidence"], "pool_calibration": info["pool_calibration"]}
  artifacts.write_json(out_dir / "diagnostics.json", diag)
  _plot(out_dir / "pred_vs_actual.png", cv, f"{surface.outcome} ({info['method']})")
  writer.write(**{k: v for k, v in diag.items()
                  if isinstance(v, (int, float, str)) or v is None})
  for name in extra:
    sub = out_dir / name
    if name.removeprefix("y_") == surface.outcome:
      s = surface
    else:
      log.info("fit: outcome %s for optimise.outcome_weights", name)
      s = fit.fit_surface(runs, name, method=str(scfg.method), config=scfg)
    s.save(sub)
    artifacts.write_json(sub / "diagnostics.json", {
        "outcome": s.outcome, "method": s.info["method"], "n_runs": s.info["n_runs"],
        "fit_seconds": s.info["fit_seconds"], "chosen": s.info["chosen"],
        "nuisance": s.info["nuisance"], "pool_calibration": s.info["pool_calibration"]})
    writer.write(event="outcome_surface", outcome=s.outcome,
                 fit_seconds=s.info["fit_seconds"])
  writer.close()
  return out_dir / "surface.json"
