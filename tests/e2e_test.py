"""End to end: the whole pipeline through launch/main.py on the tiny config (the session's
`smoke_study`, one invocation of every stage); the study read back through
`api.open_study`; on a copy, a second invocation that finds every stage up to date; a
stale upstream refused by name; another study's config refused in the same workdir."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from causalmix_jax import api

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _main(workdir: pathlib.Path, *extra: str, stage: str = "all",
          config: str = "experiments/quickstart/config.py:smoke"
          ) -> subprocess.CompletedProcess:
  env = dict(os.environ)
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
  return subprocess.run(
      [sys.executable, "launch/main.py", f"--config={config}",
       f"--workdir={workdir}", f"--stage={stage}", *extra],
      cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)


@pytest.mark.xdist_group("smoke_study")  # one worker builds the study and runs its users
def test_pipeline_end_to_end(smoke_study, tmp_path):
  built = smoke_study  # read only; the later invocations run on a copy
  for rel in ("pool/pool.json", "pool/covariates.json", "reference/reference.json",
              "reference/doc_scores.npz", "reference/covariates.json",
              "design/interventions.npz",
              "sweep/runs.parquet", "sweep/runs.csv", "surface/surface.json",
              "optimise/mixture.json", "optimise/mixture.yaml", "validate/results.parquet",
              "validate/summary.json", "validate/table.md", "target/summary.json",
              "report/report.md", "report/validation.png"):
    assert (built / rel).exists(), rel
  pool = json.loads((built / "pool/pool.json").read_text())
  mixture = json.loads((built / "optimise/mixture.json").read_text())
  assert mixture["domains"] == pool["domains"]
  assert abs(sum(mixture["weights"].values()) - 1.0) < 1e-6
  summary = json.loads((built / "target/summary.json").read_text())
  assert summary["steps"] > 0
  report = (built / "report/report.md").read_text()
  for d in pool["domains"]:
    assert d in report
  study = api.open_study(built)
  assert study.pool.domains == pool["domains"]
  assert study.mixture.weights == mixture["weights"]
  assert study.surface().outcome == study.mixture.outcome
  assert len(study.runs.run_ids) == len(study.design[0]["run_id_N"])
  assert all(f"x_{f}" in study.covariate_vector for f in study.surface().features)
  assert study.reference_enabled and study.doc_scores.domains == tuple(pool["domains"])
  for d in pool["domains"]:  # the reference covariates reach every pool state
    assert all(f"x_ref_loss_bits__{d}" in s["covariates"] for s in study.design[1]["states"])
  assert study.target["steps"] == summary["steps"]
  assert study.deploy["state"]["name"] == "full"  # no pool.deploy: the built pool
  assert study.deploy_covariates == study.covariate_vector
  table = study.validation.set_index("mixture")
  assert table.loc["recommended", "seeds"] == 3
  assert table.loc["recommended", "diff_vs_recommended"] == 0.0
  assert {"uniform", "natural", "regmix", "regmix_topk", "blind",
          "best_known"} <= set(table.index)
  assert len(study.validation_runs) >= 3 * len(set(study.validation_runs["mixture"]))
  assert "## Validation: the recommendation trained beside its baselines" in report
  copy = tmp_path / "study"
  shutil.copytree(built, copy)
  again = _main(copy)
  assert again.returncode == 0, again.stderr[-3000:]
  assert again.stderr.count("up to date") == 10, again.stderr[-3000:]
  assert (copy / "analysis/interpretation.json").exists()
  stale = _main(copy, "--config.pool.heldout_fraction=0.1",
                stage="design,sweep,fit,optimise")
  assert stale.returncode != 0
  assert ("reads pool/, which is stale: its config changed (pool.heldout_fraction: 0.05 "
          "-> 0.1)") in stale.stderr, stale.stderr[-3000:]
  other = _main(copy, stage="report", config="experiments/quickstart/config.py")
  assert other.returncode != 0
  assert ("belongs to study 'experiments/quickstart/config.py:smoke', not "
          "'experiments/quickstart/config.py'") in other.stderr, other.stderr[-3000:]
  assert study.mixture.weights == api.open_study(copy).mixture.weights  # untouched
