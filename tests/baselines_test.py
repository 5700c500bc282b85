"""Tests for the baseline response models: RegMix LightGBM, linear, log-linear."""

import pathlib

import jax
import numpy as np
import pandas as pd
import pytest
import scipy.stats

from causalmix_jax import runs as runs_lib
from causalmix_jax.surface import baselines
from causalmix_jax.surface.planted import PlantedWorld
from causalmix_jax.surface.prediction import Prediction

# Its module-level fixtures and caches are built once: one xdist worker runs it all.
pytestmark = pytest.mark.xdist_group("baselines")

REGMIX = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "regmix"
needs_regmix = pytest.mark.skipif(not (REGMIX / "train_mixture_1m.csv").exists(),
                                  reason=f"RegMix data not at {REGMIX}")


@pytest.fixture(scope="module")
def regmix():
  return runs_lib.load_runs(REGMIX)


def _holdout_spearman(model, runs, test):
  return scipy.stats.spearmanr(model.point(runs.W[test]),
                               runs.y("pile_cc")[test])[0]


@needs_regmix
def test_lgbm_and_linear_rank_regmix_holdout(regmix):
  n = len(regmix)
  test = np.random.default_rng(0).permutation(n)[:128]
  train = np.ones(n, bool)
  train[test] = False
  lgbm = baselines.fit_regmix_lgbm(regmix.select(train), "pile_cc", num_trees=300,
                                   n_boot=2)
  lin = baselines.fit_linear(regmix.select(train), "pile_cc")
  rho_lgbm = _holdout_spearman(lgbm, regmix, test)
  rho_lin = _holdout_spearman(lin, regmix, test)
  # RegMix reports ~0.98 (LightGBM) and ~0.88-0.90 (linear) on held-out runs.
  assert rho_lgbm > 0.9, rho_lgbm
  assert 0.75 < rho_lin < rho_lgbm, (rho_lin, rho_lgbm)
  assert lgbm.fit_time > 0 and lin.fit_time > 0
  assert len(lgbm.boosters) == 3 and lgbm.params["learning_rate"] == 0.01
  p = lgbm.predict(regmix.W[test[:5]])
  assert isinstance(p, Prediction) and p.mean.shape == (5,)
  assert np.all(p.lo <= p.mean) and np.all(p.mean <= p.hi)


@needs_regmix
def test_regmix_recommend_prefers_pile_cc(regmix):
  lgbm = baselines.fit_regmix_lgbm(regmix, "pile_cc", num_trees=200, n_boot=0)
  rec = baselines.regmix_recommend(lgbm, n_candidates=5000, top_k=32, seed=1)
  w = rec["weights"]
  assert w.shape == (17,) and w.sum() == pytest.approx(1.0)
  j = regmix.domains.index("pile_cc")
  # Training on more Pile-CC lowers Pile-CC loss: the top-k mean leans on it.
  assert w[j] > regmix.W[:, j].mean()
  assert rec["predicted"].mean[0] < np.median(regmix.y("pile_cc"))
  again = baselines.regmix_recommend(lgbm, n_candidates=5000, top_k=32, seed=1)
  np.testing.assert_array_equal(again["weights"], w)


def test_candidates_follow_prior():
  prior = np.array([0.6, 0.3, 0.1])
  c = baselines.sample_regmix_candidates(prior, 20000, seed=0)
  np.testing.assert_allclose(c.sum(1), 1.0)
  np.testing.assert_allclose(c.mean(0), prior, atol=0.02)


def test_linear_recovers_planted_linear_truth_with_calibrated_intervals():
  rng = np.random.default_rng(0)
  beta = np.array([3.0, 2.0, 4.0, 2.5])
  cover = []
  for rep in range(20):
    w = rng.dirichlet(np.ones(4), 60)
    y = w @ beta + 0.05 * rng.standard_normal(60)
    frame = {"run_id": [f"r{i}" for i in range(60)], "seed": np.zeros(60, int)}
    frame.update({f"w_{d}": w[:, i] for i, d in enumerate("abcd")})
    frame["y_loss"] = y
    r = runs_lib.Runs(pd.DataFrame(frame))
    m = baselines.fit_linear(r, "loss", seed=rep)
    q = rng.dirichlet(np.ones(4), 10)
    cover.append(m.predict(q, ci=0.9).covers(q @ beta))
    if rep == 0:
      th = m.theta(w=np.full(4, 0.25))
      np.testing.assert_allclose(th.mean, beta - beta.mean(), atol=0.3)
      ce = m.cate(q, np.full(4, 0.25))
      np.testing.assert_allclose(ce.mean, q @ beta - beta.mean(), atol=0.1)
      fn, params = m.sampler()
      s = jax.jit(fn)(params, q.astype(np.float32), np.zeros(0, np.float32))
      assert s.shape == (400, 10)
      np.testing.assert_allclose(np.asarray(s).mean(0), m.predict(q).mean, atol=0.02)
  rate = np.mean(cover)
  assert 0.8 < rate < 0.97, rate


@needs_regmix
def test_loglinear_fits_regmix(regmix):
  sub = regmix.select(np.arange(256))
  m = baselines.fit_loglinear(sub, "pile_cc")
  rest = np.arange(256, 512)
  rho = scipy.stats.spearmanr(m.point(regmix.W[rest]), regmix.y("pile_cc")[rest])[0]
  assert rho > 0.85, rho
  p = m.predict(regmix.W[rest[:4]])
  assert np.all(p.lo <= p.mean) and np.all(p.mean <= p.hi)
  fn, params = m.sampler()
  s = np.asarray(jax.jit(fn)(params, regmix.W[rest[:4]].astype(np.float32),
                             np.zeros(0, np.float32)))
  np.testing.assert_allclose(np.median(s, 0), m.point(regmix.W[rest[:4]]), rtol=0.02)


def test_planted_interface_and_support():
  world = PlantedWorld(n_domains=4, n_features=2, seed=1)
  r = world.sample_sweep(n_runs=160, n_pool_states=8, noise=0.01)
  lgbm = baselines.fit_regmix_lgbm(r, "loss", num_trees=100, n_boot=2)
  lin = baselines.fit_linear(r, "loss", use_covariates=True)
  x0 = r.X[0]
  for m in (lgbm, lin):
    th = m.theta(x0)
    assert th.mean.shape == (4,) and np.all(th.lo <= th.hi)
    assert m.cate(r.W[:3], r.W[3], x0).mean.shape == (3,)
    assert m.support(x0)["inside"]
    far = m.support(x0 + np.array([50.0, 0.0]))
    assert not far["inside"] and far["outside"] == ["f0"] and far["max_distance_sd"] > 5
  fn, params = lgbm.sampler()
  out = jax.jit(fn)(params, r.W[:5].astype(np.float32), x0.astype(np.float32))
  assert out.shape == (2, 5)
  np.testing.assert_allclose(np.asarray(out), lgbm.draws(r.W[:5], x0), rtol=1e-5)
