"""The `design` stage: the pool states, their covariates and the mixtures and seeds of
every proxy run -> `design/interventions.npz` (one row per run) + `design/design.json`."""

from __future__ import annotations

import logging
import pathlib

import ml_collections
import numpy as np

from causalmix_jax import artifacts
from causalmix_jax import interventions
from causalmix_jax import study as study_lib

log = logging.getLogger(__name__)


def run(cfg: ml_collections.ConfigDict, workdir: pathlib.Path) -> pathlib.Path:
  study = study_lib.Study(workdir)
  pool = study.pool
  if bool(cfg.reference.enabled) and not study.reference_enabled:
    study.require(study_lib.DOC_SCORES_NPZ, "document scores (reference.enabled=True)")
  scores = study.doc_scores
  rng = np.random.default_rng([int(cfg.seed), 0x57A7E])
  states = interventions.make_states(pool, cfg.design, seq_len=int(cfg.proxy.model.seq_len),
                                     rng=rng, scores=scores)
  n_tokens_SxD, dup_rate_SxD, quality_SxD, records = interventions.describe_states(
      pool, states, cfg, study.covariate_vector, scores)
  arrays = interventions.build_design(cfg, list(pool.domains), n_tokens_SxD, dup_rate_SxD,
                                      quality_SxD)
  full_n_D = np.array([study.tokens[d] for d in pool.domains])
  meta = interventions.design_meta(cfg, list(pool.domains), full_n_D, arrays, records)
  out = study.path(study_lib.DESIGN_NPZ)
  artifacts.write_npz(out, **arrays)
  artifacts.write_json(study.path(study_lib.DESIGN_JSON), meta)
  log.info("design: %d runs = %d interventions over %d pool states x %d seeds, budget %d "
           "tokens/run", meta["n_runs"], meta["n_interventions"], len(states),
           cfg.design.seeds, meta["budget_tokens"])
  return out
