"""Tests of `Study`: artifact views read lazily and typed, missing artifacts named with the
stage that writes them, and per-outcome surfaces found in their subdirectories."""

import pytest

from causalmix_jax import api
from causalmix_jax import artifacts
from causalmix_jax import runs as runs_lib
from causalmix_jax import study as study_lib
from causalmix_jax.surface import fit
from causalmix_jax.surface import planted


def _runs():
  world = planted.PlantedWorld(n_domains=3, n_features=1, seed=1)
  return world.sample_sweep(n_runs=40, n_pool_states=4, noise=0.01)


def test_missing_artifacts_name_file_and_stage(tmp_path):
  study = api.open_study(tmp_path)
  assert "stages done: none" in repr(study)
  with pytest.raises(study_lib.MissingArtifactError, match=r"sweep/runs\.parquet.*the "
                     r"sweep stage.*--stage=sweep"):
    _ = study.runs
  with pytest.raises(study_lib.MissingArtifactError, match=r"optimise/mixture\.json.*"
                     r"--stage=optimise"):
    _ = study.mixture
  with pytest.raises(study_lib.MissingArtifactError, match=r"surface/surface\.json.*"
                     r"--stage=fit"):
    study.surface()
  with pytest.raises(study_lib.MissingArtifactError, match=r"pool/pool\.json.*--stage=pool"):
    _ = study.tokens


def test_views_read_back_what_was_written(tmp_path):
  runs = _runs()
  runs_lib.write_runs(runs, tmp_path / study_lib.RUNS_PARQUET)
  surface = fit.fit_surface(runs, "loss", method="dml")
  surface.save(tmp_path / study_lib.SURFACE_DIR)
  artifacts.write_json(tmp_path / study_lib.POOL_JSON, {
      "domains": list(surface.domains),
      "per_domain": {d: {"tokens": 100 * (i + 1)} for i, d in enumerate(surface.domains)}})
  study = api.open_study(tmp_path)
  assert "fit" in repr(study) and "optimise" not in repr(study)
  assert len(study.runs.run_ids) == len(runs.run_ids)
  assert study.surface() is study.surface()  # cached
  assert study.surface().outcome == surface.outcome
  assert study.tokens == {d: 100.0 * (i + 1) for i, d in enumerate(surface.domains)}
  with pytest.raises(study_lib.MissingArtifactError, match="no surface for outcome 'other'"):
    study.surface("other")


def test_per_outcome_surface_lives_in_its_subdirectory(tmp_path):
  runs = _runs()
  fit.fit_surface(runs, "loss", method="dml").save(tmp_path / "surface")
  sub = fit.fit_surface(runs, "loss", method="dml")
  sub.save(tmp_path / "surface" / "loss")
  study = api.open_study(tmp_path)
  assert study.surface_dir("loss") == tmp_path / "surface" / "loss"
  assert study.surface("loss").outcome == "loss"
