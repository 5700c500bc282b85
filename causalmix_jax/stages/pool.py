"""The `pool` stage: builds the pool and writes the covariates of its full state, and the
state and covariates of the pool the recommendation is for (`pool.deploy`).

Writes `pool/pool.json`, `pool/tokens/`, `pool/covariates.json` (with the flattened
feature vector under "vector") and timings in `pool/metrics.jsonl`.
"""

from __future__ import annotations

import logging
import pathlib
import time

import ml_collections

from causalmix_jax import artifacts
from causalmix_jax import metrics
from causalmix_jax import study as study_lib
from causalmix_jax.data import covariates as covariates_lib
from causalmix_jax.data import pool as pool_lib
from causalmix_jax.data import pool_shift
from causalmix_jax.data import sources

log = logging.getLogger(__name__)


def source_fingerprint(cfg: ml_collections.ConfigDict) -> str:
  """Names, sizes and modification times of every source file of the pool, so that the
  stage re-runs when the data on disk changes (not only when the config does)."""
  specs, target, base = pool_lib.domain_specs(cfg)
  lines = []
  for name, spec in sorted(specs.items()) + [("_target", target)]:
    for path in sources.resolve_paths(spec, base, name):
      st = path.stat()
      lines.append(f"{name}\t{path}\t{st.st_size}\t{st.st_mtime_ns}")
  return "\n".join(lines)


def run(cfg: ml_collections.ConfigDict, workdir: pathlib.Path) -> pathlib.Path:
  """Builds `workdir/pool` and returns the path of pool.json."""
  out_dir = pathlib.Path(workdir) / study_lib.POOL_DIR
  out_dir.mkdir(parents=True, exist_ok=True)
  writer = metrics.MetricsWriter(out_dir / "metrics.jsonl")
  t0 = time.time()
  log.info("pool: building (source=%s) into %s", cfg.pool.source, out_dir)
  pool_json = pool_lib.build_pool(cfg, out_dir)
  t_build = time.time() - t0
  pool = pool_lib.load_pool(out_dir)
  n_tokens = sum(pool.n_tokens().values())
  writer.write(event="pool_built", seconds=t_build, domains=len(pool.domains),
               tokens=n_tokens, tokens_per_s=n_tokens / max(t_build, 1e-9))
  log.info("pool: %d domains, %d train tokens in %.1fs", len(pool.domains), n_tokens,
           t_build)
  t1 = time.time()
  cov = covariates_lib.compute_covariates(pool, cfg.covariates)
  cov["vector"] = covariates_lib.feature_vector(cov)
  artifacts.write_json(pathlib.Path(workdir) / study_lib.COVARIATES_JSON, cov)
  t_cov = time.time() - t1
  writer.write(event="covariates", seconds=t_cov, features=len(cov["vector"]))
  log.info("pool: %d covariates in %.1fs -> %s", len(cov["vector"]), t_cov,
           study_lib.COVARIATES_JSON)
  if cfg.pool.deploy.quality.to_dict() and not cfg.reference.enabled:
    raise sources.DataError("config key pool.deploy.quality filters documents by the "
                            "reference model's score: set reference.enabled=True")
  # Quality filters of the deploy pool need the document scores: the reference stage
  # applies them (its reference/covariates.json supersedes this deploy.json).
  deploy = pool_shift.deploy_state(pool, cfg.pool.deploy.fraction.to_dict(),
                                   cfg.pool.deploy.dup_rate.to_dict())
  deploy_vector = cov["vector"] if deploy.name == "full" else covariates_lib.feature_vector(
      covariates_lib.compute_covariates(pool, cfg.covariates, state=deploy))
  artifacts.write_json(pathlib.Path(workdir) / study_lib.DEPLOY_JSON,
                       {"state": deploy.to_dict(), "covariates": deploy_vector})
  for d in pool.domains:
    f = cov["per_domain"][d]
    log.info("  %-16s tokens=%-9d share=%.3f docs=%-6d H=%.2f zr=%.2f ttr=%.3f dup=%.3f",
             d, int(f["tokens"]), f["token_share"], int(f["documents"]),
             f["byte_entropy"], f["compression_ratio"], f["type_token_ratio"],
             f["near_dup_rate"])
  writer.close()
  return pool_json
