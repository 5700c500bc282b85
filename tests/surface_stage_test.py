"""Tests of the `fit` stage: reads sweep/runs.parquet, writes the surface artifacts."""

import json

import pytest

from causalmix_jax import runs as runs_lib
from causalmix_jax.configs import base
from causalmix_jax.stages import fit as stage
from causalmix_jax.surface import planted
from causalmix_jax.surface.surface import load_surface


def _cfg(outcome="loss"):
  cfg = base.get_config("smoke")
  cfg.unlock()
  cfg.outcome = outcome
  cfg.surface.nuisance_models = ("ridge",)
  cfg.surface.floors = (1e-3,)
  cfg.surface.pairs = "never"
  cfg.surface.n_folds = 3
  cfg.lock()
  return cfg


def test_stage_writes_all_artifacts(tmp_path):
  world = planted.PlantedWorld(n_domains=3, n_features=2, seed=1)
  runs_lib.write_runs(world.sample_sweep(n_runs=90, n_pool_states=9, noise=0.01),
                      tmp_path / "sweep" / "runs.parquet")
  out = stage.run(_cfg(), tmp_path)
  assert out == tmp_path / "surface" / "surface.json"
  d = tmp_path / "surface"
  for name in ("surface.json", "posterior.npz", "diagnostics.json", "pred_vs_actual.png",
               "metrics.jsonl"):
    assert (d / name).exists(), name
  diag = json.loads((d / "diagnostics.json").read_text())
  assert diag["heldout_spearman"] > 0.8 and diag["heldout_r2"] > 0.5
  assert 0.0 <= diag["heldout_interval_coverage"] <= 1.0
  s = load_surface(d)
  assert s.domains == ["d0", "d1", "d2"] and s.outcome == "loss"


def test_stage_names_a_missing_outcome(tmp_path):
  world = planted.PlantedWorld(n_domains=3, n_features=1, seed=1)
  runs_lib.write_runs(world.sample_sweep(n_runs=30, n_pool_states=3),
                      tmp_path / "sweep" / "runs.parquet")
  with pytest.raises(KeyError, match="outcome"):
    stage.run(_cfg("target"), tmp_path)
