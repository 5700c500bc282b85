"""Tests of causalmix_jax.surface.features: log-ratio coordinates, floors, repetition."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from causalmix_jax.surface import features as feats


def _w(n=7, d=4, seed=0):
  return np.random.default_rng(seed).dirichlet(np.ones(d), size=n)


def test_helmert_basis_is_orthonormal_and_sum_zero():
  v = feats.helmert_basis(5)
  np.testing.assert_allclose(v.T @ v, np.eye(4), atol=1e-12)
  np.testing.assert_allclose(v.sum(0), 0.0, atol=1e-12)


def test_ilr_round_trips_and_is_d_minus_1():
  w = _w()
  z = feats.ilr(jnp.asarray(w), floor=1e-30)
  assert z.shape == (7, 3)
  np.testing.assert_allclose(np.asarray(feats.from_ilr(z)), w, rtol=1e-5, atol=1e-7)


def test_alr_against_reference():
  w = _w()
  z = np.asarray(feats.alr(jnp.asarray(w), reference=2, floor=1e-30))
  np.testing.assert_allclose(z[:, 0], np.log(w[:, 0] / w[:, 2]), rtol=1e-5)
  assert z.shape == (7, 3)


def test_floor_keeps_zero_weights_finite():
  w = np.array([[1.0, 0.0, 0.0]])
  spec = feats.FeatureSpec(3, ("log", "sqrt", "pairs"), floor=1e-3)
  phi = np.asarray(feats.featurize(spec, jnp.asarray(w)))
  assert np.all(np.isfinite(phi))
  np.testing.assert_allclose(phi[0, 1], np.log(1e-3), rtol=1e-6)
  assert phi.shape == (1, spec.n_features) == (1, 3 + 3 + 3)
  assert len(spec.names(["a", "b", "c"])) == spec.n_features


def test_repetition_is_zero_within_one_epoch_and_grows_beyond():
  w = jnp.array([[0.5, 0.5]])
  tokens = jnp.array([[1e9, 1e6]])
  rep = np.asarray(feats.repetition(w, tokens, jnp.array([1e8])))
  assert rep[0, 0] == 0.0  # 0.05 epochs
  np.testing.assert_allclose(rep[0, 1], 0.5 * np.log(50.0) ** 2, rtol=1e-5)
  spec = feats.FeatureSpec(2, ("log", "repetition"))
  with pytest.raises(ValueError, match="tokens"):
    feats.featurize(spec, w)


def test_featurize_is_jittable_and_bad_spec_is_named():
  spec = feats.FeatureSpec(4, ("linear", "log"))
  f = jax.jit(lambda w: feats.featurize(spec, w))
  assert f(jnp.asarray(_w())).shape == (7, 8)
  with pytest.raises(ValueError, match="unknown kind"):
    feats.FeatureSpec(4, ("cube",))
  assert feats.FeatureSpec.from_dict(spec.to_dict()) == spec


def test_hinges_kink_at_shares_of_the_uniform_weight():
  d = 4
  spec = feats.FeatureSpec(d, ("log", "hinge"))
  assert spec.group_sizes() == [d, 3 * d]
  np.testing.assert_array_equal(spec.groups(), [0] * d + [1] * (3 * d))
  names = spec.names(["a", "b", "c", "e"])
  assert names[d:d + 2] == ["hinge0.5_a", "hinge0.5_b"] and names[-1] == "hinge2_e"
  # Knots at 0.125, 0.25, 0.5: domain a sits below every knot, b between the first
  # two, c and e between the last two; a single domain at weight 1 passes all three.
  w = np.array([[0.05, 0.2, 0.3, 0.45]])
  h = np.asarray(feats.featurize(spec, w))[0, d:].reshape(3, d)
  np.testing.assert_allclose(h, [[0.0, 0.075, 0.175, 0.325],
                                 [0.0, 0.0, 0.05, 0.2],
                                 [0.0, 0.0, 0.0, 0.0]], atol=1e-12)
  w_one = np.array([[0.0, 0.0, 0.0, 1.0]])
  np.testing.assert_allclose(np.asarray(feats.featurize(spec, w_one))[0, -1], 0.5)
  # NumPy and jax agree, and jit traces it.
  f = jax.jit(lambda v: feats.featurize(spec, v))
  np.testing.assert_allclose(np.asarray(f(jnp.asarray(w))),
                             np.asarray(feats.featurize(spec, w)), rtol=1e-6)
