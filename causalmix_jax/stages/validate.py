"""The `validate` stage: trains the recommendation beside its baselines (uniform, natural,
RegMix, the covariate-blind pick, the sweep's best-known mixture, the optimiser's other
variants), several seeds each with
common random numbers, in one vmapped program through the sweep's machinery ->
`validate/results.parquet` (one row per run), `validate/summary.json` and
`validate/table.md` (per mixture: realized mean and interval, paired difference to the
recommendation, and at proxy scale the surface's prediction)."""

from __future__ import annotations

import logging
import pathlib

import ml_collections
import numpy as np
import pandas as pd

from causalmix_jax import artifacts
from causalmix_jax import interventions
from causalmix_jax import metrics
from causalmix_jax import sharding
from causalmix_jax import study as study_lib
from causalmix_jax import sweep
from causalmix_jax import validation
from causalmix_jax.data import token_pool
from causalmix_jax.optimise import settings

log = logging.getLogger(__name__)


def run(cfg: ml_collections.ConfigDict, workdir: pathlib.Path) -> pathlib.Path:
  study, vc = study_lib.Study(workdir), cfg.validate
  validation.check_config(vc)
  surface, rec, pool = study.surface(), study.mixture, study.pool
  domains = list(pool.domains)
  deploy = study.deploy  # the pool the recommendation is for; the runs train on it
  tokens_D = np.array([study.deploy_tokens[d] for d in domains])
  dup_D = np.array([float(deploy["state"]["dup_rate"].get(d, 0.0)) for d in domains])
  vcfg = validation.scaled_config(cfg)
  budget = interventions.budget_tokens(vcfg)
  pick = validation.make_picker(cfg, study.runs, surface, study.deploy_covariates,
                                study.deploy_tokens, float(budget))
  # The optimise stage's pick is for the target's budget; at another budget the
  # recommendation is made again for the budget trained here.
  same = abs(budget - settings.target_budget_tokens(cfg)) < 0.5
  mixtures = validation.candidate_mixtures(
      vc.mixtures, domains, recommended=([rec.weights[d] for d in domains] if same
                                         else pick("recommended")),
      tokens_D=tokens_D, pick=pick,
      unguarded=validation.unguarded_weights(rec, domains) if same else None)
  # Every process trains process 0's mixtures (the picks are refitted on each process).
  # Stacked in their order (a dict pytree would come back with its keys sorted).
  names = list(mixtures)
  w_all = sharding.from_process_0(np.stack([mixtures[n] for n in names]))
  mixtures = dict(zip(names, w_all))
  w_MxD, index = validation.distinct(mixtures)
  log.info("validate: %d mixtures (%d distinct) x %d seeds at %s scale, %d tokens each",
           len(mixtures), len(w_MxD), vc.seeds, vc.scale, budget)
  arrays = validation.design(w_MxD, int(vc.seeds), tokens_D, budget, dup_D)
  meta = {"domains": domains, "states": [{"name": deploy["state"]["name"],
                                          "covariates": study.deploy_covariates}]}
  tp = token_pool.from_pool(pool, seq_len=int(vcfg.proxy.model.seq_len),
                            eval_batch_size=int(vcfg.proxy.optim.batch_size),
                            eval_batches=int(cfg.sweep.eval_batches))
  quality = deploy["state"].get("quality", {})
  kept = tp.kept_end_states(np.array([[quality.get(d, 1.0) for d in domains]]),
                            study.doc_scores)
  if kept is not None:  # the deploy pool keeps only some documents of some domains
    arrays["kept_end_SxM"] = kept
  out_dir = study.path(study_lib.VALIDATE_DIR)
  writer = metrics.MetricsWriter(out_dir / "metrics.jsonl", enabled=artifacts.is_writer())
  try:
    runs_path = sweep.run_sweep(vcfg, tp, arrays, meta, out_dir,
                                vocab_size=int(pool.vocab_size), metrics=writer)
  finally:
    writer.close()
  if not artifacts.is_writer():
    return study.path(study_lib.VALIDATE_SUMMARY)
  frame = pd.read_parquet(runs_path)
  names = {row: [n for n, r in index.items() if r == row] for row in range(len(w_MxD))}
  frame["mixture"] = [",".join(names[int(r.split("-")[0][1:])]) for r in frame["run_id"]]
  predicted = None
  if str(vc.scale) == "proxy":  # the surface predicts the proxies' outcome
    p = surface.predictive(w_MxD, study.deploy_covariates, float(vc.ci),
                           tokens=tokens_D, budget=float(budget))
    predicted = {n: (float(p.mean[r]), float(p.lo[r]), float(p.hi[r]))
                 for n, r in index.items()}
  table = validation.table(frame, index, str(cfg.outcome), ci=float(vc.ci),
                           maximize=bool(surface.maximize), predicted=predicted)
  artifacts.write_parquet(study.path(study_lib.VALIDATE_RESULTS), frame)
  with artifacts.atomic_path(out_dir / "table.md") as tmp:
    tmp.write_text(validation.markdown(table, mixtures, domains, str(cfg.outcome),
                                       float(vc.ci)))
  artifacts.write_json(study.path(study_lib.VALIDATE_SUMMARY), {
      "outcome": str(cfg.outcome), "scale": str(vc.scale), "seeds": int(vc.seeds),
      "budget_tokens": budget, "ci": float(vc.ci), "domains": domains,
      "recommended_from": "optimise/mixture.json" if same else
                          "the optimiser rerun for the validation budget",
      "mixtures": {n: dict(zip(domains, map(float, w))) for n, w in mixtures.items()},
      "table": table.to_dict(orient="records")})
  log.info("validate: %s\n%s", out_dir / "table.md", (out_dir / "table.md").read_text())
  return study.path(study_lib.VALIDATE_SUMMARY)
