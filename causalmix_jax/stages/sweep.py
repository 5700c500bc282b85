"""The `sweep` stage: trains every proxy run of the design (resumable, in chunks) ->
`sweep/runs.parquet` (+ `sweep/chunks/`, `sweep/metrics.jsonl`)."""

from __future__ import annotations

import pathlib

import ml_collections
import numpy as np

from causalmix_jax import artifacts
from causalmix_jax import metrics
from causalmix_jax import study as study_lib
from causalmix_jax import sweep
from causalmix_jax.data import token_pool


def run(cfg: ml_collections.ConfigDict, workdir: pathlib.Path) -> pathlib.Path:
  study = study_lib.Study(workdir)
  pool = study.pool
  design, meta = study.design
  tp = token_pool.from_pool(
      pool, seq_len=int(cfg.proxy.model.seq_len),
      eval_batch_size=int(cfg.proxy.optim.batch_size),
      eval_batches=int(cfg.sweep.eval_batches))
  kept = tp.kept_end_states(design.get("quality_SxD", np.ones(1)), study.doc_scores)
  if kept is not None:  # quality-filtered states: each run's documents, on device
    design = {**design, "kept_end_SxM": kept}
  out_dir = study.path(study_lib.RUNS_PARQUET).parent
  writer = metrics.MetricsWriter(out_dir / "metrics.jsonl", enabled=artifacts.is_writer())
  try:
    return sweep.run_sweep(cfg, tp, design, meta, out_dir,
                           vocab_size=int(pool.vocab_size), metrics=writer)
  finally:
    writer.close()
