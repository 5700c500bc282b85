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
  mu, sd, xs = _standardised(x_NxF[:, cols])
  basis, score_sd, n_states, explained = _components(xs, int(max_components), rtol)
  return CovariateBasis(cols, mu, sd, basis, score_sd, n_states, explained)


def _standardised(xv_NxF: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(mean, sd, standardised rows); a constant column keeps sd 1."""
  mu, sd = xv_NxF.mean(0), xv_NxF.std(0)
  sd = np.where(sd > 0, sd, 1.0)
  return mu, sd, (xv_NxF - mu) / sd


def _components(xs_NxF: np.ndarray, max_components: int, rtol: float = 1e-8
                ) -> tuple[np.ndarray, np.ndarray, int, np.ndarray]:
  """(basis F x K, score sd over the rows, distinct states, explained share): the
  leading principal components of the distinct standardised rows, at most S - 1."""
  states = np.unique(xs_NxF, axis=0)
  n_states = len(states)
  _, sv, vt = np.linalg.svd(states - states.mean(0), full_matrices=False)
  rank = int(np.sum(sv > rtol * max(sv[0], 1e-300))) if len(sv) else 0
  k = max(0, min(n_states - 1, max_components, rank))
  basis = vt[:k].T
  score_sd = (xs_NxF @ basis).std(0) if k else np.ones(0)
  score_sd = np.where(score_sd > 0, score_sd, 1.0)
  explained = sv[:k] ** 2 / max(np.sum(sv ** 2), 1e-300)
  return basis, score_sd, n_states, explained


def score_precision(scores_NxK: np.ndarray) -> np.ndarray:
  """Pseudo-inverse of the scores' covariance (K x K): the Mahalanobis metric."""
  return np.linalg.pinv(np.atleast_2d(np.cov(scores_NxK, rowvar=False)), hermitian=True)


def mahalanobis(scores_NxK: np.ndarray, prec_KxK: np.ndarray) -> np.ndarray:
  """Distance of each row of scores from zero under `prec_KxK`, length N."""
  return np.sqrt(np.maximum(np.einsum("nk,kl,nl->n", scores_NxK, prec_KxK, scores_NxK),
                            0.0))


# At most this many folds of pool states when the support statistics are held out: one
# state per fold (leave-one-out) up to it, then groups of states.
SUPPORT_FOLDS = 50
# Fewer distinct states than this: no held-out statistics (`Surface.support` falls back
# to the sweep's in-sample maxima and ranges).
MIN_SUPPORT_STATES = 5


def held_out_support(x_NxF: np.ndarray, xb: CovariateBasis, seed: int = 0
                     ) -> dict[str, list[float]] | None:
  """How far each sweep pool state lies from the others, measured the way a new pool
  is: with the standardisation, the components (as many as `xb` keeps) and their
  covariance refitted without it. Statistics of a pool drawn like the sweep's are
  exchangeable with these, so "beyond the largest of them" is a test with a false
  alarm rate of about 1/(states + 1) per statistic; in-sample maxima are not (a new
  pool beats them most of the time, as the components were fitted to the sweep's
  states). Returns {"mahalanobis", "residual", "max_abs_z", "range_excess"}, one value
  per state, or None with fewer than MIN_SUPPORT_STATES states or no varying covariate.
  range_excess: how far the state's farthest covariate lies beyond the other states'
  [min, max], in their standard deviations (0 inside every range)."""
  if len(xb.cols) == 0:
    return None
  xv = x_NxF[:, xb.cols]
  _, state_N = np.unique(np.round(xv, 9), axis=0, return_inverse=True)
  state_N = np.asarray(state_N).reshape(-1)
  n_states = int(state_N.max()) + 1
  if n_states < MIN_SUPPORT_STATES:
    return None
  fold_S = nuis.fold_ids(n_states, min(n_states, SUPPORT_FOLDS), seed)
  d_S, r_S, m_S, e_S = (np.zeros(n_states) for _ in range(4))
  first_S = np.unique(state_N, return_index=True)[1]  # one row per state
  for f in np.unique(fold_S):
    held = np.flatnonzero(fold_S == f)
    mu, sd, xs_tr = _standardised(xv[~np.isin(state_N, held)])
    basis, score_sd, _, _ = _components(xs_tr, xb.k)
    xs_h = (xv[first_S[held]] - mu) / sd
    if basis.shape[1]:
      proj = basis / score_sd
      d_S[held] = mahalanobis(xs_h @ proj, score_precision(xs_tr @ proj))
    r_S[held] = np.linalg.norm(xs_h - (xs_h @ basis) @ basis.T, axis=1)
    m_S[held] = np.abs(xs_h).max(1)
    e_S[held] = range_excess(xs_h, xs_tr.min(0), xs_tr.max(0))
  return {"mahalanobis": d_S.tolist(), "residual": r_S.tolist(), "max_abs_z": m_S.tolist(),
          "range_excess": e_S.tolist()}


def range_excess(xs_NxF: np.ndarray, lo_F: np.ndarray, hi_F: np.ndarray) -> np.ndarray:
  """Per row, the largest distance of one (standardised) covariate beyond [lo, hi];
  0 when every covariate is inside its range. Length N."""
  gap_NxF = np.maximum(lo_F - xs_NxF, xs_NxF - hi_F)
  return gap_NxF.max(1, initial=0.0)
