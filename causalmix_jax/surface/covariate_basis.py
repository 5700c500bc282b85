"""How pool covariates enter the effect model: the varying columns, standardised and
projected on the principal components of the sweep's distinct pool states."""

from __future__ import annotations

import dataclasses

import numpy as np

from causalmix_jax.surface import nuisance as nuis


@dataclasses.dataclass
class CovariateBasis:
  """How the pool covariates enter the effect model: the varying columns `cols`,
  standardised by the sweep's `mu_F` / `sd_F`, projected on the leading principal
  components `basis_FxK` (orthonormal) of the sweep's distinct pool states, and scaled
  by `score_sd_K` so the scores have unit variance over the runs.

  A sweep has as many distinct pool states S as it has, however many covariates
  describe them; an effect that varies with X is identified only along the S - 1
  directions those states span, so at most S - 1 components are kept (and at most
  `max_components`). No varying column: zero components (a response surface)."""
  cols: np.ndarray
  mu_F: np.ndarray
  sd_F: np.ndarray
  basis_FxK: np.ndarray
  score_sd_K: np.ndarray
  n_states: int
  explained_K: np.ndarray  # share of the distinct states' variance per component

  @property
  def k(self) -> int:
    return int(self.basis_FxK.shape[1])

  @property
  def proj_FxK(self) -> np.ndarray:
    """Standardised covariates -> unit-variance scores."""
    return self.basis_FxK / self.score_sd_K

  @property
  def spans_states(self) -> bool:
    """True when the components span every distinct state (nothing truncated)."""
    return self.k >= self.n_states - 1

  def standardise(self, x_NxF: np.ndarray) -> np.ndarray:
    return (x_NxF[:, self.cols] - self.mu_F) / self.sd_F

  def scores(self, x_NxF: np.ndarray) -> np.ndarray:
    return self.standardise(x_NxF) @ self.proj_FxK


def covariate_basis(x_NxF: np.ndarray, max_components: int, rtol: float = 1e-8
                    ) -> CovariateBasis:
  """Drops constant columns, standardises, de-duplicates rows into pool states and
  keeps the principal components of those states (see `CovariateBasis`)."""
  cols = nuis.varying_columns(x_NxF)
  f = len(cols)
  if f == 0:
    return CovariateBasis(cols, np.zeros(0), np.ones(0), np.zeros((0, 0)), np.ones(0),
                          1, np.zeros(0))
  xv = x_NxF[:, cols]
  mu, sd = xv.mean(0), xv.std(0)
  sd = np.where(sd > 0, sd, 1.0)
  xs = (xv - mu) / sd
  states = np.unique(xs, axis=0)
  n_states = len(states)
  _, sv, vt = np.linalg.svd(states - states.mean(0), full_matrices=False)
  rank = int(np.sum(sv > rtol * max(sv[0], 1e-300))) if len(sv) else 0
  k = max(0, min(n_states - 1, int(max_components), rank))
  basis = vt[:k].T
  score_sd = (xs @ basis).std(0) if k else np.ones(0)
  score_sd = np.where(score_sd > 0, score_sd, 1.0)
  explained = sv[:k] ** 2 / max(np.sum(sv ** 2), 1e-300)
  return CovariateBasis(cols, mu, sd, basis, score_sd, n_states, explained)
