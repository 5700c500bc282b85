"""Tests of causalmix_jax.surface.nuisance: CV choice, cross-fitting, constant X."""

import jax
import jax.numpy as jnp
import numpy as np

from causalmix_jax.surface import nuisance as nuis


def test_linear_truth_picks_a_good_model_and_predicts():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((120, 2))
  y = np.c_[2.0 * x[:, 0] - x[:, 1] + 0.05 * rng.standard_normal(120), x[:, 1]]
  n = nuis.fit_nuisance(x, y, candidates=("ridge", "kernel"), n_folds=4)
  assert n.kind in ("ridge", "kernel")
  assert n.oof_NxK.shape == (120, 2)
  assert np.mean((n.oof_NxK - y) ** 2) < 0.05
  xt = rng.standard_normal((10, 2))
  np.testing.assert_allclose(n.predict(xt)[:, 0], 2 * xt[:, 0] - xt[:, 1], atol=0.3)
  f = jax.jit(lambda p, x: nuis.predict(n.kind, p, x))
  assert f(n.params, jnp.asarray(xt)).shape == (10, 2)


def test_nonlinear_truth_prefers_kernel_or_mlp_over_ridge():
  rng = np.random.default_rng(1)
  x = rng.uniform(-2, 2, (100, 1))
  y = np.sin(2.0 * x[:, 0])
  n = nuis.fit_nuisance(x, y, candidates=("ridge", "kernel", "mlp"), n_folds=3,
                        mlp_steps=100)
  assert n.kind in ("kernel", "mlp")
  assert min(v for k, v in n.scores.items() if not k.startswith("ridge")) < min(
      v for k, v in n.scores.items() if k.startswith("ridge"))


def test_constant_covariates_reduce_to_means():
  x = np.ones((30, 3))
  y = np.arange(30.0)
  n = nuis.fit_nuisance(x, y)
  assert n.kind == "mean"
  np.testing.assert_allclose(n.oof_NxK[:, 0], y.mean())
  np.testing.assert_allclose(n.predict(np.zeros((2, 3)))[:, 0], y.mean())
  assert nuis.fit_nuisance(np.zeros((30, 0)), y).kind == "mean"


def test_fold_ids_balanced_and_deterministic():
  a = nuis.fold_ids(23, 5, seed=3)
  np.testing.assert_array_equal(a, nuis.fold_ids(23, 5, seed=3))
  assert sorted(np.bincount(a)) == [4, 4, 5, 5, 5]
