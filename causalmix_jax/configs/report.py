"""Config section for the report and the CATE interpreter."""

from __future__ import annotations

import ml_collections


def section(variants: frozenset[str]) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # Regression tree over the covariates that summarises which pool states favour which
  # domains: maximum depth and the fewest covariate rows a leaf may hold.
  c.tree_depth = 3
  c.min_samples_leaf = 5
  # Partial dependence: grid points per covariate, spanning these observed quantiles.
  c.n_grid = 25
  c.grid_quantile_lo = 0.05
  c.grid_quantile_hi = 0.95
  # At most this many distinct covariate rows of the sweep are interpreted (evenly
  # spaced in row order when there are more).
  c.max_rows = 256
  # Partial dependence and the covariate ranking average over at most this many of
  # them (each costs n_grid x covariates evaluations of theta).
  c.pd_rows = 32
  # Width of the credible intervals shown in the report.
  c.ci = 0.9
  # Partial-dependence panels drawn (the covariates that move the mixture most).
  c.max_pd_plots = 6
  c.title = "CausalMix report"
  if "smoke" in variants:
    c.n_grid = 9
    c.max_rows = 64
    c.pd_rows = 16
  return c
