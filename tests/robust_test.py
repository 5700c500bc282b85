"""Tests of the scaling-law family (`surface/scaling.py`), the stacked, conformally
calibrated surface (`surface/robust.py`) and the safe default objective of `recommend`."""

from __future__ import annotations

import copy
import dataclasses
import functools
import importlib
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from jax.flatten_util import ravel_pytree
from scipy import stats

from causalmix_jax.optimise.recommend import capped_uniform, recommend, shrink_segment
from causalmix_jax.runs import Runs
from causalmix_jax.surface import discrepancy, fit, robust, scaling, worlds
from causalmix_jax.surface.surface import load_surface

# Its module-level fixtures and caches are built once: one xdist worker runs it all.
pytestmark = pytest.mark.xdist_group("robust")


def _cfg(**kw):
  c = fit.default_config()
  c.nuisance_models = ("ridge",)
  # These tests read the surface's own pick and its safe check; the companion's mean
  # (optimise.decision_average) is tested in companion_test.py.
  c.companion = "none"
  for k, v in kw.items():
    setattr(c, k, v)
  return c


@functools.lru_cache(maxsize=None)
def _world_runs(name: str = "synergy"):
  world = worlds.make_world(name, seed=0)
  return world, world.sweep(n_runs=128, n_pools=16, seed=0)


@functools.lru_cache(maxsize=None)
def _stack():
  _, runs = _world_runs()
  return fit.fit_surface(runs, "loss", config=_cfg())


@functools.lru_cache(maxsize=None)
def _units_stack(units: str):
  """The stack of `_stack` with surface.conformal_units = `units`."""
  _, runs = _world_runs()
  return fit.fit_surface(runs, "loss", config=_cfg(conformal_units=units))


def _scaling_truth_runs(n: int = 160, seed: int = 0) -> tuple[Runs, dict]:
  """Runs drawn from the scaling model itself (the family's own planted truth)."""
  rng = np.random.default_rng(seed)
  d = 4
  alpha = np.array([0.3, 0.5, 0.4, 0.3])
  theta = {"a_D": np.log(np.array([0.3, 0.1, 0.2, 0.05])), "b_DxK": np.zeros((d, 0)),
           "logit_alpha_D": np.log(alpha / (1 - alpha)),
           "log_eps": np.log(0.02 - scaling.EPS_FLOOR), "log_rstar": np.log(15.4), "e0": 1.0,
           "e_K": np.zeros(0)}
  w = rng.dirichlet(np.ones(d), n)
  f = np.asarray(scaling.mean_fn(theta, w, None, np.zeros((n, 0))))
  y = f + 0.01 * rng.standard_normal(n)
  frame = pd.DataFrame({"run_id": [f"r{i}" for i in range(n)], "seed": 0})
  for j in range(d):
    frame[f"w_d{j}"] = w[:, j]
  frame["y_loss"] = y
  return Runs(frame, source="scaling-truth"), theta


@functools.lru_cache(maxsize=None)
def _scaling_fit_60() -> tuple[Runs, robust.ScalingSurface]:
  """The scaling family fitted on 60 runs of its own law (read-only: tests share it)."""
  runs, _ = _scaling_truth_runs(n=60)
  return runs, fit.fit_surface(runs, "loss", method="scaling", config=_cfg())


def test_scaling_family_recovers_its_own_law():
  runs, theta = _scaling_truth_runs()
  s = fit.fit_surface(runs, "loss", method="scaling", config=_cfg())
  w_new = np.random.default_rng(5).dirichlet(np.ones(4), 200)
  truth = np.asarray(scaling.mean_fn(theta, w_new, None, np.zeros((200, 0))))
  p = s.predict(w_new)
  assert stats.spearmanr(p.mean, truth).statistic > 0.97
  assert np.mean(np.abs(p.mean - truth)) < 0.03
  assert s.info["method"] == "scaling" and s.n_draws == int(_cfg().num_samples)
  # The MAP search stopped on a tolerance, not on its step limit.
  assert s.info["map"]["steps"] < scaling.MAX_ITERS


def _transfer_truth_runs(n: int = 120, seed: int = 0) -> tuple[Runs, dict]:
  """Runs drawn from the transfer form itself: one power law in pooled data, so the
  domains substitute for one another."""
  rng = np.random.default_rng(seed)
  d = 4
  theta = {"a_D": np.log(np.array([1.0, 0.2, 0.5, 0.05])), "b_DxK": np.zeros((d, 0)),
           "logit_alpha": np.log(0.5 / 0.5), "log_amp": np.log(0.3),
           "log_eps": np.log(0.01), "log_rstar": np.log(15.4), "e0": 1.0,
           "e_K": np.zeros(0)}
  w = rng.dirichlet(np.ones(d), n)
  f = np.asarray(scaling.mean_fn(theta, w, None, np.zeros((n, 0)), "transfer"))
  frame = pd.DataFrame({"run_id": [f"r{i}" for i in range(n)], "seed": 0})
  for j in range(d):
    frame[f"w_d{j}"] = w[:, j]
  frame["y_loss"] = f + 0.01 * rng.standard_normal(n)
  return Runs(frame, source="transfer-truth"), theta


def test_transfer_form_recovers_its_law_and_the_stack_prefers_it(tmp_path):
  runs, theta = _transfer_truth_runs()
  s = fit.fit_surface(runs, "loss", method="transfer", config=_cfg())
  assert s.info["method"] == "transfer" and s.spec.form == "transfer"
  w_new = np.random.default_rng(5).dirichlet(np.ones(4), 200)
  truth = np.asarray(scaling.mean_fn(theta, w_new, None, np.zeros((200, 0)), "transfer"))
  p = s.predict(w_new)
  assert stats.spearmanr(p.mean, truth).statistic > 0.97
  assert np.mean(np.abs(p.mean - truth)) < 0.03
  # Saved and read back, it answers the same (its spec carries the form).
  s.save(tmp_path / "surface")
  back = load_surface(tmp_path / "surface")
  assert back.spec.form == "transfer"
  np.testing.assert_allclose(back.draws(w_new[:5]), s.draws(w_new[:5]), rtol=1e-5,
                             atol=1e-6)
  # Per-domain power laws make the domains complements; on this law the held-out
  # contrasts say the transfer form is the better family.
  stack = fit.fit_surface(runs, "loss", config=_cfg(
      stack_members=("scaling", "transfer")))
  assert stack.info["weights"]["transfer"] > 0.5
  heldout = stack.info["heldout"]
  assert heldout["transfer"]["contrast_mse"] < heldout["scaling"]["contrast_mse"]


def test_hinge_member_follows_thresholds_and_the_stack_prefers_it(tmp_path):
  # In the threshold world a domain pays off only past a share of the mixture: a step
  # the concave default features cannot follow. The hinge member (the DML family with
  # kinks at shares of the uniform weight) predicts the held-out contrasts better, so
  # the stack weighs it above the plain DML member.
  world = worlds.make_world("threshold", seed=0)
  runs = world.sweep(n_runs=128, n_pools=16, seed=0)
  s = fit.fit_surface(runs, "loss", config=_cfg(stack_members=("dml", "hinge"),
                                                stack_covariates="aware"))
  heldout = s.info["heldout"]
  assert heldout["hinge"]["contrast_mse"] < 0.8 * heldout["dml"]["contrast_mse"]
  assert s.info["weights"]["hinge"] > 0.5
  member = s.members[list(s.info["weights"]).index("hinge")]
  assert "hinge" in member.info["chosen"]["kinds"]
  assert member.info["method"] == "dml"
  # Saved and read back, the stack answers the same (the member's spec keeps the kind).
  w_new = np.random.default_rng(3).dirichlet(np.ones(len(s.domains)), 5)
  s.save(tmp_path / "surface")
  back = load_surface(tmp_path / "surface")
  np.testing.assert_allclose(back.draws(w_new), s.draws(w_new), rtol=1e-5, atol=1e-6)


def test_fold_searches_start_at_the_full_fit_and_reach_their_modes():
  runs, _ = _scaling_truth_runs()
  w = runs.W
  y = runs.y("loss")
  y = (y - y.mean()) / y.std()
  s = np.zeros((len(y), 0))
  folds = np.arange(len(y)) % 4
  masks = np.stack([folds != k for k in range(4)] + [np.ones(len(y), bool)])
  maps, draws, report = scaling.fit_draws(w, None, s, y, masks, 16, 0)
  assert maps.shape == (5, draws.shape[2]) and draws.shape[:2] == (5, 16)
  # The full fit is the last mask's and starts at the priors' centre, as a fit alone.
  alone, _, alone_report = scaling.fit_draws(w, None, s, y, masks[-1:], 16, 0)
  np.testing.assert_allclose(maps[-1], alone[0], atol=1e-6)
  assert report["steps"] == alone_report["steps"]
  objective = scaling._objective(jnp.asarray(w, jnp.float32), None,
                                 jnp.asarray(s, jnp.float32), jnp.asarray(y, jnp.float32))
  potential = jax.jit(objective.potential)
  for k in range(4):  # each fold, started at the full MAP, ends at its own mode
    cold, _, _ = scaling.fit_draws(w, None, s, y, masks[k:k + 1], 16, 0)
    warm_f, cold_f = (float(potential(jnp.asarray(m, jnp.float32), masks[k]))
                      for m in (maps[k], cold[0]))
    assert warm_f <= cold_f + 1e-4
    assert float(potential(jnp.asarray(maps[-1], jnp.float32), masks[k])) > warm_f - 1e-6


@pytest.mark.parametrize("form", ["boxcox", "transfer"])
@pytest.mark.parametrize("tokens_known", [True, False])
def test_map_search_gradient_equals_autodiff(tokens_known, form):
  rng = np.random.default_rng(2)
  d, k, n = 3, 2, 40
  flat0, _ = scaling._flat_init(d, k, form)
  w = jnp.asarray(rng.dirichlet(np.ones(d), n), jnp.float32)
  s = jnp.asarray(rng.standard_normal((n, k)), jnp.float32)
  u = jnp.asarray(rng.uniform(0.05, 2.0, (n, d)), jnp.float32) if tokens_known else None
  y = jnp.asarray(rng.standard_normal(n), jnp.float32)
  objective = scaling._objective(w, u, s, y, form)
  mask = jnp.asarray(rng.random(n) < 0.7)
  ours = jax.jit(objective.gradient_and_curvature)
  autodiff = jax.jit(jax.grad(objective.potential))
  for _ in range(3):
    flat = flat0 + 0.5 * rng.standard_normal(flat0.shape).astype(np.float32)
    g, h = ours(flat, mask)
    np.testing.assert_allclose(g, autodiff(flat, mask), rtol=1e-4, atol=1e-5)
    assert np.all(np.linalg.eigvalsh(np.asarray(h, np.float64)) > 0)


@pytest.mark.parametrize("form", scaling.FORMS)
@pytest.mark.parametrize("tokens_known", [True, False])
def test_structured_jacobian_equals_autodiff(form, tokens_known):
  rng = np.random.default_rng(0)
  d, k, n = 4, 3, 30
  flat0, unravel = scaling._flat_init(d, k, form)
  flat = flat0 + 0.3 * rng.standard_normal(flat0.shape).astype(np.float32)
  w = jnp.asarray(rng.dirichlet(np.ones(d), n), jnp.float32)
  s = jnp.asarray(rng.standard_normal((n, k)), jnp.float32)
  u = jnp.asarray(rng.uniform(0.05, 2.0, (n, d)), jnp.float32) if tokens_known else None
  autodiff = jax.jit(jax.jacfwd(lambda f: scaling.mean_fn(unravel(f), w, u, s, form)))(
      flat)
  structured = jax.jit(lambda f: jax.vmap(lambda row: ravel_pytree(row)[0])(
      scaling.mean_jacobian(unravel(f), w, u, s, form)))(flat)
  np.testing.assert_allclose(structured, autodiff, atol=1e-5)


def test_effective_share_follows_data_constrained_decay():
  u = np.full((1, 3), 0.1)  # each domain holds a tenth of the budget
  w = np.array([[0.05, 0.1, 0.85]])
  eff = np.asarray(scaling.effective_share(w, u, np.log(15.4)))
  assert eff[0, 0] == pytest.approx(0.05)  # under one epoch: all tokens count
  assert eff[0, 1] == pytest.approx(0.1)
  # 8.5 epochs: 7.5 repeated, each worth less than a fresh one, but more than none.
  assert 0.1 < eff[0, 2] < 0.85
  assert eff[0, 2] == pytest.approx(0.1 * (1 + 15.4 * (1 - np.exp(-7.5 / 15.4))),
                                    rel=1e-5)


def test_stack_weights_pick_the_true_member():
  rng = np.random.default_rng(0)
  target = rng.standard_normal(200)
  good = target + 0.05 * rng.standard_normal(200)
  bad = rng.standard_normal(200)
  a = robust.stack_weights(np.stack([bad, good]), target)
  assert a.sum() == pytest.approx(1.0)
  assert a[1] > 0.95


def test_conformal_scale_is_one_for_calibrated_errors():
  rng = np.random.default_rng(1)
  sd = rng.uniform(0.5, 2.0, 4000)
  err = sd * rng.standard_normal(4000)
  assert robust.conformal_scale(err ** 2, sd ** 2, 0.9) == pytest.approx(1.0, abs=0.06)
  # Errors twice as wide as the posterior says: the spread is doubled.
  assert robust.conformal_scale((2 * err) ** 2, sd ** 2, 0.9) == pytest.approx(2.0,
                                                                              abs=0.12)


def test_grouped_conformal_scale_weighs_pool_states_not_contrasts():
  rng = np.random.default_rng(3)
  r = rng.chisquare(1, 60)
  # One contrast per unit: the ordinary split-conformal bound, the ceil(61 * 0.9) =
  # 55th smallest error.
  scale, info = robust.grouped_conformal_scale(r, np.arange(60), 0.9)
  assert scale == pytest.approx(np.sqrt(np.sort(r)[54]) / robust.central_z(0.9))
  assert info["quantile"] == pytest.approx(0.9 * 61 / 60) and "reason" not in info
  # 48 well-fitted states of 2 contrasts and 2 misfitted states of 40 each: counted as
  # contrasts, the misfitted states hold 45% of the errors and set the bound; as units,
  # 4% of the mass, under the 1 - 0.9 * 51 / 50 the bound may leave out.
  good, bad = rng.chisquare(1, 96), 100.0 + rng.chisquare(1, 80)
  r = np.concatenate([good, bad])
  units = np.concatenate([np.repeat(np.arange(48), 2), 48 + np.repeat(np.arange(2), 40)])
  pooled, info = robust.grouped_conformal_scale(r, units, 0.9)
  assert info["units"] == 50
  z = robust.central_z(0.9)
  assert robust._conformal_scale(r, 0.9) >= np.sqrt(100.0) / z
  assert pooled <= np.sqrt(good.max()) / z
  # Nine states are the fewest a 90% bound on a new one can stand on (the largest
  # error); with eight, the largest error too, and the info says the bound is short.
  nine, info = robust.grouped_conformal_scale(r[:90], np.repeat(np.arange(9), 10), 0.9)
  assert nine == pytest.approx(np.sqrt(r[:90].max()) / z) and "reason" not in info
  few, info = robust.grouped_conformal_scale(r[:80], np.repeat(np.arange(8), 10), 0.9)
  assert few == pytest.approx(np.sqrt(r[:80].max()) / z)
  assert "8 pool states" in info["reason"] and "needs 9" in info["reason"]


def test_conformal_units_pools_widens_a_few_state_sweep_and_is_reported():
  """16 pool states: a new pool's 90% bound is the pooled errors' 0.956 quantile, not
  the contrasts' 0.9, so the intervals widen; the stack itself is unchanged."""
  world, runs = _world_runs()
  pairs, pools = _units_stack("pairs"), _units_stack("pools")
  up, uo = pairs.info["calibration"]["units"], pools.info["calibration"]["units"]
  assert up == {"setting": "pairs"}
  assert uo["setting"] == "pools" and uo["units"] == 16
  assert uo["quantile"] == pytest.approx(0.9 * 17 / 16)
  assert pools.info["conformal_scale"] > pairs.info["conformal_scale"]
  assert pools.info["weights"] == pairs.info["weights"]
  with pytest.raises(ValueError, match="surface.conformal_units: unknown 'runs'"):
    fit.fit_surface(runs, "loss", config=_cfg(conformal_units="runs"))
  # One mixture per pool state: the held-out cells are folds, and the contrasts stay
  # the units, with the reason said.
  single = worlds.make_world("synergy", seed=0).sweep(n_runs=96, n_pools=96, seed=0)
  s = fit.fit_surface(single, "loss", config=_cfg(conformal_units="pools"))
  assert s.info["contrasts_within"] == "folds"
  assert re.fullmatch(r"held-out cells are folds of \d+ pool states, one mixture each: "
                      r"the contrasts are the units",
                      s.info["calibration"]["units"]["reason"])
  # Four pool states, fewer than a 90% bound for a new pool needs: the contrasts stay
  # the units (the largest error alone, the only bound left, can be arbitrarily large),
  # and the default's intervals are "pairs"'s.
  four = worlds.make_world("synergy", seed=0).sweep(n_runs=64, n_pools=4, seed=0)
  s4, p4 = (fit.fit_surface(four, "loss", config=_cfg(conformal_units=u))
            for u in ("pools_reported", "pairs"))
  assert s4.info["contrasts_within"] == "pool states"
  assert s4.info["calibration"]["units"] == {
      "setting": "pools_reported", "reason": "4 pool states; a 90% bound for a new pool "
      "needs 9: the contrasts are the units"}
  assert (s4.scale, s4.optimiser_scale, s4.report_scale) == pytest.approx(
      (p4.scale, p4.scale, p4.scale)) and not s4.reports_apart
  # One pool state (as in RegMix's sweep): a new mixture, not a new pool, is the query.
  one = worlds.make_world("synergy", seed=0).sweep(n_runs=64, n_pools=1, seed=0)
  s = fit.fit_surface(one, "loss", config=_cfg(conformal_units="pools"))
  assert s.info["calibration"]["units"] == {
      "setting": "pools", "reason": "the sweep has one pool state: the contrasts are "
      "the units"}


def test_conformal_units_pools_reported_reports_pools_and_decides_as_pairs(tmp_path):
  """"pools_reported": predict, cate and a recommendation's reported gains carry
  "pools"'s factor, while the optimiser decides on "pairs"'s draws, so the pick is
  "pairs"'s, also with a discrepancy term; the factors survive save and load."""
  world, runs = _world_runs()
  pairs, pools = _units_stack("pairs"), _units_stack("pools")
  both = _stack()  # the default
  assert fit.default_config().conformal_units == "pools_reported"
  assert both.scale == pytest.approx(pools.scale) and both.scale > pairs.scale
  assert both.optimiser_scale == pytest.approx(pairs.optimiser_scale)
  assert both.report_scale == pytest.approx(pools.scale) and both.reports_apart
  assert not pairs.reports_apart and not pools.reports_apart
  units = both.info["calibration"]["units"]
  assert units["setting"] == "pools_reported" and units["units"] == 16
  assert units["decisions"] == {"units": "contrasts",
                                "scale": pytest.approx(pairs.optimiser_scale)}
  assert both.info["level_sd"] == pytest.approx(pairs.info["level_sd"])
  pool = world.new_pools(1, seed=3)[0]
  x, tokens, kw = _pool_case(world, both, pool)
  w = np.random.default_rng(0).dirichlet(np.ones(len(both.domains)), 8)
  q = dict(tokens=tokens, budget=pool.budget, ci=0.9)
  a, b = (s.cate(w, pairs.w_ref, x, **q) for s in (pools, both))
  np.testing.assert_allclose(b.hi - b.lo, a.hi - a.lo, rtol=1e-5, atol=1e-7)
  x_F = jnp.asarray(both._x(x), jnp.float32)
  z = [np.asarray(fn(params, jnp.asarray(w, jnp.float32), x_F)) for fn, params in (
      s.optimiser_sampler(tokens, pool.budget) for s in (pairs, both))]
  np.testing.assert_allclose(z[1], z[0], rtol=1e-5, atol=1e-6)
  ref, got = recommend(pairs, **kw), recommend(both, **kw)
  assert got.weights == ref.weights
  # Same pick, same mean gain; the reported interval is the wider factor's.
  g_ref, g_got = ref.improvement_over_reference, got.improvement_over_reference
  assert g_got.mean == pytest.approx(g_ref.mean, rel=1e-4, abs=1e-7)
  assert got.weights != got.reference
  assert g_got.hi - g_got.lo > 1.1 * (g_ref.hi - g_ref.lo)
  both.save(tmp_path / "b")
  back = load_surface(tmp_path / "b")
  assert (back.scale, back.optimiser_scale, back.report_scale) == pytest.approx(
      (both.scale, both.optimiser_scale, both.report_scale))
  # With a discrepancy term the decisions keep "pairs"'s amplitude too.
  rff_pairs, rff_both = (fit.fit_surface(runs, "loss", config=_cfg(
      conformal_units=u, stack_discrepancy="rff")) for u in ("pairs", "pools_reported"))
  amp = rff_both.info["discrepancy"]["amplitude"]
  assert amp > rff_pairs.info["discrepancy"]["amplitude"] > 0
  assert rff_both.decision_disc_ratio == pytest.approx(
      rff_pairs.info["discrepancy"]["amplitude"] / amp)
  assert rff_both.info["level_sd"] == pytest.approx(rff_pairs.info["level_sd"])
  z = [np.asarray(fn(params, jnp.asarray(w, jnp.float32), x_F)) for fn, params in (
      s.optimiser_sampler(tokens, pool.budget) for s in (rff_pairs, rff_both))]
  np.testing.assert_allclose(z[1], z[0], rtol=1e-5, atol=1e-6)
  rff_both.save(tmp_path / "r")
  assert load_surface(tmp_path / "r").decision_disc_ratio == pytest.approx(
      rff_both.decision_disc_ratio)


def test_coverage_by_size_shows_where_one_conformal_factor_misfits():
  rng = np.random.default_rng(2)
  size = rng.uniform(0.0, 2.0, 4000)
  # Errors relative to the spread fall with the contrast's size: small contrasts need
  # a wider interval than the one factor gives them, large ones a narrower.
  sd = np.ones(4000)
  err = (2.0 - 0.75 * size) * rng.standard_normal(4000)
  r = err ** 2 / sd ** 2
  scale = robust.conformal_scale(err ** 2, sd ** 2, 0.9)
  bins = robust.coverage_by_size(size, r, scale, 0.9)
  assert len(bins) == 4 and sum(b["contrasts"] for b in bins) == 4000
  assert [b["size_lo"] for b in bins] == sorted(b["size_lo"] for b in bins)
  assert all(b["size_lo"] <= b["size_hi"] for b in bins)
  cov = [b["coverage"] for b in bins]
  assert cov == sorted(cov) and cov[0] < 0.85 and cov[-1] > 0.95
  assert bins[0]["factor"] > 1.1 and bins[-1]["factor"] < 0.9
  # The bins' coverage, weighted by their counts, is the fit's coverage.
  (overall,) = robust.coverage_by_size(size, r, scale, 0.9, bins=1)
  assert overall["factor"] == pytest.approx(1.0)
  assert sum(b["coverage"] * b["contrasts"] for b in bins) / 4000 == pytest.approx(
      overall["coverage"])
  # Errors proportional to the spread: every bin needs the one factor.
  flat = robust.coverage_by_size(size, rng.standard_normal(4000) ** 2, 1.0, 0.9)
  assert all(0.9 < b["factor"] < 1.1 for b in flat)
  # Too few contrasts for four bins of MIN_BIN_CONTRASTS: one bin.
  few = robust.coverage_by_size(size[:50], r[:50], scale, 0.9)
  assert len(few) == 1 and few[0]["contrasts"] == 50


def test_cell_pairs_are_every_within_cell_pair_and_sampled_past_the_cap():
  cells = np.array([2, 0, 2, 1, 0, 2, 3])
  i, j = robust.cell_pairs(cells, 100, seed=0)
  got = sorted(zip(i.tolist(), j.tolist()))
  assert got == [(0, 2), (0, 5), (1, 4), (2, 5)]  # cell 1 and 3 hold one row each
  assert np.all(cells[i] == cells[j]) and np.all(i < j)
  big = np.repeat(np.arange(3), 40)  # 3 x 780 pairs
  a = robust.cell_pairs(big, 500, seed=1)
  b = robust.cell_pairs(big, 500, seed=1)
  assert len(a[0]) == 500 and len(set(zip(*a))) == 500
  np.testing.assert_array_equal(a[0], b[0])
  np.testing.assert_array_equal(a[1], b[1])
  assert np.all(big[a[0]] == big[a[1]])
  empty = robust.cell_pairs(np.arange(5), 10, seed=0)
  assert len(empty[0]) == len(empty[1]) == 0


def test_cell_pairs_leave_out_pairs_within_a_group_before_the_cap():
  """Pairs of one replicate group leave before the sample: past the cap a sweep still
  scores `max_pairs` contrasts of distinct mixtures."""
  cells = np.array([2, 0, 2, 1, 0, 2, 3])
  apart = np.array([5, 1, 5, 2, 3, 6, 4])  # rows 0 and 2 are replicates
  i, j = robust.cell_pairs(cells, 100, seed=0, apart_N=apart)
  assert sorted(zip(i.tolist(), j.tolist())) == [(0, 5), (1, 4), (2, 5)]
  big = np.repeat(np.arange(3), 40)  # 3 x 780 pairs, 3 x 20 x 1 of them replicates
  groups = np.arange(len(big)) // 2
  a, b = robust.cell_pairs(big, 2000, seed=1, apart_N=groups)
  assert len(a) == 2000 and len(set(zip(a.tolist(), b.tolist()))) == 2000
  assert np.all(groups[a] != groups[b]) and np.all(big[a] == big[b])
  # Without the groups the same cap's sample holds replicate pairs (about 2000 / 39).
  a, b = robust.cell_pairs(big, 2000, seed=1)
  assert np.sum(groups[a] == groups[b]) > 0


def test_stack_calibration_setting_is_checked_and_reported():
  s = _stack()
  assert s.info["calibrated_on"].endswith("within-cell pairs")
  _, runs = _world_runs()
  means = fit.fit_surface(runs, "loss", config=_cfg(stack_calibration="cell_means"))
  assert means.info["calibrated_on"].endswith("runs against their cell means")
  assert 0 < means.info["conformal_scale"] != s.info["conformal_scale"]
  assert 0 < means.info["calibration"]["final_over_heldout_sd"] < 1
  bad = _cfg(stack_calibration="medians")
  with pytest.raises(ValueError, match="surface.stack_calibration: unknown 'medians'"):
    fit.fit_surface(runs, "loss", config=bad)


def test_stack_reports_what_its_calibration_saw():
  """The held-out contrasts the conformal step scored: their count, median error and
  calibrated sd, the share inside the interval (at least the level, by construction)
  and whether the run noise was taken out, which only replicate runs allow."""
  world, runs = _world_runs()
  frame = runs.to_frame()
  # Two runs of this sweep drew the same one-hot mixture in one pool (replicates by
  # accident); without them no run repeats another.
  once = frame[~frame.filter(like="w_").round(9).duplicated()]
  assert len(once) == len(frame) - 2
  s = fit.fit_surface(Runs(once.reset_index(drop=True), source="once"), "loss",
                      config=_cfg())
  cal = s.info["calibration"]
  assert cal["contrasts"] > 100
  # The default's factor is the pool states' bound, so the contrasts are covered at
  # least at the level, and more where a few states hold the largest errors.
  assert 0.9 <= cal["coverage"] < 1.0
  assert 0 < cal["median_abs_error"] < 10 * cal["median_sd"]
  assert cal["run_noise"] == "left in (no replicate runs)"
  by_size = cal["by_contrast_size"]
  assert len(by_size) == 4
  assert sum(b["contrasts"] for b in by_size) == cal["contrasts"]
  assert sum(b["coverage"] * b["contrasts"] for b in by_size) / cal["contrasts"] == \
      pytest.approx(cal["coverage"])
  twice = fit.fit_surface(world.sweep(n_runs=64, n_pools=16, seeds=2, seed=0), "loss",
                          config=_cfg())
  assert twice.info["calibration"]["run_noise"].startswith("taken out")
  assert 0.0 < twice.info["calibration"]["noise_share"] < 1.5
  assert cal["noise_share"] is None
  assert 0.9 <= twice.info["calibration"]["coverage"] < 1.0
  # Replicate runs' contrasts of one mixture with itself have no spread: by default
  # (surface.replicate_pairs = "drop") they leave the calibration, and the pool states'
  # bound stays near the contrasts' factor.
  units = twice.info["calibration"]["units"]
  assert units["units"] == 16 and units["zero_spread_contrasts"] == 0
  assert twice.info["calibration"]["replicate_pairs_dropped"] > 0
  assert twice.optimiser_scale <= twice.report_scale < 3 * twice.optimiser_scale


def test_replicate_pairs_drop_leaves_them_out_of_the_contrasts_factor():
  """surface.replicate_pairs = "drop" (the default): the pairs of replicate runs (no
  spread: every member predicts them exactly) leave the "pairs" calibration, so the
  contrasts' factor, which the decisions read, no longer moves with them; the pool
  states' bound, which left them out already, is unchanged."""
  world, _ = _world_runs()
  runs = world.sweep(n_runs=64, n_pools=16, seeds=2, seed=0)
  assert fit.default_config().replicate_pairs == "drop"
  keep = fit.fit_surface(runs, "loss", config=_cfg(replicate_pairs="keep"))
  drop = fit.fit_surface(runs, "loss", config=_cfg())
  cal_k, cal_d = keep.info["calibration"], drop.info["calibration"]
  n_rep = cal_k["units"]["zero_spread_contrasts"]
  assert n_rep > 0 and cal_k["replicate_pairs_dropped"] == 0
  assert cal_d["replicate_pairs_dropped"] == n_rep
  assert cal_d["contrasts"] == cal_k["contrasts"] - n_rep
  assert cal_d["units"]["zero_spread_contrasts"] == 0
  assert drop.report_scale == pytest.approx(keep.report_scale, rel=1e-9)
  # Kept, a third or so of the replicate pairs have unbounded normalised errors (their
  # noise above its expectation), which lifts the contrasts' quantile.
  assert drop.optimiser_scale < keep.optimiser_scale
  with pytest.raises(ValueError, match="surface.replicate_pairs"):
    fit.fit_surface(runs, "loss", config=_cfg(replicate_pairs="some"))


def test_better_half_marks_the_runs_a_decision_moves_toward():
  y = np.array([3.0, 1.0, 2.0, 5.0, 4.0, 0.5, 9.0])
  cells = np.array([0, 0, 0, 1, 1, 1, 2])  # cell 2 holds one run: no contrast
  np.testing.assert_array_equal(robust.better_half(y, cells, maximize=False),
                                [False, True, True, False, True, True, False])
  np.testing.assert_array_equal(robust.better_half(y, cells, maximize=True),
                                [True, False, True, True, True, False, False])


def test_stack_focus_top_weighs_the_better_half_and_is_checked():
  """surface.stack_focus = "top": the weights (and the covariate set) are chosen on the
  held-out contrasts of the better half of each cell's runs; the calibration still
  scores every pair."""
  _, runs = _world_runs()
  base = _stack()
  top = fit.fit_surface(runs, "loss", config=_cfg(stack_focus="top"))
  assert base.info["stack_focus"] == {"setting": "all", "runs": len(runs.W)}
  n_top = top.info["stack_focus"]["runs"]
  assert top.info["stack_focus"]["setting"] == "top"
  assert len(runs.W) // 3 < n_top < 2 * len(runs.W) // 3
  assert top.info["weights"] != base.info["weights"]
  assert top.info["calibration"]["contrasts"] == base.info["calibration"]["contrasts"]
  with pytest.raises(ValueError, match="surface.stack_focus"):
    fit.fit_surface(runs, "loss", config=_cfg(stack_focus="best"))


def test_stack_discrepancy_setting_is_checked_and_reported():
  s = _stack()
  assert s.info["discrepancy"]["setting"] == "none"
  assert s.info["discrepancy"]["amplitude"] == 0.0
  assert s.disc[0].shape == (0, len(s.domains))
  _, runs = _world_runs()
  with pytest.raises(ValueError, match="surface.stack_discrepancy: unknown 'gp'"):
    fit.fit_surface(runs, "loss", config=_cfg(stack_discrepancy="gp"))


def _restacked(s: robust.StackedSurface, disc=None, x_bounds=None, hedge_S=None
               ) -> robust.StackedSurface:
  """The stack `s` with another discrepancy (default: its own), covariate bounds and
  extrapolation-gap draws."""
  return robust.StackedSurface(
      s.members, s.weights, s.scale, s.level_S, s.disc if disc is None else disc,
      x_bounds, hedge_S, s.optimiser_scale, report_scale=s.report_scale,
      decision_disc_ratio=s.decision_disc_ratio, domains=s.domains,
      features=s.features, outcome=s.outcome, maximize=s.maximize,
      support_stats=s.support_stats, info=s.info)


def test_stack_discrepancy_adds_to_every_draw_and_is_saved(tmp_path):
  s = _stack()
  _, runs = _world_runs()
  d = len(s.domains)
  disc = discrepancy.draw_weights(discrepancy.features(d, 0.3, seed=0), 0.05,
                                  len(s.level_S), d, seed=0)
  t = _restacked(s, disc=disc)
  w, x = runs.W[:7], runs.X[0]
  n = t.n_draws
  delta = discrepancy.draws(*(np.asarray(a, np.float64) for a in disc), w, np.cos)
  np.testing.assert_allclose(t.draws(w, x) - s.draws(w, x)[:n], delta[:n], atol=1e-6)
  assert np.std(delta) > 0.01
  # Its draws are centred, as are the pool level's: neither moves the predictive mean
  # at any mixture, however few the draws.
  np.testing.assert_allclose(delta.mean(0), 0.0, atol=1e-6)
  assert abs(float(np.mean(s.level_S))) < 1e-6
  np.testing.assert_allclose(t.draws(w, x).mean(0), s.draws(w, x)[:n].mean(0), atol=1e-6)
  fn, params = t.sampler()
  np.testing.assert_allclose(np.asarray(jax.jit(fn)(params, w, x)), t.draws(w, x),
                             rtol=1e-4, atol=1e-5)
  t.save(tmp_path / "t")
  np.testing.assert_allclose(load_surface(tmp_path / "t").draws(w, x), t.draws(w, x),
                             rtol=1e-6, atol=1e-7)
  # A stack saved before the discrepancy term (and the covariate bounds) has neither.
  s.save(tmp_path / "s")
  np.savez(tmp_path / "s" / "posterior.npz", level_S=s.level_S)
  old = load_surface(tmp_path / "s")
  assert old.disc[0].shape == (0, d)
  assert np.all(np.isinf(old.x_bounds[0])) and np.all(np.isinf(old.x_bounds[1]))
  np.testing.assert_allclose(old.draws(w, x), s.draws(w, x), rtol=1e-6, atol=1e-7)
  with pytest.raises(ValueError, match="discrepancy frequencies have 3 columns"):
    _restacked(s, disc=(np.zeros((2, 3)), np.zeros(2), np.zeros((5, 2))))


def _same_inside_jitted_and_saved(t: robust.StackedSurface, s: robust.StackedSurface,
                                  w, inside, far, tmp_path) -> None:
  """`t` (a restacked `s`) equals `s` at in-range covariates, and its jitted sampler
  and its saved-and-loaded copy give its own draws at the far-out ones."""
  np.testing.assert_allclose(t.draws(w, inside), s.draws(w, inside), rtol=1e-6,
                             atol=1e-7)
  fn, params = t.sampler()
  np.testing.assert_allclose(np.asarray(jax.jit(fn)(params, w, far)), t.draws(w, far),
                             rtol=1e-4, atol=1e-5)
  t.save(tmp_path / "t")
  np.testing.assert_allclose(load_surface(tmp_path / "t").draws(w, far), t.draws(w, far),
                             rtol=1e-6, atol=1e-7)


def test_clipped_covariates_are_the_sweeps_range_for_the_members(tmp_path):
  s = _stack()
  _, runs = _world_runs()
  lo, hi = runs.X.min(0), runs.X.max(0)
  t = _restacked(s, x_bounds=(lo, hi))
  w = runs.W[:5]
  far = hi + 10.0 * (hi - lo + 1.0)  # every covariate far above the sweep's range
  np.testing.assert_allclose(t.draws(w, far), s.draws(w, hi), rtol=1e-6, atol=1e-7)
  assert not np.allclose(s.draws(w, far), s.draws(w, hi))  # unclipped, they move
  _same_inside_jitted_and_saved(t, s, w, runs.X[3], far, tmp_path)
  # The fit sets the bounds to the sweep's range and says so; a bad value is named.
  small = runs.select(np.arange(64))
  clipped = fit.fit_surface(small, "loss", config=_cfg(covariate_extrapolation="clip"))
  assert clipped.info["covariate_extrapolation"] == "clip"
  np.testing.assert_allclose(clipped.x_bounds[0], small.X.min(0), rtol=1e-6)
  np.testing.assert_allclose(clipped.x_bounds[1], small.X.max(0), rtol=1e-6)
  assert s.info["covariate_extrapolation"] == "linear"
  assert np.all(np.isinf(s.x_bounds[0])) and np.all(np.isinf(s.x_bounds[1]))
  with pytest.raises(ValueError, match="surface.covariate_extrapolation: unknown 'flat'"):
    fit.fit_surface(small, "loss", config=_cfg(covariate_extrapolation="flat"))


def test_hedged_extrapolation_keeps_the_clipped_mean_and_widens(tmp_path):
  s = _stack()
  _, runs = _world_runs()
  lo, hi = runs.X.min(0), runs.X.max(0)
  clipped = _restacked(s, x_bounds=(lo, hi))
  h_S = np.random.default_rng(5).standard_normal(len(s.level_S))
  t = _restacked(s, x_bounds=(lo, hi), hedge_S=h_S)
  w = runs.W[:6]
  far = hi + 2.0 * (hi - lo + 1.0)
  # Off the sweep's range: the clipped mean, the spread at the raw covariates, and h
  # times the gap between the raw and the clipped stacked means.
  raw_SxN, clip_N = s.draws(w, far), clipped.draws(w, far).mean(0)
  gap_N = raw_SxN.mean(0) - clip_N
  assert np.max(np.abs(gap_N)) > 0.01
  n = t.n_draws
  expected = (clip_N[None] + (raw_SxN - raw_SxN.mean(0))[:n]
              + h_S[:n, None] * gap_N[None])
  np.testing.assert_allclose(t.draws(w, far), expected, rtol=1e-5,
                             atol=1e-5)  # h is kept in float32
  # So its intervals are wider than the clipped ones and about as wide as the raw ones.
  sd_N = np.std(t.draws(w, far), 0)
  assert np.all(sd_N > np.std(clipped.draws(w, far), 0))
  assert np.all(sd_N > 0.9 * np.std(raw_SxN, 0))
  # Inside the range nothing changes.
  _same_inside_jitted_and_saved(t, s, w, runs.X[3], far, tmp_path)
  with pytest.raises(ValueError, match="hedge draws: 3, fewer than"):
    _restacked(s, x_bounds=(lo, hi), hedge_S=np.zeros(3))
  # The fit: the sweep's range, one standard normal per draw, said in the info.
  small = runs.select(np.arange(64))
  hedged = fit.fit_surface(small, "loss",
                           config=_cfg(covariate_extrapolation="hedge"))
  assert hedged.info["covariate_extrapolation"] == "hedge"
  np.testing.assert_allclose(hedged.x_bounds[1], small.X.max(0), rtol=1e-6)
  assert len(hedged.hedge_S) == len(hedged.level_S)
  assert 0.5 < np.std(hedged.hedge_S) < 1.5
  assert abs(float(np.mean(hedged.hedge_S))) < 1e-6  # the gap adds no mean


def test_stack_is_a_calibrated_surface_on_new_pools():
  world, _ = _world_runs()
  s = _stack()
  assert s.info["method"] == "stack"
  assert set(s.info["weights"]) == {"dml", "scaling"}
  assert sum(s.info["weights"].values()) == pytest.approx(1.0)
  assert s.info["folds_by"] == "pool states"
  rng = np.random.default_rng(3)
  order = [world.domains.index(d) for d in s.domains]
  covers, rhos = [], []
  for pool in world.new_pools(6, seed=1):
    shares = pool.tokens_D / pool.tokens_D.sum()
    w = rng.dirichlet(shares * np.exp(rng.uniform(np.log(0.5), np.log(5.0))), 40)
    truth = world.outcome(w, pool) - world.outcome(shares[None], pool)
    x = dict(zip(world.features, pool.x_F))
    p = s.cate(w[:, order], shares[order], x, tokens=pool.tokens_D[order],
               budget=pool.budget)
    covers.append(np.mean(p.covers(truth)))
    rhos.append(stats.spearmanr(p.mean, truth).statistic)
  print(f"stack on synergy: coverage {np.mean(covers):.3f}, Spearman {np.mean(rhos):.3f}")
  assert np.mean(rhos) > 0.8
  # A 128-run sweep over 16 pool states leaves the conformal quantile coarse; at the
  # study's sizes (384 runs, 48 states) coverage sits in the 85-95% band.
  assert 0.6 <= np.mean(covers) <= 1.0


def test_stack_save_load_and_determinism(tmp_path):
  _, runs = _world_runs()
  s = _stack()
  s.save(tmp_path / "surface")
  back = load_surface(tmp_path / "surface")
  w = runs.W[:7]
  np.testing.assert_allclose(back.draws(w, runs.X[0]), s.draws(w, runs.X[0]), rtol=1e-5,
                             atol=1e-6)
  again = fit.fit_surface(runs, "loss", config=_cfg())
  assert again.info["weights"] == s.info["weights"]
  np.testing.assert_allclose(again.draws(w, runs.X[0]), s.draws(w, runs.X[0]),
                             rtol=1e-5, atol=1e-6)
  # The jittable sampler answers as the draws do.
  fn, params = s.sampler()
  np.testing.assert_allclose(np.asarray(fn(params, w, runs.X[0])),
                             s.draws(w, runs.X[0]), rtol=1e-4, atol=1e-5)


def test_scaling_surface_saved_without_form_loads_as_bare_power(tmp_path):
  runs, s = _scaling_fit_60()
  s.save(tmp_path / "surface")
  back = load_surface(tmp_path / "surface")
  assert back.spec.form == "boxcox"
  w = runs.W[:5]
  np.testing.assert_allclose(back.draws(w), s.draws(w), rtol=1e-5, atol=1e-6)
  # A surface written before the Box-Cox form has no `form` in its spec: its draws are
  # parameters of the bare power law and must be read as such.
  meta_path = tmp_path / "surface" / "surface.json"
  meta = json.loads(meta_path.read_text())
  del meta["spec"]["form"], meta["spec"]["predictive"]
  meta_path.write_text(json.dumps(meta))
  old = load_surface(tmp_path / "surface")
  assert (old.spec.form, old.spec.predictive) == ("power", "sampled")
  meta["spec"]["form"] = "cubic"
  meta_path.write_text(json.dumps(meta))
  with pytest.raises(ValueError, match=r"surface\.json: bad 'spec'.*form 'cubic'"):
    load_surface(tmp_path / "surface")
  theta = scaling.unflatten(old.spec, old.params["draws_SxP"][0])
  expected = scaling.mean_fn(theta, w, None, np.zeros((5, 0)), "power")
  y_mu, y_sd = float(old.params["y_mu"]), float(old.params["y_sd"])
  np.testing.assert_allclose(old.draws(w)[0], y_mu + y_sd * np.asarray(expected),
                             rtol=1e-5, atol=1e-5)


def test_linearised_predictive_is_the_first_order_model_around_the_map():
  runs, s = _scaling_fit_60()
  assert s.spec.predictive == "linearised"
  map_p = np.asarray(s.params["map_P"])
  v = np.random.default_rng(1).standard_normal(map_p.shape).astype(np.float32)
  w = runs.W[:6]
  def surface(draws, predictive="linearised"):
    return robust.ScalingSurface(
        dataclasses.replace(s.spec, predictive=predictive),
        {**s.params, "draws_SxP": draws}, domains=s.domains, features=s.features,
        outcome=s.outcome, maximize=False, support_stats=s.support_stats)

  for step, tol in ((0.0, 1e-6), (1e-3, 1e-4)):
    draws = np.stack([map_p, map_p + step * v])
    a, b = surface(draws).draws(w), surface(draws, "sampled").draws(w)
    np.testing.assert_allclose(a[0], b[0], rtol=1e-6, atol=1e-6)  # the MAP itself
    np.testing.assert_allclose(a[1], b[1], atol=tol * float(np.abs(b[1]).max()))
  # Draws far from the MAP on either side average to the plug-in prediction.
  np.testing.assert_allclose(surface(np.stack([map_p + v, map_p - v])).draws(w).mean(0),
                             surface(map_p[None]).draws(w)[0], rtol=1e-5, atol=1e-5)


def test_small_sweep_falls_back_to_dml_and_says_so():
  _, runs = _world_runs()
  s = fit.fit_surface(runs.select(np.arange(20)), "loss", config=_cfg())
  assert s.info["method"] == "dml"
  assert s.info["stack"].startswith("skipped: 20 runs")


def test_unknown_stack_member_is_named():
  _, runs = _world_runs()
  with pytest.raises(ValueError, match="surface.stack_members.*forest"):
    fit.fit_surface(runs, "loss", config=_cfg(stack_members=("dml", "forest")))
  with pytest.raises(ValueError, match="surface.stack_members: empty"):
    fit.fit_surface(runs, "loss", config=_cfg(stack_members=()))


def test_conformal_factor_can_be_fitted_against_the_final_fits_spread():
  """"final" calibrates the factor on the spread it scales: the final fit's, narrower
  than the fold fits' at the same held-out contrasts (it saw every run), so the factor
  and the intervals grow, while the stack (weights, means) stays as it was."""
  world, runs = _world_runs()
  # The contrasts as the units: the factor then hits the level on them.
  held = _units_stack("pairs")
  final = fit.fit_surface(runs, "loss", config=_cfg(conformal_spread="final",
                                                    conformal_units="pairs"))
  ch, cf = held.info["calibration"], final.info["calibration"]
  assert (ch["spread"], cf["spread"]) == ("heldout", "final")
  assert 0 < ch["final_over_heldout_sd"] < 1
  assert cf["final_over_heldout_sd"] == pytest.approx(ch["final_over_heldout_sd"])
  assert final.info["conformal_scale"] > held.info["conformal_scale"]
  assert final.info["weights"] == held.info["weights"]
  # Both hit the level on the contrasts they were fitted on.
  assert 0.9 <= cf["coverage"] <= 0.95 and 0.9 <= ch["coverage"] <= 0.95
  pool = world.new_pools(1, seed=3)[0]
  x = dict(zip(world.features, pool.x_F))
  tokens = pool.tokens_D[[world.domains.index(d) for d in held.domains]]
  w = np.random.default_rng(0).dirichlet(np.ones(len(held.domains)), 8)
  ph, pf = (s.cate(w, held.w_ref, x, tokens=tokens, budget=pool.budget, ci=0.9)
            for s in (held, final))
  np.testing.assert_allclose(pf.mean, ph.mean, atol=1e-5)
  assert np.all(pf.hi - pf.lo >= ph.hi - ph.lo - 1e-6)
  with pytest.raises(ValueError, match="surface.conformal_spread: unknown 'fold'"):
    fit.fit_surface(runs, "loss", config=_cfg(conformal_spread="fold"))


def test_split_calibration_gives_final_intervals_and_the_defaults_decisions(tmp_path):
  """"split": intervals as "final" (the factor fitted against the spread it scales),
  while the optimiser and the held-out guard decide on the fold fits' factor, so the
  recommendation is the default's; the factor survives save and load."""
  world, runs = _world_runs()
  held = _stack()
  final = fit.fit_surface(runs, "loss", config=_cfg(conformal_spread="final"))
  split = fit.fit_surface(runs, "loss", config=_cfg(conformal_spread="split"))
  assert split.info["conformal_scale"] == pytest.approx(final.info["conformal_scale"])
  # The default's decisions take the contrasts' factor, its reports the intervals'.
  assert split.info["optimiser_scale"] == pytest.approx(held.info["optimiser_scale"])
  assert held.info["report_scale"] == held.info["conformal_scale"]
  assert split.info["heldout_guard"] == held.info["heldout_guard"]
  assert split.info["level_sd"] == pytest.approx(held.info["level_sd"])
  pool = world.new_pools(1, seed=3)[0]
  x, tokens, kw = _pool_case(world, split, pool)
  w = np.random.default_rng(0).dirichlet(np.ones(len(held.domains)), 8)
  pf, ps = (s.cate(w, held.w_ref, x, tokens=tokens, budget=pool.budget, ci=0.9)
            for s in (final, split))
  np.testing.assert_allclose(ps.hi - ps.lo, pf.hi - pf.lo, rtol=1e-4, atol=1e-6)
  for shifted in (False, True):
    p = world.shifted_pools(1, seed=2)[0] if shifted else pool
    _, _, kw = _pool_case(world, split, p)
    a, b = recommend(held, **kw), recommend(split, **kw)
    assert a.weights == b.weights
    assert a.improvement_over_uniform == b.improvement_over_uniform
  split.save(tmp_path / "s")
  back = load_surface(tmp_path / "s")
  assert back.optimiser_scale == pytest.approx(split.optimiser_scale)
  assert recommend(back, **kw).weights == b.weights
  with pytest.raises(ValueError, match="conformal_spread = 'split' with surface."
                                       "stack_discrepancy"):
    fit.fit_surface(runs, "loss", config=_cfg(conformal_spread="split",
                                              stack_discrepancy="rff"))


def test_clip_decisions_decides_as_clip_and_reads_as_linear(tmp_path):
  """"clip_decisions": the optimiser's draws see the covariates clipped to the sweep's
  range, so the recommendation is "clip"'s, while predict, cate and what the
  recommendation reports about its pick see them as they are, so the intervals are
  the default's; the setting survives save and load."""
  world, runs = _world_runs()
  # One member, covariates kept: the settings differ only in how the stack reads them.
  linear, clip, both = (fit.fit_surface(runs, "loss", config=_cfg(
      covariate_extrapolation=c, stack_members=("dml",), stack_covariates="aware"))
                        for c in ("linear", "clip", "clip_decisions"))
  assert both.info["covariate_extrapolation"] == "clip_decisions"
  assert both.clip_decisions_only and not clip.clip_decisions_only
  np.testing.assert_allclose(both.x_bounds[0], runs.X.min(0), rtol=1e-6)
  pool = world.shifted_pools(1, seed=2)[0]
  x, tokens, kw = _pool_case(world, both, pool)
  w = np.random.default_rng(0).dirichlet(np.ones(len(both.domains)), 8)
  q = dict(tokens=tokens, budget=pool.budget, ci=0.9)
  for read in ("predict", "cate"):
    args = (w, x) if read == "predict" else (w, linear.w_ref, x)
    a, b, c = (getattr(s, read)(*args, **q) for s in (linear, both, clip))
    np.testing.assert_allclose(b.lo, a.lo, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(b.hi, a.hi, rtol=1e-6, atol=1e-7)
    assert not np.allclose(c.hi - c.lo, a.hi - a.lo)  # this pool leaves the range
  # The optimiser's draws are "clip"'s, not "linear"'s, and so is the recommendation.
  x_F = jnp.asarray(both._x(x), jnp.float32)
  z = [np.asarray(fn(params, jnp.asarray(w, jnp.float32), x_F)) for fn, params in (
      s.optimiser_sampler(tokens, pool.budget) for s in (linear, both, clip))]
  np.testing.assert_allclose(z[1], z[2], rtol=1e-5, atol=1e-6)
  assert not np.allclose(z[1], z[0], rtol=1e-3)
  ref, got = recommend(clip, **kw), recommend(both, **kw)
  assert got.weights == ref.weights
  # What it reports about its pick is read as predict reads the pool: "linear"'s draws.
  rows = np.array([[got.weights[d] for d in both.domains],
                   [got.reference[d] for d in both.domains]], np.float32)
  fn, params = linear.optimiser_sampler(tokens, pool.budget)
  z_read = np.asarray(fn(params, jnp.asarray(rows), x_F), np.float64)
  gain = float((z_read[:, 1] - z_read[:, 0]).mean())
  assert got.improvement_over_reference.mean == pytest.approx(gain, rel=1e-4, abs=1e-6)
  assert got.predicted.mean == pytest.approx(float(z_read[:, 0].mean()), rel=1e-5)
  assert not np.isclose(ref.improvement_over_reference.mean, gain, rtol=1e-3)
  both.save(tmp_path / "b")
  back = load_surface(tmp_path / "b")
  assert back.clip_decisions_only
  fn, params = back.optimiser_sampler(tokens, pool.budget)
  np.testing.assert_allclose(np.asarray(fn(params, jnp.asarray(w, jnp.float32), x_F)),
                             z[1], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(back.predict(w, x, tokens=tokens, budget=pool.budget).hi,
                             both.predict(w, x, tokens=tokens, budget=pool.budget).hi,
                             rtol=1e-6, atol=1e-7)


def _pool_case(world, s, pool, x=None, **sizes):
  """A pool's covariates (`x`: the pool's own by default), its token counts in the
  surface's domain order, and recommend's keyword arguments for it (a small search
  unless `sizes` says otherwise)."""
  x = dict(zip(world.features, pool.x_F)) if x is None else x
  tokens = pool.tokens_D[[world.domains.index(d) for d in s.domains]]
  cons = {"tokens": dict(zip(s.domains, tokens)), "budget_tokens": pool.budget}
  sizes = {"n_candidates": 256, "n_starts": 4, "n_steps": 20, **sizes}
  return x, tokens, dict(covariates=x, constraints=cons, **sizes)


def test_safe_objective_stays_in_the_swept_range_and_beats_its_anchors():
  world, runs = _world_runs()
  s = _stack()
  pool = world.shifted_pools(1, seed=2)[0]
  x, tokens, kw = _pool_case(world, s, pool, n_candidates=512, n_starts=8, n_steps=40)
  rec = recommend(s, **kw)
  assert rec.objective == "safe"
  w = np.array([rec.weights[d] for d in s.domains])
  w_max = np.maximum(np.asarray(s.support_stats["w_max"]), s.w_ref)
  assert np.all(w <= w_max + 1e-6)
  anchors = np.concatenate([np.asarray(s.support_stats["best_w"]),
                            np.full((1, len(w)), 1 / len(w))])
  hi_anchor = s.predict(anchors, x, tokens=tokens, budget=pool.budget).hi.min()
  hi_rec = s.predict(w[None], x, tokens=tokens, budget=pool.budget).hi[0]
  check = rec.diagnostics["safe_check"]
  if rec.support["inside"] and not rec.support["outside_range"]:
    assert hi_rec <= hi_anchor + 1e-3
    assert not check["ran"] and not check["replaced"]
  else:  # off the support: no worse than uniform at the bound of the paired difference
    assert check["ran"] and check["reasons"]
    assert check["replaced"] == (check["bound_pick_difference_to_uniform_upper_bound"] > 0)
    assert rec.diagnostics["difference_to_uniform_upper_bound"] <= 1e-9
    uni = np.full((1, len(w)), 1 / len(w))
    d = s.cate(w[None], uni, x, tokens=tokens, budget=pool.budget, ci=0.9)
    assert d.hi[0] <= 1e-6


def test_safe_objective_off_support_can_compare_with_every_anchor():
  world, runs = _world_runs()
  s = _units_stack("pairs")  # cate's draws are the decisions'
  pool = world.shifted_pools(1, seed=2)[0]
  x, tokens, kw = _pool_case(world, s, pool)
  rec = recommend(s, off_support="anchors", **kw)
  check = rec.diagnostics["safe_check"]
  assert check["ran"] and check["fallback"] == "anchors"
  # The pick's worst upper bound against the anchors is the one recorded, and no
  # anchor (uniform included) has a lower one.
  anchors = np.concatenate([np.asarray(s.support_stats["best_w"]),
                            np.full((1, len(s.domains)), 1 / len(s.domains))])

  def worst(w_D):
    d = s.cate(np.repeat(w_D[None], len(anchors), 0), anchors, x, tokens=tokens,
               budget=pool.budget, ci=0.9)
    return float(np.max(d.hi))

  w = np.array([rec.weights[d] for d in s.domains])
  assert worst(w) == pytest.approx(check["anchor_difference_upper_bound"], abs=0.02)
  assert worst(w) <= min(worst(a) for a in anchors) + 0.02
  assert recommend(s, **kw).diagnostics["safe_check"]["fallback"] == "shrink"
  with pytest.raises(ValueError, match="off_support: unknown 'best'"):
    recommend(s, off_support="best", **kw)


def test_shrink_segment_runs_from_uniform_to_the_pick():
  w = np.array([0.7, 0.2, 0.1, 0.0])
  seg = shrink_segment(w, 4)
  np.testing.assert_allclose(seg, [0.75 * 0.25 + 0.25 * w, 0.5 * 0.25 + 0.5 * w,
                                   0.25 * 0.25 + 0.75 * w])
  np.testing.assert_allclose(seg.sum(1), 1.0)


def test_shrink_segment_runs_from_a_given_start():
  w, start = np.array([0.7, 0.2, 0.1]), np.array([0.2, 0.4, 0.4])
  np.testing.assert_allclose(shrink_segment(w, 2, start), [0.5 * start + 0.5 * w])


def test_capped_uniform_water_fills_under_the_sweeps_epochs():
  tokens, budget = np.array([100.0, 1000.0, 1000.0, 1000.0]), 1000.0
  # Caps 0.05, 2, 2, 2: the first binds, the others share the rest evenly.
  np.testing.assert_allclose(capped_uniform(np.array([0.5, 2.0, 2.0, 2.0]), tokens,
                                            budget), [0.05, 0.95 / 3, 0.95 / 3, 0.95 / 3])
  # Two bind (0.05 and 0.2 of weight): 0.75 shared by two.
  np.testing.assert_allclose(capped_uniform(np.array([0.5, 0.2, 2.0, 2.0]), tokens,
                                            budget), [0.05, 0.2, 0.375, 0.375])
  # No cap binds: uniform.
  np.testing.assert_allclose(capped_uniform(np.full(4, 5.0), tokens, budget), 0.25)
  # The caps sum to under one: no mixture stays inside them; the caps, scaled.
  w = capped_uniform(np.array([0.5, 0.1, 0.1, 0.1]), tokens, budget)
  np.testing.assert_allclose(w, np.array([0.05, 0.1, 0.1, 0.1]) / 0.35)
  with pytest.raises(ValueError, match="capped_uniform: caps must be finite"):
    capped_uniform(np.zeros(4), tokens, budget)
  with pytest.raises(ValueError, match="capped_uniform: caps must be finite"):
    capped_uniform(np.array([np.nan, 1.0, 1.0, 1.0]), tokens, budget)


def test_stack_records_the_sweeps_most_epochs_per_domain():
  _, runs = _world_runs()
  s = _stack()
  w = runs.W / runs.W.sum(1, keepdims=True)
  want = (w * runs.budget[:, None] / runs.tokens).max(0)
  np.testing.assert_allclose(s.support_stats["epochs_max"], want, rtol=1e-6)


def test_safe_check_compares_with_uniform_kept_inside_the_sweeps_epochs():
  world, _ = _world_runs()
  s = _units_stack("pairs")  # cate's draws are the decisions'
  # Shifted pool 1 has one domain so scarce that uniform repeats it about 3x past the
  # sweep's most epochs; pool 0 keeps uniform inside them.
  pools = world.shifted_pools(6, seed=2)
  x, tokens, kw = _pool_case(world, s, pools[1])
  # The check alone: the mean guard's part is below.
  kw.update(off_support_trigger="always", mean_guard="none")
  base = capped_uniform(np.asarray(s.support_stats["epochs_max"]), tokens,
                        pools[1].budget)
  assert base.min() < 0.2 - 1e-3  # the scarce domain is capped
  plain, capped = recommend(s, safe_baseline="uniform", **kw), recommend(s, **kw)
  pc, cc = plain.diagnostics["safe_check"], capped.diagnostics["safe_check"]
  assert pc["baseline"] == "uniform" and "baseline_weights" not in pc
  assert cc["baseline"].startswith("capped uniform")
  np.testing.assert_allclose([cc["baseline_weights"][d] for d in s.domains], base,
                             atol=1e-9)
  # The same search and pick before the check; the check's bound is against the
  # capped baseline (the surface's own paired difference), the uniform one reported too.
  assert pc["bound_pick"] == cc["bound_pick"]
  assert (pc["bound_pick_difference_to_uniform_upper_bound"]
          == pytest.approx(cc["bound_pick_difference_to_uniform_upper_bound"], abs=1e-6))
  pick = np.array([cc["bound_pick"][d] for d in s.domains])
  d = s.cate(pick[None], base[None], x, tokens=tokens, budget=pools[1].budget, ci=0.9)
  assert cc["bound_pick_difference_to_baseline_upper_bound"] == pytest.approx(
      float(np.quantile(d.samples[:, 0], 0.95)), abs=0.01)
  # Here the pick fails against uniform (whose scarce domain the surface extrapolates)
  # and passes against the capped baseline, so it is kept.
  assert pc["replaced"] and pc["took_uniform"]
  assert cc["bound_pick_difference_to_baseline_upper_bound"] < 0 < (
      cc["bound_pick_difference_to_uniform_upper_bound"])
  assert not cc["replaced"] and not cc["took_baseline"]
  w = np.array([capped.weights[d] for d in s.domains])
  np.testing.assert_allclose(w, pick, atol=1e-9)
  # The reported gain over uniform is still over uniform.
  uni = np.full((1, len(w)), 1 / len(w))
  g = s.cate(w[None], uni, x, tokens=tokens, budget=pools[1].budget, ci=0.9)
  assert capped.improvement_over_uniform.mean == pytest.approx(-float(g.mean[0]),
                                                               abs=0.01)
  # Its posterior mean is above uniform's (which the surface extrapolates), so the
  # "uniform" mean guard takes uniform (as the sweep's weight caps allow it) instead;
  # the default's guard compares with the capped baseline, which the pick beats.
  assert g.mean[0] > 0
  kw.pop("mean_guard")
  guarded = recommend(s, mean_guard="uniform", **kw)
  assert guarded.diagnostics["safe_check"]["mean_guard_replaced"]
  assert guarded.diagnostics["safe_check"]["took_uniform"]
  default = recommend(s, **kw)
  assert default.diagnostics["safe_check"]["mean_guard"] == "baseline"
  assert not default.diagnostics["safe_check"]["mean_guard_replaced"]
  assert default.weights == capped.weights
  # Where uniform stays inside the sweep's epochs, "capped" is "uniform".
  _, _, kw0 = _pool_case(world, s, pools[0])
  kw0["off_support_trigger"] = "always"
  a, b = recommend(s, safe_baseline="uniform", **kw0), recommend(s, **kw0)
  assert a.weights == b.weights
  assert b.diagnostics["safe_check"]["baseline"] == (
      "uniform: uniform stays inside the sweep's epochs")
  # Without the pool's tokens and budget there are no epochs to cap.
  kw0["constraints"] = None
  assert recommend(s, safe_baseline="capped", **kw0).diagnostics["safe_check"][
      "baseline"].startswith("uniform: the surface does not record")
  with pytest.raises(ValueError, match="safe_baseline: unknown 'natural'"):
    recommend(s, safe_baseline="natural", **kw)


@functools.lru_cache(maxsize=None)
def _guard_pool():
  """A shifted pool of the test stack where the pick (after its check against the
  capped baseline) has a posterior mean loss above uniform's, uniform repeating a
  scarce domain past the sweep's epochs there: the pool, its covariates and tokens,
  recommend's keyword arguments, and the recommendation without the mean guard."""
  world, _ = _world_runs()
  s = _stack()
  pool = world.shifted_pools(6, seed=3)[5]
  x, tokens, kw = _pool_case(world, s, pool)
  return pool, x, tokens, kw, recommend(s, mean_guard="none", **kw)


def test_mean_guard_takes_uniform_when_the_pick_is_expected_to_lose_to_it():
  world, _ = _world_runs()
  s = _stack()
  # On the guard's pool the pick has a posterior mean loss above uniform's; on the new
  # pool it is below.
  better_pool = world.new_pools(6, seed=3)[0]
  _, _, _, kw, plain = _guard_pool()
  guarded = recommend(s, mean_guard="uniform", **kw)
  pc, gc = plain.diagnostics["safe_check"], guarded.diagnostics["safe_check"]
  assert plain.improvement_over_uniform.mean < 0
  assert pc["mean_guard"] == "none" and not pc["mean_guard_replaced"]
  assert pc["pick_mean_difference_to_uniform"] == pytest.approx(
      -plain.improvement_over_uniform.mean, abs=1e-6)
  assert pc["pick_mean_difference_to_uniform"] > 0
  assert gc["mean_guard"] == "uniform" and gc["mean_guard_replaced"]
  assert gc["took_uniform"]
  np.testing.assert_allclose([guarded.weights[d] for d in s.domains], 0.2, atol=1e-6)
  assert guarded.improvement_over_uniform.mean == pytest.approx(0.0, abs=1e-6)
  # A surface that does not record its sweep's mixtures gives no anchors (so uniform
  # is not among the candidates): the guard scores uniform itself and still takes it.
  bare = copy.copy(s)
  bare.support_stats = {k: v for k, v in s.support_stats.items() if k != "w_max"}
  plain, guarded = (recommend(bare, mean_guard="none", **kw),
                    recommend(bare, mean_guard="uniform", **kw))
  assert plain.improvement_over_uniform.mean < 0
  assert guarded.diagnostics["safe_check"]["mean_guard_replaced"]
  np.testing.assert_allclose([guarded.weights[d] for d in s.domains], 0.2, atol=1e-6)
  # Where the pick is expected to beat uniform, the guard leaves it alone.
  _, _, kw = _pool_case(world, s, better_pool)
  plain, guarded = (recommend(s, mean_guard="none", **kw),
                    recommend(s, mean_guard="uniform", **kw))
  assert plain.improvement_over_uniform.mean > 0
  assert plain.weights == guarded.weights
  assert not guarded.diagnostics["safe_check"]["mean_guard_replaced"]
  assert guarded.diagnostics["safe_check"]["mean_guard_reference"] == "uniform"
  # Uniform stays inside the sweep's epochs here, so "baseline" (the default) is
  # "uniform".
  assert recommend(s, **kw).weights == guarded.weights
  with pytest.raises(ValueError, match="mean_guard: unknown 'always'"):
    recommend(s, mean_guard="always", **kw)


def test_baseline_mean_guard_compares_with_the_capped_uniform():
  s = _stack()
  # The pool on which "uniform" takes uniform (above): uniform repeats a scarce domain
  # past the sweep's epochs, so the check's baseline is the capped uniform.
  pool, x, tokens, kw, plain = _guard_pool()
  on_base = recommend(s, **kw)  # the default
  pc, bc = plain.diagnostics["safe_check"], on_base.diagnostics["safe_check"]
  assert pc["pick_mean_difference_to_uniform"] > 0  # "uniform" takes uniform here
  assert bc["mean_guard"] == "baseline"
  assert bc["mean_guard_reference"] == "the capped uniform"
  base = np.array([bc["baseline_weights"][d] for d in s.domains])
  np.testing.assert_allclose(base, capped_uniform(
      np.asarray(s.support_stats["epochs_max"]), tokens, pool.budget), atol=1e-6)
  # The recorded difference is the pick's against the capped uniform, not uniform's.
  pick = np.array([plain.weights[d] for d in s.domains])
  d = s.cate(pick[None], base[None], x, tokens=tokens, budget=pool.budget, ci=0.9)
  assert bc["pick_mean_difference_to_guard_reference"] == pytest.approx(
      float(d.mean[0]), abs=0.01)
  assert bc["pick_mean_difference_to_uniform"] == pytest.approx(
      pc["pick_mean_difference_to_uniform"], abs=1e-6)
  # The pick is expected to beat the capped uniform, so it is kept.
  assert bc["pick_mean_difference_to_guard_reference"] < 0
  assert not bc["mean_guard_replaced"] and on_base.weights == plain.weights


def test_baseline_mean_guard_takes_the_baseline_when_the_pick_is_expected_to_lose(
    monkeypatch):
  world, _ = _world_runs()
  s = _stack()
  pool = world.new_pools(6, seed=3)[0]
  _, _, kw = _pool_case(world, s, pool)
  kw["off_support_trigger"] = "verdict"  # the check does not run on this pool
  # A baseline the posterior prefers to the lowest-bound pick: the lowest-mean mixture
  # of the same region, given as the check's baseline.
  low_mean = recommend(s, safe_score="mean", **kw)
  w_low = np.array([low_mean.weights[d] for d in s.domains])
  rec_module = importlib.import_module("causalmix_jax.optimise.recommend")
  monkeypatch.setattr(rec_module, "_check_baseline",
                      lambda *a, **k: (w_low.copy(), "capped uniform: given"))
  plain, guarded = recommend(s, mean_guard="none", **kw), recommend(s, **kw)
  gc = guarded.diagnostics["safe_check"]
  assert not gc["ran"]
  assert gc["mean_guard_reference"] == "the capped uniform"
  assert gc["pick_mean_difference_to_guard_reference"] > 0
  assert gc["mean_guard_replaced"] and gc["took_baseline"]
  np.testing.assert_allclose([guarded.weights[d] for d in s.domains], w_low, atol=1e-6)
  assert plain.weights != guarded.weights
  assert not plain.diagnostics["safe_check"]["mean_guard_replaced"]


def test_safe_objective_default_fallback_moves_part_way_when_that_beats_uniform():
  world, runs = _world_runs()
  s = _stack()
  uni = np.full((1, len(s.domains)), 1 / len(s.domains))
  pools = world.new_pools(6, seed=3)
  # Pool 2: the range trigger runs the check, the bound pick fails it, and a point part
  # of the way to it is better than uniform at the bound; pool 1: the check passes.
  x, tokens, kw = _pool_case(world, s, pools[2])
  kw["off_support_trigger"] = "range"
  plain = recommend(s, off_support="uniform", **kw)
  shrunk = recommend(s, **kw)  # the default
  pc, sc = plain.diagnostics["safe_check"], shrunk.diagnostics["safe_check"]
  assert pc["replaced"] and sc["replaced"] and sc["fallback"] == "shrink"
  assert pc["bound_pick"] == sc["bound_pick"]
  f = sc["shrink_fraction"]
  assert f is not None and 0 < f < 1
  pick = np.array([sc["bound_pick"][d] for d in s.domains])
  w = np.array([shrunk.weights[d] for d in s.domains])
  np.testing.assert_allclose(w, (1 - f) * uni[0] + f * pick, atol=1e-6)
  # Its paired difference to uniform has a negative upper bound, no higher than the
  # uniform fallback's, and the reported gain over uniform says so.
  ub = shrunk.diagnostics["difference_to_uniform_upper_bound"]
  assert ub < 0 and ub <= plain.diagnostics["difference_to_uniform_upper_bound"]
  assert shrunk.improvement_over_uniform.lo > 0
  d = s.cate(w[None], uni, x, tokens=tokens, budget=pools[2].budget, ci=0.9)
  assert d.hi[0] <= 1e-3
  assert "shrink_fraction" not in pc
  # Where the pick passes the check, the fallback plays no part.
  _, _, kw1 = _pool_case(world, s, pools[1])
  kw1["off_support_trigger"] = "range"
  a, b = recommend(s, off_support="uniform", **kw1), recommend(s, **kw1)
  assert not b.diagnostics["safe_check"]["replaced"]
  assert a.weights == b.weights and "shrink_fraction" not in b.diagnostics["safe_check"]


def test_safe_objective_fallback_by_mean_takes_the_lowest_mean_the_check_lets_through():
  world, runs = _world_runs()
  s = _stack()
  pools = world.new_pools(6, seed=3)
  x, tokens, kw = _pool_case(world, s, pools[2])  # the pool of the test above
  kw["off_support_trigger"] = "range"
  by_bound = recommend(s, **kw)  # the default fallback: the lowest upper bound
  by_mean = recommend(s, fallback_score="mean", **kw)
  bc, mc = by_bound.diagnostics["safe_check"], by_mean.diagnostics["safe_check"]
  assert bc["replaced"] and mc["replaced"] and mc["fallback_score"] == "mean"
  assert bc["fallback_score"] == "bound" and mc["bound_pick"] == bc["bound_pick"]
  # The check still holds (upper bound of the paired difference to uniform <= 0), and
  # the posterior expects no more loss than from the default's fallback, which it may
  # pass over for a candidate with a higher bound.
  ub = lambda r: r.diagnostics["difference_to_uniform_upper_bound"]  # noqa: E731
  assert ub(by_mean) <= 1e-6 and ub(by_bound) <= ub(by_mean) + 1e-6
  loss = lambda r: (-1 if s.maximize else 1) * r.predicted.mean  # noqa: E731
  assert loss(by_mean) <= loss(by_bound) + 1e-6
  # Along this pool's segment the mean falls toward the pick, so it moves farther.
  assert mc["shrink_fraction"] is not None
  assert mc["shrink_fraction"] > bc["shrink_fraction"]
  # Where the pick passes the check, the fallback plays no part.
  _, _, kw1 = _pool_case(world, s, pools[1])
  kw1["off_support_trigger"] = "range"
  assert recommend(s, fallback_score="mean", **kw1).weights == recommend(s, **kw1).weights
  with pytest.raises(ValueError, match="fallback_score: unknown 'lcb'"):
    recommend(s, fallback_score="lcb", **kw1)


def test_recommendation_reports_its_gain_over_the_sweeps_best_known_mixture():
  world, runs = _world_runs()
  s = _stack()
  pool = world.shifted_pools(1, seed=2)[0]
  x, tokens, kw = _pool_case(world, s, pool)
  for objective in ("safe", "mean"):
    rec = recommend(s, objective=objective, **kw)
    known = np.asarray(s.support_stats["best_w"][0])
    assert list(rec.best_known) == list(s.domains)
    np.testing.assert_allclose([rec.best_known[d] for d in s.domains], known / known.sum())
    w = np.array([rec.weights[d] for d in s.domains])
    p = s.predict(np.stack([known, w]), x, tokens=tokens, budget=pool.budget).mean
    gain = rec.improvement_over_best_known
    assert gain.mean == pytest.approx(p[0] - p[1], abs=0.02)  # a loss: lower is better
    assert gain.lo <= gain.mean <= gain.hi and 0 <= gain.prob_better <= 1
    assert "over_best_known" in rec.to_dict()["improvement"]


def test_safe_objective_can_score_by_the_posterior_mean():
  world, runs = _world_runs()
  s = _stack()
  pool = world.new_pools(1, seed=3)[0]
  x, tokens, kw = _pool_case(world, s, pool)
  by_mean = recommend(s, safe_score="mean", **kw)
  by_bound = recommend(s, **kw)
  assert by_mean.objective == by_bound.objective == "safe"
  assert by_mean.diagnostics["safe_check"]["score"] == "mean"
  assert by_bound.diagnostics["safe_check"]["score"] == "bound"
  w_mean = np.array([by_mean.weights[d] for d in s.domains])
  w_bound = np.array([by_bound.weights[d] for d in s.domains])
  # The same region (the sweep's weight caps) ...
  w_max = np.maximum(np.asarray(s.support_stats["w_max"]), s.w_ref)
  assert np.all(w_mean <= w_max + 1e-6)
  # ... and each pick is the better of the two by its own score.
  p = s.predict(np.stack([w_mean, w_bound]), x, tokens=tokens, budget=pool.budget)
  assert p.mean[0] <= p.mean[1] + 2e-3
  assert p.hi[1] <= p.hi[0] + 2e-3
  assert by_mean.objective_value == pytest.approx(by_mean.predicted.mean, abs=1e-6)
  check = by_mean.diagnostics["safe_check"]
  if check["ran"]:  # the off-support check applies to the mean pick too
    assert by_mean.diagnostics["difference_to_uniform_upper_bound"] <= 1e-9
  with pytest.raises(ValueError, match="safe_score: unknown 'median'"):
    recommend(s, safe_score="median", **kw)


def test_safe_score_mean_inside_takes_the_mean_only_where_the_check_does_not_run():
  world, _ = _world_runs()
  s = _stack()
  pool = world.new_pools(1, seed=3)[0]
  _, _, kw = _pool_case(world, s, pool)
  picks = {}
  for trigger in ("verdict", "always"):
    for score in ("mean", "bound", "mean_inside"):
      rec = recommend(s, safe_score=score, off_support_trigger=trigger, **kw)
      picks[trigger, score] = rec
  inside = picks["verdict", "mean_inside"].diagnostics["safe_check"]
  outside = picks["always", "mean_inside"].diagnostics["safe_check"]
  assert not inside["ran"] and outside["ran"]
  # Inside the support (no check) it is the mean's pick; where the check runs, the
  # bound's, check and all.
  assert inside["score"] == "mean" and outside["score"] == "bound"
  for trigger, score in (("verdict", "mean"), ("always", "bound")):
    assert picks[trigger, "mean_inside"].weights == picks[trigger, score].weights
  assert picks["verdict", "mean"].weights != picks["verdict", "bound"].weights


def test_off_support_trigger_verdict_ignores_a_range_exit_the_verdict_allows():
  world, runs = _world_runs()
  s = _stack()
  # A pool drawn like the sweep's with one covariate just outside the sweep's range:
  # the range trigger runs the check; the calibrated verdict does not.
  lo, hi = runs.X.min(0), runs.X.max(0)
  pool = world.new_pools(1, seed=3)[0]
  x = dict(zip(world.features, pool.x_F))
  name = world.features[-1]
  k = runs.features.index(name)
  x[name] = hi[k] + 1e-3 * (hi[k] - lo[k])
  report = s.support(x)
  assert name in report["outside_range"] and not report["outside"]
  _, _, kw = _pool_case(world, s, pool, x)
  by_range = recommend(s, off_support_trigger="range", **kw).diagnostics["safe_check"]
  by_verdict = recommend(s, off_support_trigger="verdict", **kw).diagnostics["safe_check"]
  assert by_range["ran"] and by_range["trigger"] == "range"
  assert any("outside the sweep's range" in r for r in by_range["reasons"])
  assert not by_verdict["ran"] and not by_verdict["replaced"]
  assert by_verdict["trigger"] == "verdict"
  with pytest.raises(ValueError, match="off_support_trigger: unknown 'often'"):
    recommend(s, off_support_trigger="often", **kw)


def test_off_support_trigger_heldout_follows_the_sweeps_held_out_evidence(tmp_path):
  world, runs = _world_runs()
  s = _stack()
  g = s.info["heldout_guard"]
  # Judged on the sweep's held-out (fold, pool state) cells: 16 states, each a cell.
  assert g["cells"] == 16 and 0 <= g["changed"] <= g["cells"]
  assert g["guard"] == (g["loss_guarded"] < g["loss_unguarded"])
  assert g["diff_se"] is not None and g["diff_se"] >= 0
  s.save(tmp_path / "surface")
  assert load_surface(tmp_path / "surface").info["heldout_guard"] == g
  # A pool inside the support and the range (one of the sweep's own states): "range"
  # does not run the check; "heldout" runs it exactly when the evidence favours the guard.
  pool = world.new_pools(1, seed=3)[0]
  _, _, kw = _pool_case(world, s, pool, dict(zip(runs.features, runs.X[0])))
  assert not s.support(kw["covariates"])["outside_range"]
  base = recommend(s, off_support_trigger="range", **kw).diagnostics["safe_check"]
  assert not base["ran"]
  # "always" runs it there too, and its pick is "range"'s unless that pick fails it.
  every = recommend(s, off_support_trigger="always", **kw)
  check = every.diagnostics["safe_check"]
  assert check["ran"] and check["trigger"] == "always"
  assert check["reasons"][0].startswith("off_support_trigger 'always'")
  assert check["bound_pick"] == base["bound_pick"]
  same = every.weights == recommend(s, off_support_trigger="range", **kw).weights
  assert same == (not check["replaced"])
  assert not s.maximize  # a loss: the pick fails where its bound is above uniform's
  assert check["replaced"] == (check["bound_pick_difference_to_uniform_upper_bound"] > 0)
  for favoured in (True, False):
    with pytest.MonkeyPatch.context() as mp:  # the shared surface's info is restored
      mp.setitem(s.info, "heldout_guard", dict(g, guard=favoured))
      check = recommend(s, **kw).diagnostics["safe_check"]  # "heldout": the default
    assert check["ran"] == favoured and check["trigger"] == "heldout"
    assert any("held-out pool states" in r for r in check["reasons"]) == favoured
    if favoured:  # the reason carries the evidence's standard error
      assert any(f"difference +- {g['diff_se']:.2g})" in r for r in check["reasons"])
  with pytest.MonkeyPatch.context() as mp:  # a surface saved before the evidence existed
    mp.delitem(s.info, "heldout_guard")
    legacy = recommend(s, **kw)
  assert not legacy.diagnostics["safe_check"]["ran"]
  assert legacy.weights == recommend(s, off_support_trigger="range", **kw).weights
  assert s.info["heldout_guard"] == g


def test_stack_calibrates_across_pools_when_each_pool_has_one_mixture():
  """One mixture per pool state (seed replicates only): contrasts within a pool would
  be pure noise against a zero prediction, so the stack takes them across the held-out
  fold's pools, and its intervals stay finite and sized by the errors."""
  world = worlds.make_world("synergy", seed=0)
  runs = world.sweep(n_runs=96, n_pools=96, seed=0)
  s = fit.fit_surface(runs, "loss", config=_cfg())
  assert s.info["contrasts_within"] == "folds"
  assert 0.1 < s.info["conformal_scale"] < 20
  many = _stack()
  assert many.info["contrasts_within"] == "pool states"
  pool = world.new_pools(1, seed=3)[0]
  order = [world.domains.index(d) for d in s.domains]
  p = s.predict(np.full((1, len(order)), 1 / len(order)), dict(zip(world.features,
                                                                    pool.x_F)),
                tokens=pool.tokens_D[order], budget=pool.budget)
  assert p.hi[0] - p.lo[0] < 1.0


def test_scales_are_held_out_apart_and_do_not_inflate_effect_intervals(caplog):
  """The same sweep at two model sizes, the larger 0.3 lower in loss everywhere (no
  covariate carries the size). Folds and contrasts keep the sizes apart, so the level
  gap shows up as level uncertainty (a new pool's outcome, whichever size) instead of
  hiding in the contrasts, the conformal scale stays near the one-size fit's, and a
  warning names the params column."""
  _, runs = _world_runs()
  small = runs.to_frame()
  small["params"] = 2e7
  large = small.copy()
  large["params"] = 1e8
  large["run_id"] = large["run_id"] + "-large"
  noise = 0.01 * np.random.default_rng(5).standard_normal(len(large))
  large["y_loss"] = large["y_loss"] - 0.3 + noise
  two = Runs(pd.concat([small, large], ignore_index=True), source="two-sizes")
  with caplog.at_level("WARNING"):
    s = fit.fit_surface(two, "loss", config=_cfg())
  one = _stack()
  assert s.info["folds_by"] == "pool states x scales"
  # Runs at one mixture and pool but different sizes are not replicates: taking the
  # size gap for run noise would shrink the effect intervals to nothing.
  assert 0.5 < s.info["conformal_scale"] / one.info["conformal_scale"] < 1.5
  assert s.info["level_sd"] > 0.1 > one.info["level_sd"]
  assert "2 model sizes (the params column)" in caplog.text
  # The DML surface alone: its replicate noise is taken within one size too.
  dml = fit.fit_surface(two, "loss", method="dml", config=_cfg())
  assert dml.info["noise_prior"]["source"] == "replicates"
  assert dml.info["noise_prior"]["sd"] < 0.05


def test_safe_check_runs_when_a_covariate_leaves_the_sweeps_range():
  """A new pool inside the calibrated support but with a covariate outside the sweep's
  range still gets the uniform check (its reason names the range); a pool inside both
  does not."""
  world, _ = _world_runs()
  s = _stack()
  pools = world.new_pools(4, seed=4)
  order = [world.domains.index(d) for d in s.domains]

  def check(pool):
    cons = {"tokens": dict(zip(s.domains, pool.tokens_D[order])),
            "budget_tokens": pool.budget}
    rec = recommend(s, covariates=dict(zip(world.features, pool.x_F)), constraints=cons,
                    n_candidates=256, n_starts=4, n_steps=20)
    return rec.support, rec.diagnostics["safe_check"]

  support, ranged = check(pools[1])
  assert support["inside"] and support["outside_range"] == ["quality_math"]
  assert ranged["ran"] and ranged["reasons"] == [
      "y_loss: 1 covariate(s) outside the sweep's range (quality_math)"]
  support, plain = check(pools[3])
  assert support["inside"] and not support["outside_range"] and not plain["ran"]


def test_decision_calibration_is_off_by_default_checked_and_needs_19_decisions():
  s = _stack()
  dec = s.info["decision_calibration"]
  assert dec["setting"] == "none" and not dec["applied"]
  _, runs = _world_runs()
  with pytest.raises(ValueError, match="surface.decision_calibration: unknown 'yes'"):
    fit.fit_surface(runs, "loss", config=_cfg(decision_calibration="yes"))
  # 16 pool states: too few held-out decisions for a 95% conformal bound.
  small = fit.fit_surface(runs, "loss", config=_cfg(decision_calibration="conformal"))
  dec = small.info["decision_calibration"]
  assert dec["cells"] <= 16 and dec["scale"] is None and not dec["applied"]
  assert not dec["reported"]
  assert "needs 19" in dec["reason"]
  fit.check_config("stack", _cfg(decision_calibration="report"))  # a known setting


@functools.lru_cache(maxsize=None)
def _calibrated_stack():
  """The stack fitted with the guard's decision calibration on 36 pool states."""
  world = worlds.make_world("mixing_law", seed=0)
  runs = world.sweep(n_runs=288, n_pools=36, seed=0)
  return world, fit.fit_surface(runs, "loss",
                                config=_cfg(decision_calibration="conformal"))


def test_decision_calibration_scales_the_guard_and_the_gain_over_uniform():
  world, s = _calibrated_stack()
  dec = s.info["decision_calibration"]
  assert dec["applied"] and dec["cells"] >= 19 and dec["scale"] > 0
  # The same surface without it: every draw is the same, only the scale differs.
  plain = _restacked(s)
  plain.info = {**s.info, "decision_calibration": {**dec, "applied": False,
                                                   "reported": False}}
  pool = world.shifted_pools(1, seed=2)[0]
  _, _, kw = _pool_case(world, s, pool)
  rec, ref = recommend(s, **kw), recommend(plain, **kw)
  assert rec.diagnostics["safe_check"]["decision_scale"] == dec["scale"]
  assert ref.diagnostics["safe_check"]["decision_scale"] == 1.0
  assert ref.diagnostics["safe_check"]["bound_pick"] == rec.diagnostics["safe_check"][
      "bound_pick"]
  if rec.weights == ref.weights:
    g, g0 = rec.improvement_over_uniform, ref.improvement_over_uniform
    assert g.mean == pytest.approx(g0.mean)
    assert g.mean - g.lo == pytest.approx(dec["scale"] * (g0.mean - g0.lo), rel=1e-6)
    assert g.hi - g.mean == pytest.approx(dec["scale"] * (g0.hi - g0.mean), rel=1e-6)
    # The other comparisons are not scaled.
    assert rec.improvement_over_best_known == ref.improvement_over_best_known
  ub = "bound_pick_difference_to_uniform_upper_bound"
  assert (rec.diagnostics["safe_check"][ub] >= ref.diagnostics["safe_check"][ub]) == (
      dec["scale"] >= 1)


def test_decision_calibration_report_scales_only_the_reported_gain():
  world, s = _calibrated_stack()
  dec = s.info["decision_calibration"]
  assert dec["reported"]  # "conformal" reports as it decides
  report, plain = _restacked(s), _restacked(s)
  report.info = {**s.info, "decision_calibration": {**dec, "setting": "report",
                                                    "applied": False, "reported": True}}
  plain.info = {**s.info, "decision_calibration": {**dec, "applied": False,
                                                   "reported": False}}
  pool = world.shifted_pools(1, seed=2)[0]
  _, _, kw = _pool_case(world, s, pool)
  rec, ref = recommend(report, **kw), recommend(plain, **kw)
  # The decision is "none"'s: the same pick, check and bound.
  assert rec.weights == ref.weights
  check, check0 = rec.diagnostics["safe_check"], ref.diagnostics["safe_check"]
  assert check["decision_scale"] == check0["decision_scale"] == 1.0
  assert check["report_scale"] == dec["scale"] and check0["report_scale"] == 1.0
  ub = "bound_pick_difference_to_uniform_upper_bound"
  assert check[ub] == check0[ub]
  # Only the reported gain over uniform is scaled around its mean.
  g, g0 = rec.improvement_over_uniform, ref.improvement_over_uniform
  assert g.mean == pytest.approx(g0.mean)
  assert g.mean - g.lo == pytest.approx(dec["scale"] * (g0.mean - g0.lo), rel=1e-6)
  assert g.hi - g.mean == pytest.approx(dec["scale"] * (g0.hi - g0.mean), rel=1e-6)
  assert rec.improvement_over_best_known == ref.improvement_over_best_known
  # A fit saved before "report" existed (no "reported"): it reports as it decides.
  legacy = _restacked(s)
  legacy.info = {**s.info, "decision_calibration": {
      k: v for k, v in dec.items() if k != "reported"}}
  assert (recommend(legacy, **kw).improvement_over_uniform
          == recommend(s, **kw).improvement_over_uniform)


def _modified_effect_frame(modified: bool, n_states: int = 16, per_state: int = 8,
                           seed: int = 0, level: float = 0.3) -> pd.DataFrame:
  """Runs over pool states with one covariate q that moves the loss by `level` q: the
  effect of domain 0 against domain 1 flips sign with q (`modified`), or is the same
  in every pool."""
  rng = np.random.default_rng(seed)
  q = np.repeat(np.linspace(-1.0, 1.0, n_states), per_state)
  w = rng.dirichlet(np.ones(3), len(q))
  slope = q if modified else np.zeros_like(q)
  y = 2.0 + level * q + w @ np.array([0.1, 0.0, 0.2]) + 0.4 * slope * (w[:, 0] - w[:, 1])
  frame = pd.DataFrame({"run_id": [f"r{i}" for i in range(len(q))], "seed": 0})
  for j in range(3):
    frame[f"w_d{j}"] = w[:, j]
  frame["x_q"] = q
  frame["y_loss"] = y + 0.005 * rng.standard_normal(len(q))
  return frame


def test_blind_members_answer_every_pool_alike_and_weigh_by_held_out_pools(tmp_path):
  """A blind member is its family without the covariates: the same effect in every
  pool. Where the effect flips with the pool the stack gives it next to no weight, and
  the support stays the covariate-aware DML member's."""
  members = ("dml", "scaling", "dml_blind", "scaling_blind")
  runs = Runs(_modified_effect_frame(modified=True), source="modified-effect")
  s = fit.fit_surface(runs, "loss", config=_cfg(stack_members=members,
                                                stack_covariates="aware"))
  s.save(tmp_path / "surface")
  w_new = np.random.default_rng(1).dirichlet(np.ones(3), 4)
  np.testing.assert_allclose(load_surface(tmp_path / "surface").draws(w_new, {"q": 0.5}),
                             s.draws(w_new, {"q": 0.5}), rtol=1e-5, atol=1e-6)
  assert s.info["members"] == list(members)
  assert s.info["weights"]["dml_blind"] + s.info["weights"]["scaling_blind"] < 0.1
  assert s.info["heldout"]["dml"]["contrast_mse"] < \
      0.5 * s.info["heldout"]["dml_blind"]["contrast_mse"]
  aware = fit.fit_surface(runs, "loss", config=_cfg(stack_covariates="aware"))
  far, far_aware = s.support({"q": 3.0}), aware.support({"q": 3.0})
  assert far["outside"] and far_aware["outside"]
  for key in ("mahalanobis", "max_abs_z", "range_excess"):
    assert far[key] == pytest.approx(far_aware[key])
  # Alone, a blind member's effect does not move with the pool; the aware one's flips.
  blind = fit.fit_surface(runs, "loss", config=_cfg(stack_members=("dml_blind",),
                                                    stack_covariates="aware"))
  aware_dml = fit.fit_surface(runs, "loss", config=_cfg(stack_members=("dml",),
                                                        stack_covariates="aware"))
  w_a, w_b = np.array([[0.8, 0.1, 0.1]]), np.array([0.1, 0.8, 0.1])
  lo, hi = (blind.cate(w_a, w_b, {"q": q}).mean[0] for q in (-1.0, 1.0))
  np.testing.assert_allclose(lo, hi, atol=1e-9)
  lo, hi = (aware_dml.cate(w_a, w_b, {"q": q}).mean[0] for q in (-1.0, 1.0))
  assert lo < -0.1 < 0.1 < hi


def test_blind_members_are_left_out_where_no_covariate_varies(caplog):
  """Without a varying covariate a blind member would repeat its family: left out
  when the family is a member too (and said so), fitted under its name otherwise."""
  frame = _modified_effect_frame(modified=False).drop(columns=["x_q"])
  runs = Runs(frame, source="no-covariates")
  with caplog.at_level("INFO", logger=robust.__name__):
    s = fit.fit_surface(runs, "loss", config=_cfg(
        stack_members=("dml", "scaling", "scaling_blind"), stack_covariates="aware"))
  assert s.info["members"] == ["dml", "scaling"]
  assert "stack member scaling_blind left out: no covariate varies" in caplog.text
  alone = fit.fit_surface(runs, "loss", config=_cfg(
      stack_members=("dml_blind", "scaling"), stack_covariates="aware"))
  assert alone.info["members"] == ["dml_blind", "scaling"]
  with pytest.raises(ValueError, match="surface.stack_members: unknown member "
                                       "'forest_blind'"):
    fit.fit_surface(runs, "loss", config=_cfg(stack_members=("dml", "forest_blind"),
                                              stack_covariates="aware"))


def test_covariate_selection_keeps_the_set_held_out_pools_favour():
  """`stack_covariates = "select"` (the default) fits each member with and without the
  covariates and keeps the blind set only when held-out pools favour it plainly: not
  where the effect flips with the pool, yes where the covariates only add noise to the
  effect."""
  cfg = _cfg()
  flips = fit.fit_surface(Runs(_modified_effect_frame(modified=True),
                               source="modified"), "loss", config=cfg)
  sel = flips.info["covariate_selection"]
  assert sel["chosen"] == "aware" and flips.info["members"] == ["dml", "scaling"]
  assert sel["aware_mse"] < sel["blind_mse"] and sel["units"] == 16
  # The same effect in every pool, and many covariates that do nothing but vary: the
  # aware members fit effects that move with them, which held-out pools do not bear.
  frame = _modified_effect_frame(modified=False, n_states=16, per_state=6, level=0.0)
  rng = np.random.default_rng(3)
  frame["y_loss"] += 0.02 * rng.standard_normal(len(frame))
  _, idx = np.unique(frame["x_q"].to_numpy(), return_inverse=True)
  for k in range(12):
    frame[f"x_noise{k}"] = rng.standard_normal(16)[idx]
  same = fit.fit_surface(Runs(frame, source="same"), "loss", config=cfg)
  sel = same.info["covariate_selection"]
  assert sel["chosen"] == "blind", sel
  assert same.info["members"] == ["dml_blind", "scaling_blind"]
  assert sel["unit_diff_mean"] > sel["unit_diff_se"]
  # The support still sees the covariates: a pool far along one is outside.
  assert same.support({"q": 0.0, **{f"noise{k}": 6.0 for k in range(12)}})["outside"]
  aware = fit.fit_surface(Runs(frame, source="same"), "loss",
                          config=_cfg(stack_covariates="aware"))
  assert aware.info["covariate_selection"] == {"setting": "aware", "chosen": "aware"}
  assert aware.info["members"] == ["dml", "scaling"]
  with pytest.raises(ValueError, match="surface.stack_covariates: unknown 'both'"):
    fit.fit_surface(Runs(frame, source="same"), "loss",
                    config=_cfg(stack_covariates="both"))
  with pytest.raises(ValueError, match=r"surface.stack_members: \['dml_blind'\] with "
                                       "surface.stack_covariates = 'select'"):
    fit.fit_surface(Runs(frame, source="same"), "loss", config=_cfg(
        stack_covariates="select", stack_members=("dml", "dml_blind")))


def test_select_covariates_replaces_the_aware_set_only_on_plain_held_out_evidence():
  """Each set is stacked alone and scored per unit; the aware set stays unless another
  is lower by more than one standard error, and of those the lowest error wins."""
  rng = np.random.default_rng(0)
  units = np.repeat(np.arange(20), 5)
  target = rng.standard_normal(100)
  noise = lambda sd: target + sd * rng.standard_normal(100)  # noqa: E731
  sets = np.array(["aware", "blind", "all"])
  info, keep, w = robust.select_covariates(np.stack([noise(0.5), noise(0.3), noise(0.1)]),
                                           target, sets, units)
  assert info["chosen"] == "all" and keep.tolist() == [False, False, True]
  assert w.tolist() == [1.0]
  assert info["aware_mse"] > info["blind_mse"] > info["all_mse"]
  assert info["unit_diff_mean"] > info["unit_diff_se"]
  assert info["all_diff_mean"] > info["all_diff_se"]
  # Level with the aware set: it stays, whatever the point estimates say.
  same = noise(0.3)
  info, keep, _ = robust.select_covariates(
      np.stack([same, same + 1e-4 * rng.standard_normal(100), noise(2.0)]), target,
      sets, units)
  assert info["chosen"] == "aware" and keep.tolist() == [True, False, False]
  # The two-set form still reads a bool mask as blind or not.
  info, keep, _ = robust.select_covariates(np.stack([noise(0.5), noise(0.1)]), target,
                                           np.array([False, True]), units)
  assert info["chosen"] == "blind" and "all_mse" not in info
  with pytest.raises(ValueError, match="no covariate-aware member"):
    robust.select_covariates(np.stack([noise(0.1)]), target, np.array(["blind"]), units)


def _hidden_direction_frame(n_states: int = 24, per_state: int = 6, seed: int = 0
                            ) -> pd.DataFrame:
  """Pool states with three groups of three strongly correlated covariates that do not
  touch the outcome, and one covariate q, independent of them, that flips the effect of
  domain 0 against domain 1: q is the fourth principal component of the states."""
  rng = np.random.default_rng(seed)
  q_S = rng.permutation(np.linspace(-1.0, 1.0, n_states))
  frame = _modified_effect_frame(modified=False, n_states=n_states,
                                 per_state=per_state, seed=seed, level=0.0)
  state = np.repeat(np.arange(n_states), per_state)
  q = q_S[state]
  w = frame[["w_d0", "w_d1", "w_d2"]].to_numpy()
  frame["x_q"] = q
  frame["y_loss"] += 0.4 * q * (w[:, 0] - w[:, 1])
  for g in range(3):
    factor = rng.standard_normal(n_states)
    for k in range(3):
      frame[f"x_g{g}_{k}"] = (factor + 0.05 * rng.standard_normal(n_states))[state]
  return frame


def test_select_all_keeps_every_component_where_a_capped_basis_misses_the_modifier(
    caplog):
  """`stack_covariates = "select_all"` adds each member on every principal component of
  the pool states. Where the covariate that moves the effect lies past the component
  cap, held-out pools favour that set and the stack keeps it; where the cap keeps every
  component there is no such copy to fit."""
  frame = _hidden_direction_frame()
  runs = Runs(frame, source="hidden-direction")
  s = fit.fit_surface(runs, "loss", config=_cfg(max_x_components=2,
                                                stack_covariates="select_all"))
  sel = s.info["covariate_selection"]
  assert sel["setting"] == "select_all" and sel["chosen"] == "all", sel
  assert s.info["members"] == ["dml_all", "scaling_all"]
  assert sel["all_mse"] < 0.5 * min(sel["aware_mse"], sel["blind_mse"])
  assert s.info["member_info"]["dml_all"]["covariates"]["components"] > 2
  w_a, w_b = np.array([[0.8, 0.1, 0.1]]), np.array([0.1, 0.8, 0.1])
  others = {c: 0.0 for c in runs.features if c != "q"}
  lo, hi = (s.cate(w_a, w_b, {**others, "q": q}).mean[0] for q in (-1.0, 1.0))
  assert lo < -0.1 < 0.1 < hi
  # Stacked freely beside the capped member ("aware"), the copy takes the weight.
  free = fit.fit_surface(runs, "loss", config=_cfg(
      max_x_components=2, stack_covariates="aware", stack_members=("dml", "dml_all")))
  assert free.info["members"] == ["dml", "dml_all"]
  assert free.info["weights"]["dml_all"] > 0.8
  # One covariate: the cap keeps its one component, so no copy on all of them.
  with caplog.at_level("DEBUG", logger=robust.__name__):
    one = fit.fit_surface(Runs(_modified_effect_frame(modified=True), source="one"),
                          "loss", config=_cfg(stack_covariates="select_all"))
  assert one.info["members"] == ["dml", "scaling"]
  assert "stack member dml_all left out: the cap keeps all 1 components" in caplog.text
  with pytest.raises(ValueError, match=r"surface.stack_members: \['scaling_all'\] with "
                                       "surface.stack_covariates = 'select_all'"):
    fit.fit_surface(runs, "loss", config=_cfg(stack_covariates="select_all",
                                              stack_members=("dml", "scaling_all")))
