"""The companion model's pick for a pool, and its average with the surface's pick
(decision averaging: `recommend`'s `decision_average`, a surface fitted with
surface.companion = "trees").

A surface fitted on a sweep and a second model of another family fitted on the same
sweep (gradient-boosted trees) err in different places: the surface's smooth families
extrapolate trends, the trees stay flat outside the runs and follow steps and kinks.
Where the true loss is convex in the mixture, the loss at the mean of the two picks is
at most the mean of their losses, and below it wherever the picks differ and the
curvature between them is not zero.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from causalmix_jax.surface import baselines

# The companion's own pick is RegMix's: the mean of the TOP_K best of CANDIDATES
# Monte-Carlo mixtures drawn around the pool's natural mixture (its token shares),
# ranked by the companion's point prediction. The surface zoo's LightGBM baseline uses
# the same counts (RegMix itself: 100,000 and 128).
CANDIDATES = 20_000
TOP_K = 32


def companion_pick(model: Any, x_F: np.ndarray, prior_D: np.ndarray,
                   seed: int = 0) -> np.ndarray:
  """The mean of the TOP_K best of CANDIDATES mixtures sampled around `prior_D`
  (RegMix's candidates), ranked by `model.point` at covariates `x_F` (lowest first, or
  highest when the model's outcome is maximised); a length-D mixture."""
  prior_D = np.asarray(prior_D, np.float64)
  if prior_D.ndim != 1 or not np.all(np.isfinite(prior_D)) or prior_D.sum() <= 0:
    raise ValueError(f"companion pick: the prior mixture must be a finite, non-negative "
                     f"vector with a positive sum, got {prior_D}")
  cands_CxD = baselines.sample_regmix_candidates(prior_D, CANDIDATES, seed)
  pred_C = np.asarray(model.point(cands_CxD, x_F), np.float64)
  order = np.argsort(-pred_C if model.maximize else pred_C, kind="stable")
  w_D = cands_CxD[order[:TOP_K]].mean(0)
  return w_D / w_D.sum()


class _AtPool:
  """A companion that reads epochs, answering for one pool's tokens and budget."""

  def __init__(self, model: Any, tokens_D: Any, budget: float | None):
    self.model, self.tokens_D, self.budget = model, tokens_D, budget
    self.maximize = model.maximize

  def point(self, w: Any, x: Any = None) -> np.ndarray:
    return self.model.point(w, x, tokens=self.tokens_D, budget=self.budget)


def at_pool(model: Any, tokens_D: Any, budget: float | None) -> Any:
  """`model` (trees that read epochs, `trees.TreeSurface.reads_epochs`) answering for
  the pool with unique tokens `tokens_D` and training budget `budget` (None: the
  sweep's median pool's), as `companion_pick` queries it."""
  return _AtPool(model, tokens_D, budget)


def averaged(w_surface_D: np.ndarray, w_companion_D: np.ndarray) -> np.ndarray:
  """The mean of the two picks (equal weights: neither family's decisions have been
  scored on held-out pools, so neither is preferred)."""
  return 0.5 * (np.asarray(w_surface_D, np.float64) + np.asarray(w_companion_D,
                                                                np.float64))
