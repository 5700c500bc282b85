"""The `analyse` stage: `analysis/interpretation.json`, the CATE interpretation of the
fitted surface over the sweep's pool states (rules, partial dependence, the covariates
that move the mixture), and its figures under `analysis/`; only process 0 writes."""

from __future__ import annotations

import logging
import pathlib
from typing import Any, Sequence

import ml_collections
import numpy as np

from causalmix_jax import artifacts
from causalmix_jax import study as study_lib
from causalmix_jax.analysis import interpretation
from causalmix_jax.analysis import plots

log = logging.getLogger(__name__)


def reference_weights(mixture: Any, domains: Sequence[str]) -> np.ndarray | None:
  """The recommendation's reference mixture in the surface's domain order (None when
  mixture.json has none)."""
  ref = mixture.reference
  if not ref:
    return None
  missing = [d for d in domains if d not in ref]
  if missing:
    raise ValueError(f"mixture.json reference weights has no weight for domain(s) "
                     f"{missing}")
  return np.array([float(ref[d]) for d in domains])


def run(cfg: ml_collections.ConfigDict, workdir: pathlib.Path) -> pathlib.Path:
  study = study_lib.Study(workdir)
  out = study.path(study_lib.INTERPRETATION_JSON)
  rcfg = cfg.report
  interpretation.check_config(rcfg)
  surface = study.surface()
  x_NxF, missing = interpretation.sweep_rows(study.runs, surface.features)
  if missing:
    log.warning("analyse: the runs table lacks the surface's covariate(s) %s; nothing to "
                "interpret", missing)
  w_ref = reference_weights(study.mixture, surface.domains)
  if not artifacts.is_writer():
    return out
  res = interpretation.interpret(surface, x_NxF, w_ref, rcfg, progress=True)
  figures = {study_lib.THETA_PNG: plots.plot_theta,
             study_lib.PARTIAL_DEPENDENCE_PNG: lambda r: plots.plot_partial_dependence(
                 r, max_panels=int(rcfg.max_pd_plots)),
             study_lib.RANKING_PNG: plots.plot_ranking}
  for rel in figures:  # none left over from an earlier interpretation
    study.path(rel).unlink(missing_ok=True)
  if not res.skipped:
    import matplotlib  # pylint: disable=import-outside-toplevel
    with matplotlib.rc_context(plots.SAVE_RC):
      for rel, plot in figures.items():
        fig = plot(res)
        if fig is not None:
          artifacts.write_figure(study.path(rel), fig)
  artifacts.write_json(out, res.to_dict())
  log.info("analyse: %s (%d rules, top covariate %s)%s", out, len(res.rules),
           res.ranking[0].feature if res.ranking else None,
           f"; skipped: {res.skipped}" if res.skipped else "")
  return out
