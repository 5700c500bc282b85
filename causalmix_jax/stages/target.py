"""The `target` stage: trains the target model on the chosen mixture (sharded, resumable)
-> `target/summary.json` (+ metrics.jsonl, checkpoints/)."""

from __future__ import annotations

import logging
import pathlib

import ml_collections

from causalmix_jax import artifacts
from causalmix_jax import evaluate
from causalmix_jax import study as study_lib
from causalmix_jax import train_target

log = logging.getLogger(__name__)


def run(cfg: ml_collections.ConfigDict, workdir: pathlib.Path) -> pathlib.Path:
  study = study_lib.Study(workdir)
  pool = study.pool
  w_D, source = train_target.read_mixture(cfg, study.workdir, pool.domains)
  log.info("target: mixture from %s: %s", source,
           {d: round(float(w), 4) for d, w in zip(pool.domains, w_D)})
  eval_host = evaluate.eval_arrays(
      pool, seq_len=int(cfg.target.model.seq_len),
      batch_size=int(cfg.target.optim.batch_size), n_batches=int(cfg.target.eval_batches))
  summary = train_target.train(
      cfg, study.path(study_lib.TARGET_DIR), domains=pool.domains,
      vocab_size=int(pool.vocab_size), weights_D=w_D,
      make_iterator=train_target.mixture_iterator_factory(cfg, pool, w_D),
      eval_host=eval_host)
  summary["mixture_source"] = source
  path = study.path(study_lib.TARGET_SUMMARY)
  if artifacts.is_writer():
    artifacts.write_json(path, summary)
  return path
