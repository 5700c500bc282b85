"""Tests for the planted-truth world: determinism, optimum, confounding, shifts."""

import numpy as np
import pytest

from causalmix_jax.surface.planted import PlantedWorld

# Its module-level fixtures and caches are built once: one xdist worker runs it all.
pytestmark = pytest.mark.xdist_group("planted")


@pytest.fixture(scope="module")
def world():
  return PlantedWorld(n_domains=5, n_features=3, seed=0)


def test_deterministic_by_seed(world):
  a = world.sample_sweep(n_runs=40, n_pool_states=4, seeds=2)
  b = PlantedWorld(5, 3, seed=0).sample_sweep(n_runs=40, n_pool_states=4, seeds=2)
  np.testing.assert_array_equal(a.W, b.W)
  np.testing.assert_array_equal(a.y("loss"), b.y("loss"))
  c = PlantedWorld(5, 3, seed=1).sample_sweep(n_runs=40, n_pool_states=4, seeds=2)
  assert not np.allclose(a.W, c.W)
  assert len(a) == 80 and set(a.seeds) == {0, 1}
  # Replicates share mixtures and differ only by noise.
  np.testing.assert_array_equal(a.W[:40], a.W[40:])
  assert 0 < np.std(a.y("loss")[:40] - a.y("loss")[40:]) < 0.05


def test_best_mixture_is_optimal_and_moves_with_x(world):
  xs = world.shifted_pools(4)
  best = world.best_mixture(xs)
  np.testing.assert_allclose(best.sum(1), 1.0)
  rng = np.random.default_rng(0)
  for i in range(4):
    cands = rng.dirichlet(np.full(5, 0.8), 50_000)
    cands = np.concatenate([cands, 0.9 * best[i] + 0.1 * rng.dirichlet(np.ones(5), 2000)])
    assert world.true_outcome(best[i], xs[i])[0] <= world.true_outcome(cands, xs[i]).min() + 1e-4
  np.testing.assert_allclose(world.regret(best, xs), 0.0, atol=1e-6)
  l1 = np.abs(best[:, None, :] - best[None, :, :]).sum(-1)
  assert l1[np.triu_indices(4, 1)].max() > 0.3


def test_confounding_present_and_switchable(world):
  def max_corr(r):
    c = np.corrcoef(np.concatenate([r.W, r.X], 1).T)[:5, 5:]
    return np.abs(c).max()
  conf = world.sample_sweep(n_runs=400, n_pool_states=16, confounding=1.0)
  none = world.sample_sweep(n_runs=400, n_pool_states=16, confounding=0.0)
  assert max_corr(conf) > 0.3
  assert max_corr(none) < max_corr(conf)
  # x moves the outcome directly too: the same mixture scores differently across pools.
  w = np.full(5, 0.2)
  assert np.ptp(world.true_outcome(np.tile(w, (16, 1)), conf.X[:16])) > 0.05
  assert conf.epochs() is not None and conf.epochs().max() > 1.0


def test_effects_and_theta_agree_with_finite_differences(world):
  x = world.shifted_pools(3)[0]
  w_ref = world.token_shares(x)[0]
  theta = world.true_theta(x)
  assert theta.shape == (5,)
  h = 1e-3
  for d in range(5):
    w = (1 - h) * w_ref + h * np.eye(5)[d]
    fd = world.true_effect(w, w_ref, x)[0] / h
    assert fd == pytest.approx(theta[d], rel=0.05, abs=0.02)
  # Theta along e_d - w sums to zero when weighted by w.
  assert float(theta @ w_ref) == pytest.approx(0.0, abs=1e-4)
  z = world.true_theta_logratio(x)
  assert z.shape == (4,)
  np.testing.assert_allclose(z, (w_ref * theta)[1:], rtol=1e-5, atol=1e-7)
  v = np.eye(5)[1] - np.eye(5)[0]
  assert world.directional_derivative(w_ref, v, x)[0] == pytest.approx(theta[1] - theta[0], rel=1e-4)


def test_shifted_pools_leave_support(world):
  xs = world.shifted_pools(10, outside_fraction=0.5)
  assert xs.shape == (10, 3)
  norms = np.linalg.norm(xs, axis=1)
  assert np.all(norms[5:] >= 3.0)
  np.testing.assert_array_equal(xs, world.shifted_pools(10, outside_fraction=0.5))
