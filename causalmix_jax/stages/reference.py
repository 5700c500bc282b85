"""The `reference` stage: trains (or loads) the reference model, scores every document of
the pool and writes the reference covariates of the full pool and of the pool the
recommendation is for -> `reference/reference.json`, `reference/doc_scores.npz`,
`reference/covariates.json` and `reference/checkpoints/` (a trained model, loadable by
another study's `reference.checkpoint`). With `reference.enabled=False` it writes only
`reference.json` saying so."""

from __future__ import annotations

import dataclasses
import logging
import pathlib
import shutil

import ml_collections
import numpy as np

from causalmix_jax import artifacts
from causalmix_jax import checkpointing
from causalmix_jax import reference
from causalmix_jax import study as study_lib
from causalmix_jax.data import covariates as covariates_lib
from causalmix_jax.data import pool_shift
from causalmix_jax.data import token_pool

log = logging.getLogger(__name__)


def run(cfg: ml_collections.ConfigDict, workdir: pathlib.Path) -> pathlib.Path:
  study, rc = study_lib.Study(workdir), cfg.reference
  out = study.path(study_lib.REFERENCE_JSON)
  if not rc.enabled:
    artifacts.write_json(out, {"enabled": False})
    return out
  pool = study.pool
  if str(rc.checkpoint):
    spec, params = checkpointing.load_params(str(rc.checkpoint))
    if spec.vocab_size != int(pool.vocab_size):
      raise ValueError(f"reference.checkpoint={rc.checkpoint!r}: the model's vocabulary "
                       f"({spec.vocab_size}) is not the pool's ({pool.vocab_size})")
    info = {"loaded_from": str(rc.checkpoint)}
  else:
    spec = reference.model_spec(cfg, int(pool.vocab_size))
    tp = token_pool.from_pool(pool, seq_len=spec.seq_len, eval_batch_size=1,
                              eval_batches=1)
    params, info = reference.train(cfg, tp, spec, progress=artifacts.is_writer())
    if artifacts.is_writer():
      ckpt_dir = study.path(study_lib.REFERENCE_DIR) / "checkpoints"
      shutil.rmtree(ckpt_dir, ignore_errors=True)  # a model of an earlier config
      ckpt = checkpointing.Checkpointer(
          ckpt_dir, fingerprint="reference",
          fingerprint_config={"model": dataclasses.asdict(spec)}, async_save=False)
      ckpt.save(int(rc.optim.steps), {"params": params})
      ckpt.close()
  scores = reference.score_documents(
      pool, reference.logits_fn_of(spec, params), seq_len=spec.seq_len,
      batch_size=int(rc.batch_size), max_tokens_per_document=int(rc.max_tokens_per_document),
      quality_score=str(rc.quality_score), keep=str(rc.keep),
      progress=artifacts.is_writer())
  if not artifacts.is_writer():
    return out
  scores.save(study.path(study_lib.DOC_SCORES_NPZ))
  full = covariates_lib.compute_covariates(pool, cfg.covariates, doc_scores=scores)
  full_ref = {k: v for k, v in covariates_lib.feature_vector(full).items()
              if k.removeprefix("x_").split("__")[0] in covariates_lib.REFERENCE_FEATURES}
  dc = cfg.pool.deploy
  deploy = pool_shift.deploy_state(pool, dc.fraction.to_dict(), dc.dup_rate.to_dict(),
                                   dc.quality.to_dict(), scores)
  deploy_vec = covariates_lib.feature_vector(covariates_lib.compute_covariates(
      pool, cfg.covariates, state=deploy, doc_scores=scores))
  artifacts.write_json(study.path(study_lib.REFERENCE_COVARIATES_JSON), {
      "full": full_ref, "deploy": {"state": deploy.to_dict(), "covariates": deploy_vec}})
  per = {d: {f: full["per_domain"][d][f] for f in covariates_lib.REFERENCE_FEATURES}
         for d in pool.domains}
  for d, f in per.items():
    log.info("  %-16s loss=%.3f bits  entropy=%.3f bits  HES=%.2f per 1k tokens", d,
             f["ref_loss_bits"], f["ref_entropy_bits"], f["ref_hes_bits"])
  artifacts.write_json(out, {
      "enabled": True, "model": dataclasses.asdict(spec), "training": info,
      "documents": {d: scores.n_docs(d) for d in pool.domains},
      "scored_tokens": {d: int(np.sum(scores.scored_tokens[d])) for d in pool.domains},
      "hes_threshold_bits": scores.hes_threshold,
      "quality_score": scores.quality_score, "keep": scores.keep,
      "per_domain": per})
  return out

