"""The `report` stage: `report/report.md` and `report/report.html` (+ PNG figures and
metrics.jsonl) from the study's artifacts; only process 0 writes."""

from __future__ import annotations

import logging
import pathlib
import time

import ml_collections

from causalmix_jax import artifacts
from causalmix_jax import metrics
from causalmix_jax import report
from causalmix_jax import study as study_lib

log = logging.getLogger(__name__)


def run(cfg: ml_collections.ConfigDict, workdir: pathlib.Path) -> pathlib.Path:
  study = study_lib.Study(workdir)
  out = study.path(study_lib.REPORT_MD)
  study.require(study_lib.MIXTURE_JSON, "mixture.json (the report needs the optimise "
                "stage's output)")
  surface = study.surface()
  if not artifacts.is_writer():
    return out
  t0 = time.time()
  blocks, info = report.build_report(cfg, study.workdir, surface)
  with artifacts.atomic_path(out) as tmp:
    tmp.write_text(report.render_markdown(blocks))
  with artifacts.atomic_path(out.with_suffix(".html")) as tmp:
    tmp.write_text(report.render_html(blocks, out.parent, str(cfg.report.title)))
  writer = metrics.MetricsWriter(out.parent / "metrics.jsonl")
  writer.write(seconds=time.time() - t0, **info)
  writer.close()
  log.info("report: %s (%d figures, %d notes)", out, info["n_figures"], info["n_notes"])
  return out
