"""Tests for the CATE interpreter: CART on planted step functions, planted surfaces whose
domain effects depend on known covariates, partial dependence and the covariate ranking."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from causalmix_jax.analysis import interpretation
from causalmix_jax.analysis import tree as tree_lib
from causalmix_jax.configs import report as report_config

Prediction = collections.namedtuple("Prediction", "mean lo hi")


class PlantedSurface:
  """theta_a = -x0 (domain a helps the loss more as covariate 0 grows),
  theta_b = 0.3 * tanh(3 * (x1 - 0.5)), theta_c = 0; covariate 2 does nothing."""
  domains = ("a", "b", "c")
  features = ("x_share__a", "x_dup__b", "x_noise")
  outcome = "loss"
  maximize = False

  def __init__(self, batched: bool = True):
    self.batched = batched
    self.calls = 0

  def theta(self, x=None, ci=0.9):
    self.calls += 1
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 2 and not self.batched:
      raise TypeError("one covariate vector at a time")
    x2 = np.atleast_2d(x)
    mean = np.stack([-x2[:, 0], 0.3 * np.tanh(3 * (x2[:, 1] - 0.5)),
                     np.zeros(x2.shape[0])], axis=1)
    if x.ndim == 1:
      mean = mean[0]
    half = 0.05 * (1 + ci)
    return Prediction(mean, mean - half, mean + half)


def _rows(n=120, seed=0):
  return np.random.default_rng(seed).uniform(0.0, 1.0, size=(n, 3))


def _cfg(**overrides):
  """The report section's default (non-smoke) settings, with overrides."""
  cfg = report_config.section(frozenset())
  cfg.update(overrides)
  return cfg


def _interpret(surface, x, w_ref=None, recommend_fn=None, **overrides):
  return interpretation.interpret(surface, x, w_ref, _cfg(**overrides),
                                  recommend_fn=recommend_fn)


# ---------------------------------------------------------------- CART


def _brute_force_root(x, y, min_leaf):
  best = (-1, None, 0.0)
  y = y.reshape(len(y), -1)
  sse = ((y - y.mean(0)) ** 2).sum()
  for f in range(x.shape[1]):
    vals = np.unique(x[:, f])
    for lo, hi in zip(vals[:-1], vals[1:]):
      t = 0.5 * (lo + hi)
      m = x[:, f] <= t
      if m.sum() < min_leaf or (~m).sum() < min_leaf:
        continue
      g = sse - ((y[m] - y[m].mean(0)) ** 2).sum() - ((y[~m] - y[~m].mean(0)) ** 2).sum()
      if g > best[2] + 1e-9:
        best = (f, t, g)
  return best


def test_cart_recovers_step_function_exactly():
  rng = np.random.default_rng(1)
  x = rng.uniform(size=(200, 3))
  y = np.where(x[:, 1] > 0.3, 2.0, -1.0)
  tree = tree_lib.fit_tree(x, y, max_depth=1, feature_names=["p", "q", "r"])
  root = tree.root
  assert root.feature == 1
  below = x[x[:, 1] <= 0.3, 1].max()
  above = x[x[:, 1] > 0.3, 1].min()
  assert root.threshold == pytest.approx(0.5 * (below + above))
  assert tree.nodes[root.left].value[0] == pytest.approx(-1.0)
  assert tree.nodes[root.right].value[0] == pytest.approx(2.0)
  np.testing.assert_allclose(tree.predict(x)[:, 0], y)
  assert tree.depth == 1
  (c_left,), _ = tree.leaves()[0]
  assert c_left.feature == "q" and c_left.op == "<="


def test_cart_two_level_step_and_min_leaf():
  rng = np.random.default_rng(2)
  x = rng.uniform(size=(300, 4))
  y = np.where(x[:, 0] > 0.5, 1.0, 0.0) + np.where(x[:, 2] > 0.2, 0.5, 0.0)
  tree = tree_lib.fit_tree(x, y, max_depth=2, min_samples_leaf=10)
  np.testing.assert_allclose(tree.predict(x)[:, 0], y, atol=1e-12)
  assert sum(nd.sse for nd in tree.nodes if nd.is_leaf) == pytest.approx(0.0, abs=1e-18)
  assert all(nd.n >= 10 for nd in tree.nodes if nd.is_leaf)
  used = {tree.feature_names[nd.feature] for nd in tree.nodes if not nd.is_leaf}
  assert used == {"x0", "x2"}
  imp = tree.feature_importance()
  assert imp.sum() == pytest.approx(1.0) and imp[1] == 0 and imp[3] == 0


@pytest.mark.parametrize("seed,min_leaf", [(3, 1), (4, 7), (5, 20)])
def test_cart_root_split_matches_brute_force(seed, min_leaf):
  rng = np.random.default_rng(seed)
  x = rng.integers(0, 12, size=(60, 3)).astype(float)  # ties in x
  y = rng.normal(size=(60, 2)) + x[:, :1] * 0.2
  tree = tree_lib.fit_tree(x, y, max_depth=1, min_samples_leaf=min_leaf)
  f, t, g = _brute_force_root(x, y, min_leaf)
  assert tree.root.feature == f
  assert tree.root.threshold == pytest.approx(t)
  left, right = tree.nodes[tree.root.left], tree.nodes[tree.root.right]
  assert tree.root.sse - left.sse - right.sse == pytest.approx(g)
  assert left.n >= min_leaf and right.n >= min_leaf


def test_cart_constant_target_is_a_leaf_and_bad_input_errors():
  x = np.arange(20.0)[:, None]
  tree = tree_lib.fit_tree(x, np.ones(20), max_depth=3)
  assert len(tree.nodes) == 1 and tree.root.is_leaf
  with pytest.raises(ValueError, match="NaN"):
    tree_lib.fit_tree(np.array([[np.nan], [1.0]]), np.ones(2), max_depth=1)
  with pytest.raises(ValueError, match="fit_tree needs"):
    tree_lib.fit_tree(np.ones((3, 1)), np.ones(4), max_depth=1)


def test_rule_conditions_are_simplified():
  x = np.linspace(0, 1, 64)[:, None]
  y = np.floor(x[:, 0] * 4)  # four steps on one feature
  tree = tree_lib.fit_tree(x, y, max_depth=3, feature_names=["u"])
  for conds, _ in tree.leaves():
    assert len(conds) <= 2  # at most one upper and one lower bound on u
    assert len({c.op for c in conds}) == len(conds)


# ---------------------------------------------------------------- planted surface


@pytest.mark.parametrize("batched", [True, False])
def test_planted_surface_first_split_and_rule(batched):
  surf = PlantedSurface(batched=batched)
  res = _interpret(surf, _rows(), tree_depth=2, min_samples_leaf=5, n_grid=7)
  root = res.favour_tree.root
  assert res.favour_tree.feature_names[root.feature] == "x_share__a"
  # the rows above the first split favour domain a, through a rule on covariate 0
  high = [r for r in res.rules
          if any(c.feature == "x_share__a" and c.op == ">" for c in r.conditions)]
  assert high and all(r.favour == "a" for r in high)
  assert all(r.favour_effect < 0 for r in high)  # lowers the loss
  assert any("favour a" in r.text and "x_share__a >" in r.text for r in res.rules)
  assert sum(r.n for r in res.rules) == res.theta.x_NxF.shape[0]
  # ranking: covariate 0 moves the mixture most, the inert covariate not at all
  assert res.ranking[0].feature == "x_share__a"
  assert res.ranking[-1].feature == "x_noise"
  assert res.ranking[-1].mixture_shift == pytest.approx(0.0, abs=1e-12)
  assert res.ranking[0].favoured_hi == "a"
  assert res.ranking[0].tree_importance > 0.5
  # per-domain trees: theta_a is explained by covariate 0 alone
  ta = res.domain_trees["a"]
  assert {ta.feature_names[n.feature] for n in ta.nodes if not n.is_leaf} == {"x_share__a"}


def test_maximised_outcome_flips_favour():
  class Gain(PlantedSurface):
    maximize = True
  res = _interpret(Gain(), _rows(), tree_depth=1, n_grid=5)
  high = [r for r in res.rules if r.conditions[0].op == ">"][0]
  assert high.favour != "a" and high.avoid == "a"
  assert all(r.favour != "a" for r in res.rules)  # theta_a <= 0 never raises a gain


def test_partial_dependence_monotone_and_grid():
  surf = PlantedSurface()
  x = _rows(80, seed=3)
  pd0 = interpretation.partial_dependence(surf, x, "x_share__a", n_grid=11, q_lo=0.1, q_hi=0.9)
  np.testing.assert_allclose(pd0.grid_G[[0, -1]], np.quantile(x[:, 0], [0.1, 0.9]))
  assert pd0.grid_G.size == 11
  assert np.all(np.diff(pd0.mean_GxD[:, 0]) < 0)  # theta_a falls with covariate 0
  np.testing.assert_allclose(pd0.mean_GxD[:, 0], -pd0.grid_G)
  assert np.ptp(pd0.mean_GxD[:, 1]) < 1e-12  # theta_b does not depend on covariate 0
  assert np.all(pd0.lo_GxD <= pd0.mean_GxD) and np.all(pd0.mean_GxD <= pd0.hi_GxD)
  pd1 = interpretation.partial_dependence(surf, x, 1, n_grid=9)
  assert np.all(np.diff(pd1.mean_GxD[:, 1]) > 0)  # nonlinear but increasing
  assert pd1.ice_GxRxD.shape == (9, 80, 3)


def test_select_rows_dedupes_and_thins():
  x = np.repeat(_rows(30, seed=4), 3, axis=0)
  rows, n = interpretation.select_rows(x, max_rows=0)
  assert n == 30 and rows.shape == (30, 3)
  rows, n = interpretation.select_rows(x, max_rows=10)
  assert n == 30 and rows.shape == (10, 3)
  with pytest.raises(ValueError, match="covariate row"):
    interpretation.select_rows(np.zeros((0, 3)), 5)


def test_theta_shape_errors_are_named():
  class Bad(PlantedSurface):
    def theta(self, x=None, ci=0.9):
      return Prediction(np.zeros(5), np.zeros(5), np.zeros(5))
  with pytest.raises(ValueError, match="surface.theta returned mean"):
    interpretation.theta_over_rows(Bad(batched=False), _rows(4))
  with pytest.raises(ValueError, match="3 features"):
    interpretation.theta_over_rows(PlantedSurface(), np.zeros((4, 2)))


def test_recommend_fn_ranking_matches_its_own_movement():
  surf = PlantedSurface()
  x = _rows(12, seed=5)
  # a recommender that only listens to covariate 2
  def rec(row):
    w = np.array([1.0, 1.0, 1.0 + 4 * row[2]])
    return w / w.sum()
  res = _interpret(surf, x, tree_depth=1, min_samples_leaf=2, n_grid=5, recommend_fn=rec)
  assert res.ranking[0].feature == "x_noise"
  assert res.ranking[0].mixture_shift > 0
  assert all(e.mixture_shift == pytest.approx(0.0) for e in res.ranking[1:])


def test_step_recommendation_moves_towards_better_domain():
  rel = np.array([[-1.0, 0.5, 0.5]])
  w = interpretation.step_recommendation(rel, np.full(3, 1 / 3), 1.0, lower_is_better=True)
  assert w[0, 0] > 1 / 3 and w.sum() == pytest.approx(1.0)
  w = interpretation.step_recommendation(rel, np.full(3, 1 / 3), 1.0, lower_is_better=False)
  assert w[0, 0] < 1 / 3


def test_nothing_to_interpret_says_why():
  class Blind(PlantedSurface):
    features = ()
  res = _interpret(Blind(), None)
  assert res.skipped == interpretation.NO_COVARIATES
  assert res.theta is None and res.favour_tree is None and not res.rules and not res.ranking
  assert _interpret(PlantedSurface(), None).skipped == interpretation.NO_ROWS
  assert _interpret(PlantedSurface(), _rows(1)).skipped == interpretation.NO_ROWS
  assert _interpret(PlantedSurface(), _rows(2), n_grid=3).skipped == ""


def test_flat_surface_has_one_rule_with_no_favourite():
  class Flat(PlantedSurface):
    def theta(self, x=None, ci=0.9):
      x2 = np.atleast_2d(np.asarray(x, dtype=np.float64))
      m = np.full((x2.shape[0], 3), -0.1)
      m = m[0] if np.ndim(x) == 1 else m
      return Prediction(m, m - 0.01, m + 0.01)
  res = _interpret(Flat(), _rows(20), tree_depth=3, n_grid=4)
  assert len(res.rules) == 1 and res.rules[0].favour == ""
  assert res.rules[0].text.startswith("always: no domain stands out")
  assert all(e.mixture_shift == 0.0 for e in res.ranking)


def test_float_noise_does_not_split():
  rng = np.random.default_rng(6)
  x = rng.uniform(size=(50, 2))
  y = np.array([0.7, -0.3]) + rng.normal(scale=1e-9, size=(50, 2))  # float32-level noise
  tree = tree_lib.fit_tree(x, y, max_depth=3)
  assert len(tree.nodes) == 1
  y[:, 0] += 1e-3 * (x[:, 1] > 0.5)  # a small but real effect still splits
  tree = tree_lib.fit_tree(x, y, max_depth=1)
  assert tree.root.feature == 1


def test_split_ranking_drops_negligible_shifts():
  def eff(name, shift):
    return interpretation.CovariateEffect(name, shift, 0.1, 0.0, "a", "a")
  ranking = (eff("big", 0.5), eff("small", 0.006), eff("tiny", 0.004), eff("none", 0.0),
             eff("nan", float("nan")))
  # the cut is 1% of the largest shift (0.005), above the 0.001 floor
  assert interpretation.negligible_shift_cut(ranking) == pytest.approx(0.005)
  notable, negligible = interpretation.split_ranking(ranking)
  assert [e.feature for e in notable] == ["big", "small"]
  assert [e.feature for e in negligible] == ["tiny", "none", "nan"]
  # shifts all under the floor: nothing is notable, however they compare to each other
  tiny = (eff("x", 5e-4), eff("y", 1e-6))
  assert interpretation.negligible_shift_cut(tiny) == interpretation.NEGLIGIBLE_SHIFT_FLOOR
  assert interpretation.split_ranking(tiny) == ((), tiny)
  assert interpretation.split_ranking(()) == ((), ())
