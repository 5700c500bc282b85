"""The stack's discrepancy term: a smooth random function of the mixture that carries the
misfit the member families' posterior spread does not, and the fit of its size.

A family that is wrong for a world errs by some function of the mixture, and that error
need not follow the family's posterior spread: where the posterior is sure (near the
sweep's mixtures, along directions the family pins down) the misfit stays. One conformal
factor on the spread then covers the wide queries and misses the narrow ones. The
discrepancy adds, to every draw s of the stack,

  delta_s(w) = phi(w) . z_s,   phi(w) = amp sqrt(2 / M) cos(Omega w + b),

random Fourier features of a squared-exponential kernel of lengthscale `l` (the rows of
Omega are N(0, I / l^2), b uniform on [0, 2 pi), z_s standard normal), so that
Cov[delta(w), delta(w')] ~ amp^2 k(w, w'): nearby mixtures share their discrepancy, and an
effect between distant mixtures carries up to 2 amp^2 of it. It depends on the mixture
only, so it is the same for every pool (the pool-level shift is the stack's level term).

Its size is fitted on the held-out contrasts the stack is calibrated on. Under the model
a contrast's error e_u has variance a v_u + b g_u(l) + n_u: v_u the members' spread of
that contrast, g_u the unit-amplitude discrepancy's variance of it, n_u known run noise.
(a, b) maximise the Gaussian pseudo-likelihood of the errors for each lengthscale of a
grid (multiples of the sweep's median distance between mixtures), and b = 0, no
discrepancy, is among the candidates: it is the answer when the spread already explains
the errors. The conformal step then scales a v + b g as a whole.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np
import scipy.optimize

N_FEATURES = 128  # random Fourier features of the discrepancy
# Lengthscales tried, as multiples of the sweep's median distance between mixtures.
LENGTHSCALE_FACTORS = (0.25, 0.5, 1.0, 2.0)
MAX_DISTANCE_PAIRS = 4096  # mixture pairs sampled for the median distance
LOG_RANGE = 30.0  # the variance weights' search range, in nats around the moment match


@dataclasses.dataclass(frozen=True)
class Features:
  """Unit-amplitude random Fourier features of one lengthscale: phi(w), N x M."""
  omega_MxD: np.ndarray
  b_M: np.ndarray
  lengthscale: float

  def __call__(self, w_NxD: np.ndarray) -> np.ndarray:
    m = len(self.b_M)
    return np.sqrt(2.0 / m) * np.cos(w_NxD @ self.omega_MxD.T + self.b_M)


def features(n_domains: int, lengthscale: float, seed: int,
             n_features: int = N_FEATURES) -> Features:
  """The features of `lengthscale`; one seeded draw of frequencies for every
  lengthscale, so the grid's candidates differ in scale only."""
  rng = np.random.default_rng([seed, 31])
  omega = rng.standard_normal((n_features, n_domains))
  b = rng.uniform(0.0, 2.0 * np.pi, n_features)
  return Features(omega / lengthscale, b, float(lengthscale))


def median_distance(w_NxD: np.ndarray, seed: int) -> float:
  """Median Euclidean distance between two distinct mixtures of the sweep (a sample of
  pairs past MAX_DISTANCE_PAIRS); 0 when all mixtures are equal."""
  w = np.unique(np.round(np.asarray(w_NxD, np.float64), 9), axis=0)
  if len(w) < 2:
    return 0.0
  i, j = np.triu_indices(len(w), 1)
  if len(i) > MAX_DISTANCE_PAIRS:
    keep = np.random.default_rng([seed, 37]).choice(len(i), MAX_DISTANCE_PAIRS,
                                                    replace=False)
    i, j = i[keep], j[keep]
  return float(np.median(np.linalg.norm(w[i] - w[j], axis=1)))


def _neg_loglik(a: float, b: float, e2: np.ndarray, v: np.ndarray, g: np.ndarray,
                n: np.ndarray) -> float:
  var = np.maximum(a * v + b * g + n, 1e-300)
  return float(np.mean(np.log(var) + e2 / var))


def _neg_loglik_and_grad(p_2: np.ndarray, a0: float, b0: float, e2: np.ndarray,
                         v: np.ndarray, g: np.ndarray, n: np.ndarray
                         ) -> tuple[float, np.ndarray]:
  """_neg_loglik at (a0 e^p0, b0 e^p1) and its gradient in p (analytic, so the search
  needs one evaluation per step instead of a finite-difference stencil)."""
  a, b = a0 * np.exp(p_2[0]), b0 * np.exp(p_2[1])
  var = np.maximum(a * v + b * g + n, 1e-300)
  ratio = e2 / var
  dvar = (1.0 - ratio) / var  # d/dvar of log var + e2 / var
  grad = np.array([a * np.mean(dvar * v), b * np.mean(dvar * g)])
  return float(np.mean(np.log(var) + ratio)), grad


def _fit_sizes(e2: np.ndarray, v: np.ndarray, g: np.ndarray | None, n: np.ndarray
               ) -> tuple[float, float, float]:
  """(a, b, mean negative log pseudo-likelihood), searched on log scales around the
  moment matches a0 = mean(e2) / mean(v), b0 = mean(e2) / mean(g); b = 0 when g is
  None."""
  a0 = max(float(np.mean(e2)) / max(float(np.mean(v)), 1e-300), 1e-300)
  if g is None:
    res = scipy.optimize.minimize_scalar(
        lambda t: _neg_loglik(a0 * np.exp(t), 0.0, e2, v, v * 0.0, n),
        bounds=(-LOG_RANGE, LOG_RANGE), method="bounded")
    return a0 * float(np.exp(res.x)), 0.0, float(res.fun)
  b0 = max(float(np.mean(e2)) / max(float(np.mean(g)), 1e-300), 1e-300)
  best = None
  for start in ((0.0, -3.0), (-3.0, 0.0), (0.0, 0.0)):
    res = scipy.optimize.minimize(
        _neg_loglik_and_grad, np.array(start), args=(a0, b0, e2, v, g, n), jac=True,
        method="L-BFGS-B", bounds=[(-LOG_RANGE, LOG_RANGE)] * 2)
    if best is None or res.fun < best.fun:
      best = res
  return a0 * float(np.exp(best.x[0])), b0 * float(np.exp(best.x[1])), float(best.fun)


@dataclasses.dataclass(frozen=True)
class Fit:
  """The fitted split of the contrast errors' variance: a v + b g (g of `features`)."""
  a: float
  b: float = 0.0
  features: Features | None = None  # None: no discrepancy (b = 0)
  g_U: np.ndarray | None = None  # the unit discrepancy's variance of each contrast
  # Mean negative log pseudo-likelihood of each candidate.
  candidates: dict[str, float] = dataclasses.field(default_factory=dict)

  def variance(self, v_U: np.ndarray) -> np.ndarray:
    """a v + b g of the contrasts the split was fitted on."""
    return self.a * v_U + (0.0 if self.g_U is None else self.b * self.g_U)

  def info(self) -> dict[str, Any]:
    return {"lengthscale": None if self.features is None else self.features.lengthscale,
            "spread_weight": self.a, "discrepancy_weight": self.b,
            "neg_loglik": self.candidates}


def fit(e2_U: np.ndarray, v_U: np.ndarray, noise_U: np.ndarray | None,
        g_fn: Callable[[Features], np.ndarray], w_NxD: np.ndarray, seed: int) -> Fit:
  """Chooses the discrepancy's lengthscale and the variance split by the held-out
  contrasts' pseudo-likelihood. `g_fn(features)` is each contrast's variance under the
  unit-amplitude discrepancy of those features."""
  e2 = np.asarray(e2_U, np.float64)
  v = np.maximum(np.asarray(v_U, np.float64), 1e-300)
  n = np.zeros_like(e2) if noise_U is None else np.asarray(noise_U, np.float64)
  a, b, nll = _fit_sizes(e2, v, None, n)
  best, best_nll, candidates = Fit(a), nll, {"none": nll}
  dist = median_distance(w_NxD, seed)
  if dist > 0:
    for factor in LENGTHSCALE_FACTORS:
      feats = features(w_NxD.shape[1], factor * dist, seed)
      g = np.asarray(g_fn(feats), np.float64)
      a, b, nll = _fit_sizes(e2, v, g, n)
      candidates[f"{factor:g}x median distance"] = nll
      if b > 0 and nll < best_nll:
        best, best_nll = Fit(a, b, feats, g), nll
  return dataclasses.replace(best, candidates=candidates)


def centred_normal(rng: np.random.Generator, *shape: int) -> np.ndarray:
  """Standard normals centred over the first axis (the draws), for the stack's
  zero-mean terms (this discrepancy; the pool level and the extrapolation gap of
  `robust.py`): they then add nothing to the predictive mean at any mixture, however
  few the draws. The spread is kept: variance 1 over the draws in expectation."""
  z = rng.standard_normal(shape)
  if shape[0] < 2:
    return np.zeros(shape)
  return (z - z.mean(0)) * np.sqrt(shape[0] / (shape[0] - 1))


def draw_weights(feats: Features | None, amplitude: float, n_draws: int, n_domains: int,
                 seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(omega_MxD, b_M, z_SxM) of the discrepancy's draws: delta = cos(w Omega^T + b) z^T,
  with amp sqrt(2 / M) folded into z. No features (M = 0) without a discrepancy."""
  if feats is None or amplitude <= 0:
    return (np.zeros((0, n_domains), np.float32), np.zeros(0, np.float32),
            np.zeros((n_draws, 0), np.float32))
  m = len(feats.b_M)
  z = centred_normal(np.random.default_rng([seed, 41]), n_draws, m)
  return (feats.omega_MxD.astype(np.float32), feats.b_M.astype(np.float32),
          (amplitude * np.sqrt(2.0 / m) * z).astype(np.float32))


def draws(omega_MxD: Any, b_M: Any, z_SxM: Any, w_NxD: Any, cos: Callable[[Any], Any]
          ) -> Any:
  """delta, S x N, for NumPy (cos=np.cos) or jax.numpy (cos=jnp.cos) arrays."""
  return z_SxM @ cos(w_NxD @ omega_MxD.T + b_M).T
