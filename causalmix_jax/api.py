"""The public Python API: load runs tables, fit a causal surface, recommend a mixture,
and compute the covariates of a pool. Everything a notebook needs, in one import.

  from causalmix_jax import api
  runs = api.load_runs("runs.parquet")
  surface = api.fit_surface(runs, outcome="target")
  rec = api.recommend(surface, covariates=api.pool_covariates("workdir/pool"))

  study = api.open_study("workdir")   # every artifact of a pipeline run, typed
  study.runs, study.surface(), study.mixture.weights
"""

from __future__ import annotations

import os
from typing import Mapping

from causalmix_jax.optimise import recommend
from causalmix_jax.runs import Runs, load_runs
from causalmix_jax.study import Study
from causalmix_jax.surface.fit import fit_surface
from causalmix_jax.surface.surface import Surface, load_surface

__all__ = ["Runs", "Study", "Surface", "load_runs", "fit_surface", "load_surface",
           "recommend", "open_study", "pool_covariates"]


def open_study(workdir: str | os.PathLike[str]) -> Study:
  """A typed, lazy view of a pipeline workdir (pool, design, runs, surfaces, mixture,
  target); nothing is read until asked."""
  return Study(workdir)


def pool_covariates(pool_dir: str | os.PathLike[str]) -> Mapping[str, float]:
  """The flat `x_*` covariate vector of a pool built by the `pool` stage."""
  from causalmix_jax.data import covariates
  return covariates.read_vector(os.path.join(pool_dir, "covariates.json"))
