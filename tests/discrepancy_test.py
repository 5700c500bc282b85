"""Tests of the stack's discrepancy term (`surface/discrepancy.py`): its features'
covariance, and the fit of the variance split on contrasts drawn from a known split."""

from __future__ import annotations

import numpy as np
import pytest

from causalmix_jax.surface import discrepancy


def _mixtures(n: int = 300, d: int = 4, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).dirichlet(np.ones(d), n)


def test_features_approximate_the_squared_exponential_kernel():
  w = _mixtures(40)
  feats = discrepancy.features(4, 0.3, seed=0, n_features=20_000)
  phi = feats(w)
  d2 = np.sum((w[:, None] - w[None]) ** 2, axis=-1)
  np.testing.assert_allclose(phi @ phi.T, np.exp(-d2 / (2 * 0.3 ** 2)), atol=0.03)
  # One draw of frequencies for every lengthscale: the grid differs in scale only.
  other = discrepancy.features(4, 0.6, seed=0, n_features=20_000)
  np.testing.assert_allclose(other.omega_MxD * 0.6, feats.omega_MxD * 0.3)


def test_median_distance():
  w = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.5, 0.5]])
  # Distinct mixtures: three pairs at sqrt(2), sqrt(0.5), sqrt(0.5).
  assert discrepancy.median_distance(w, seed=0) == pytest.approx(np.sqrt(0.5))
  assert discrepancy.median_distance(w[2:], seed=0) == 0.0


def _contrasts(a: float, b: float, factor: float, seed: int = 0):
  """Pair contrasts whose errors have variance a v + b g (g of the `factor` x median
  distance features, or none when b = 0) plus known noise."""
  rng = np.random.default_rng([seed, 1])
  w = _mixtures(seed=seed)
  i, j = rng.integers(0, len(w), (2, 3000))
  keep = i != j
  i, j = i[keep], j[keep]
  v = rng.lognormal(-6.0, 1.0, len(i))
  noise = np.full(len(i), 2e-4)

  def g_fn(feats):
    phi = feats(w)
    return np.sum((phi[i] - phi[j]) ** 2, axis=1)

  feats = discrepancy.features(4, factor * discrepancy.median_distance(w, seed), seed)
  var = a * v + (b * g_fn(feats) if b else 0.0) + noise
  e2 = var * rng.standard_normal(len(i)) ** 2
  return e2, v, noise, g_fn, w


def test_fit_finds_a_planted_discrepancy_and_its_lengthscale():
  e2, v, noise, g_fn, w = _contrasts(a=4.0, b=0.01, factor=0.5)
  split = discrepancy.fit(e2, v, noise, g_fn, w, seed=0)
  assert split.features is not None
  med = discrepancy.median_distance(w, 0)
  assert split.features.lengthscale == pytest.approx(0.5 * med)
  assert split.a == pytest.approx(4.0, rel=0.3)
  assert split.b == pytest.approx(0.01, rel=0.3)
  info = split.info()
  assert info["lengthscale"] == split.features.lengthscale
  assert info["neg_loglik"]["0.5x median distance"] == min(info["neg_loglik"].values())


def test_size_search_gradient_matches_finite_differences():
  e2, v, noise, g_fn, w = _contrasts(a=4.0, b=0.01, factor=0.5)
  g = g_fn(discrepancy.features(4, discrepancy.median_distance(w, 0), 0))
  a0, b0 = 3.0, 0.02
  for p in (np.array([0.2, -0.7]), np.array([-2.0, 1.5])):
    f, grad = discrepancy._neg_loglik_and_grad(p, a0, b0, e2, v, g, noise)
    assert f == pytest.approx(discrepancy._neg_loglik(
        a0 * np.exp(p[0]), b0 * np.exp(p[1]), e2, v, g, noise))
    h = 1e-6
    for k in range(2):
      dp = np.zeros(2)
      dp[k] = h
      num = (discrepancy._neg_loglik_and_grad(p + dp, a0, b0, e2, v, g, noise)[0]
             - discrepancy._neg_loglik_and_grad(p - dp, a0, b0, e2, v, g, noise)[0]
             ) / (2 * h)
      assert grad[k] == pytest.approx(num, rel=1e-4, abs=1e-8)


def test_fit_leaves_the_discrepancy_out_when_the_spread_explains_the_errors():
  e2, v, noise, g_fn, w = _contrasts(a=4.0, b=0.0, factor=0.5)
  split = discrepancy.fit(e2, v, noise, g_fn, w, seed=0)
  assert split.features is None and split.b == 0.0
  assert split.a == pytest.approx(4.0, rel=0.15)
  np.testing.assert_allclose(split.variance(v), split.a * v)


def test_draws_carry_the_kernel_covariance_and_vanish_without_a_discrepancy():
  w = _mixtures(6)
  feats = discrepancy.features(4, 0.4, seed=3)
  omega, b, z = discrepancy.draw_weights(feats, 0.2, 20_000, 4, seed=3)
  delta = discrepancy.draws(omega, b, z, w, np.cos)  # S x N
  np.testing.assert_allclose(np.cov(delta.T), 0.04 * feats(w) @ feats(w).T, atol=2e-3)
  omega, b, z = discrepancy.draw_weights(None, 0.0, 7, 4, seed=3)
  assert omega.shape == (0, 4) and z.shape == (7, 0)
  np.testing.assert_array_equal(discrepancy.draws(omega, b, z, w, np.cos),
                                np.zeros((7, 6)))
