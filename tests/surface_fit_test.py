"""Tests of the fitting machinery in causalmix_jax.surface.fit: the conjugate posterior
in its primal and dual (Woodbury) forms, the covariate representation (principal
components of the distinct pool states), support at new pools, and the multi-outcome
output of the `fit` stage."""

import json

import numpy as np
import pytest

from causalmix_jax import runs as runs_lib
from causalmix_jax.configs import base
from causalmix_jax.stages import fit as fit_stage
from causalmix_jax.surface import covariate_basis as cbasis
from causalmix_jax.surface import fit, planted, worlds
from causalmix_jax.surface.surface import load_surface


def _problem(n, q, seed=0, noise=0.5):
  rng = np.random.default_rng(seed)
  z = rng.standard_normal((n, q))
  groups = np.arange(q) % 4
  y = z[:, :3] @ np.array([1.0, -0.5, 0.2]) + noise * rng.standard_normal(n)
  return z, y, groups, rng.uniform(0.5, 2.0, n)


@pytest.mark.parametrize("n,q,iters", [(120, 30, 200), (30, 90, 3), (40, 160, 200)])
def test_dual_form_equals_primal(n, q, iters):
  z, y, g, wt = _problem(n, q)
  a = fit.conjugate_fit(z, y, g, wt, iters=iters, form="primal")
  b = fit.conjugate_fit(z, y, g, wt, iters=iters, form="dual")
  assert not a.dual and b.dual
  if iters < 200 or n > q:  # same iterates (and a well-posed optimum)
    np.testing.assert_allclose(b.mean_Q, a.mean_Q, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(b.alpha_G, a.alpha_G, rtol=1e-6)
    np.testing.assert_allclose(b.noise_prec, a.noise_prec, rtol=1e-6)
    np.testing.assert_allclose(b.evidence, a.evidence, rtol=1e-8, atol=1e-6)
  else:  # both converge to the same evidence maximum
    np.testing.assert_allclose(b.evidence, a.evidence, atol=0.05)
    np.testing.assert_allclose(z @ b.mean_Q, z @ a.mean_Q, atol=0.02)
  dz = np.random.default_rng(1).standard_normal((5, q))
  np.testing.assert_allclose(b.quad_var(dz), a.quad_var(dz), rtol=1e-3)
  sa = a.sample(4000, np.random.default_rng(2))
  sb = b.sample(4000, np.random.default_rng(3))
  v = dz @ sa.T, dz @ sb.T  # the sampled spread matches the exact variance
  np.testing.assert_allclose(np.var(v[1], axis=1), a.quad_var(dz), rtol=0.1)
  np.testing.assert_allclose(np.var(v[0], axis=1), a.quad_var(dz), rtol=0.1)
  assert fit.conjugate_fit(z, y, g, wt, iters=2).dual == (q > n)  # auto


def test_evidence_search_started_elsewhere_reaches_the_same_posterior():
  z, y, g, wt = _problem(150, 24)
  a = fit.conjugate_fit(z, y, g, wt)
  # From the fit of most of the runs (as a cross-validation refit starts) and from a
  # start far off, the search ends at the same maximum.
  part = fit.conjugate_fit(z[:120], y[:120], g, wt[:120])
  for start in ((part.alpha_G, part.noise_prec), (np.full(4, 300.0), 0.01)):
    b = fit.conjugate_fit(z, y, g, wt, start=start)
    live = a.alpha_G < 1e4  # pruned groups run off to the top at their own pace
    assert np.all(b.alpha_G[~live] > 1e4)
    np.testing.assert_allclose(b.alpha_G[live], a.alpha_G[live], rtol=2e-3)
    np.testing.assert_allclose(b.noise_prec, a.noise_prec, rtol=2e-3)
    np.testing.assert_allclose(z @ b.mean_Q, z @ a.mean_Q, atol=5e-3)  # noise sd 0.5
  for bad in ((np.ones(3), 1.0), (np.ones(4), -1.0), (np.full(4, np.nan), 1.0)):
    with pytest.raises(ValueError, match="start needs 4 positive"):
      fit.conjugate_fit(z, y, g, wt, start=bad)


def test_refit_start_with_other_groups_is_ignored():
  """A cross-validation refit whose design has another number of prior groups than the
  full fit's (e.g. fewer covariate components in a fold) starts its search afresh."""
  world = planted.PlantedWorld(n_domains=3, n_features=1, seed=4)
  runs = world.sample_sweep(n_runs=60, n_pool_states=1, noise=0.01)
  cfg = fit.default_config()
  cfg.floors, cfg.pairs, cfg.modifiers = (1e-3,), "never", ("linear",)
  cfg.nuisance_models = ("ridge",)
  plain = fit._fit_surface(runs, "loss", "dml", cfg, False)
  alpha = np.asarray(plain.info["prior_precision"])
  odd = fit._fit_surface(runs, "loss", "dml", cfg, False,
                         start=(np.ones(len(alpha) + 2), 1.0))
  np.testing.assert_array_equal(odd.info["prior_precision"], alpha)
  warm = fit._fit_surface(runs, "loss", "dml", cfg, False,
                          start=(alpha, plain.info["noise_precision"]))
  live = alpha < 1e4  # pruned groups run off to the top at their own pace
  np.testing.assert_allclose(np.asarray(warm.info["prior_precision"])[live], alpha[live],
                             rtol=2e-3)


def _many_covariates(x_NxF, n_extra=60, seed=0):
  """70-odd covariates describing the same pool states: the planted ones, random
  linear mixes of them, and constants."""
  rng = np.random.default_rng(seed)
  mix = x_NxF @ rng.standard_normal((x_NxF.shape[1], n_extra))
  const = np.tile(rng.standard_normal(8), (len(x_NxF), 1))
  return np.concatenate([x_NxF, mix, const], axis=1)


def test_covariate_basis_reduces_to_distinct_states():
  rng = np.random.default_rng(0)
  states = rng.standard_normal((3, 4))
  x = _many_covariates(states[rng.integers(0, 3, 50)])
  xb = fit.covariate_basis(x, max_components=6)
  assert xb.n_states == 3 and xb.k == 2 and xb.spans_states
  assert len(xb.cols) == x.shape[1] - 8  # constants dropped
  s = xb.scores(x)
  np.testing.assert_allclose(s.std(0), 1.0, rtol=1e-9)
  np.testing.assert_allclose(s.mean(0), 0.0, atol=1e-9)
  np.testing.assert_allclose(xb.basis_FxK.T @ xb.basis_FxK, np.eye(2), atol=1e-9)
  assert fit.covariate_basis(x, max_components=1).k == 1
  assert fit.covariate_basis(np.ones((20, 5)), 6).k == 0
  assert fit.covariate_basis(np.zeros((20, 0)), 6).k == 0


def _wide_runs(n_runs=120, n_states=4, seed=5):
  world = planted.PlantedWorld(n_domains=4, n_features=3, seed=seed)
  runs = world.sample_sweep(n_runs=n_runs, n_pool_states=n_states, noise=0.01)
  frame = runs.to_frame()
  xcols = [c for c in frame.columns if c.startswith("x_")]
  wide = _many_covariates(frame[xcols].to_numpy(np.float64))
  frame = frame.drop(columns=xcols)
  for j in range(wide.shape[1]):
    frame[f"x_c{j}"] = wide[:, j]
  frame["y_other"] = frame["y_loss"] * 2.0 + 0.1 * frame["w_d0"]
  return world, runs_lib.Runs(frame, source="<wide runs>")


def test_wide_covariates_few_states_fit_and_flag_new_directions():
  _, runs = _wide_runs()
  cfg = fit.default_config()
  cfg.floors = (1e-3,)
  s = fit.fit_surface(runs, "loss", method="dml", config=cfg)
  cov = s.info["covariates"]
  assert cov["pool_states"] == 4 and cov["components"] == 3 and cov["varying"] == 63
  assert s.info["chosen"]["modifiers"] == "linear"  # quadratic adds nothing here
  x0 = runs.X[0]
  w = runs.W[:5]
  assert s.predict(w, x0).mean.shape == (5,)
  inside = s.support(x0)
  assert not inside["outside"] and inside["residual"] < 1e-6
  # Move along a direction the sweep never varied (orthogonal to every state).
  st = s.support_stats
  basis = np.asarray(st["basis"])
  d = np.random.default_rng(3).standard_normal(basis.shape[0])
  d -= basis @ (basis.T @ d)
  d /= np.linalg.norm(d)
  x_new = x0.copy()
  cols = np.asarray(st["cols"])
  x_new[cols] += d * np.asarray(st["x_sd"])  # one sweep sd, off the subspace
  off = s.support(x_new)
  assert off["outside"] and off["residual"] > 0.9
  assert abs(off["mahalanobis"] - inside["mahalanobis"]) < 1e-6  # same scores
  assert off["standardised_distance"] > 0.0


def test_stage_fits_each_weighted_outcome(tmp_path):
  _, runs = _wide_runs(n_runs=60, n_states=3)
  runs_lib.write_runs(runs, tmp_path / "sweep" / "runs.parquet")
  cfg = base.get_config("smoke")
  cfg.unlock()
  cfg.outcome = "loss"
  # The DML family alone: what is tested is the stage's handling of extra outcomes,
  # the same for every method (the stack's stage run is surface_stage_test's).
  cfg.surface.method = "dml"
  cfg.surface.floors = (1e-3,)
  cfg.surface.pairs = "never"
  cfg.surface.n_folds = 3
  cfg.optimise.outcome_weights = {"loss": 1.0, "other": 0.5}
  cfg.lock()
  fit_stage.run(cfg, tmp_path)
  d = tmp_path / "surface"
  assert load_surface(d).outcome == "loss"
  for name in ("loss", "other"):
    assert load_surface(d / name).outcome == name
    assert json.loads((d / name / "diagnostics.json").read_text())["outcome"] == name
  cfg.unlock()
  cfg.optimise.outcome_weights = {"loss": 1.0, "nope": 1.0}
  cfg.lock()
  with pytest.raises(KeyError, match="outcome_weights"):
    fit_stage.run(cfg, tmp_path)


def test_pure_error_prior_from_replicates():
  keys = np.array([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [0.5, 0.5]])
  y = np.array([1.0, 3.0, 0.0, 2.0, 7.0])
  var, dof = fit.pure_error(y, keys)
  assert dof == 2 and var == pytest.approx((2.0 + 2.0) / 2)
  pe = fit.noise_prior(y, keys)
  assert pe.source == "replicates" and pe.var == pytest.approx(2.0) and pe.dof == 2
  default = fit.noise_prior(y, keys[[0, 2, 4]])  # no replicates left
  assert default.source == "default"
  # 90% of the prior mass of the noise variance below var(y) (chi-square calibration).
  from scipy import stats
  draws = default.dof * default.var / stats.chi2.rvs(default.dof, size=200_000,
                                                     random_state=0)
  assert np.mean(draws < np.var(y)) == pytest.approx(fit.NOISE_PRIOR_QUANTILE, abs=0.01)


def test_noise_does_not_collapse_on_a_small_wide_sweep():
  # 20 runs, 8 domains: ~100 design columns (pairs, interactions), so the design could
  # interpolate the outcomes; without a noise prior the evidence drives the noise sd
  # to ~0 on this world and the held-out intervals cover ~45% of new runs.
  world = planted.PlantedWorld(n_domains=8, n_features=3, seed=3)
  noise = 0.05
  runs = world.sample_sweep(n_runs=220, n_pool_states=2, noise=noise, sample_seed=3)
  s = fit.fit_surface(runs.select(np.arange(20)), "loss", method="dml")
  assert s.info["noise_prior"]["source"] == "default"
  assert s.noise_sd > 0.5 * noise
  held = np.arange(20, 220)
  covered = []
  for state in range(2):  # run i has pool state i % 2
    rows = held[held % 2 == state]
    p = s.predictive(runs.W[rows], runs.X[rows[0]])
    y = runs.y("loss")[rows]
    covered.append((p.lo <= y) & (y <= p.hi))
  cov = float(np.mean(np.concatenate(covered)))
  print(f"small wide sweep: noise sd {s.noise_sd:.4f} (true {noise}), "
        f"90% predictive coverage of 200 new runs {cov:.3f}")
  assert 0.75 <= cov <= 1.0


def test_pool_calibration_takes_out_only_the_given_pure_noise():
  # Held-out contrasts = effect error + noise. Without a pure-error figure nothing is
  # taken out (the widest scale); a known noise variance narrows it; one as large as
  # the contrasts themselves leaves no widening at all.
  rng = np.random.default_rng(0)
  n, q = 240, 4
  z = rng.standard_normal((n, q))
  pools = np.arange(n) % 12
  y = z @ np.array([1.0, -0.5, 0.3, 0.0]) + 0.3 * np.sin(3 * z[:, 0]) * (pools % 3)
  y = y + 0.2 * rng.standard_normal(n)
  g = np.arange(q)
  wide = fit.pool_calibration(z, y, g, pools, None, 4, 0)
  narrower = fit.pool_calibration(z, y, g, pools, None, 4, 0, pure_noise_var=0.04)
  assert wide > narrower >= 1.0
  assert fit.pool_calibration(z, y, g, pools, None, 4, 0, pure_noise_var=100.0) == 1.0
  assert fit.pool_calibration(z, y, g, np.zeros(n), None, 4, 0) == 1.0  # one pool


@pytest.mark.parametrize("key,value", [("pairs", "sometimes"), ("modifiers", ("cubic",))])
def test_bad_surface_config_names_the_key(key, value):
  world = planted.PlantedWorld(n_domains=3, n_features=2, seed=0)
  runs = world.sample_sweep(n_runs=24, n_pool_states=4, noise=0.01)
  cfg = fit.default_config()
  cfg[key] = value
  with pytest.raises(ValueError, match=f"surface.{key}"):
    fit.fit_surface(runs, "loss", config=cfg)


@pytest.fixture(scope="module")
def synergy_dml():
  """(world, DML surface) on a 192-run sweep over 48 pool states of ten covariates."""
  world = worlds.make_world("synergy", seed=0)
  runs = world.sweep(n_runs=192, n_pools=48, seed=0)
  return world, fit.fit_surface(runs, "loss", method="dml", config=fit.default_config())


def test_support_flags_pools_drawn_like_the_sweeps_rarely_and_shifted_ones_mostly(
    synergy_dml):
  """Ten covariates over 48 pool states: a new pool drawn like the sweep's leaves some
  covariate's range (or beats the in-sample maxima) about a third of the time, so
  those are reported but are no verdict; against the held-out states it is flagged
  rarely, while pools past the sweep's range are flagged."""
  world, s = synergy_dml
  held = s.support_stats["held_out"]
  assert len(held["mahalanobis"]) == 48

  def flags(pools):
    reps = [s.support(dict(zip(world.features, p.x_F))) for p in pools]
    return (sum(r["outside"] for r in reps), sum(bool(r["outside_range"]) for r in reps))

  new_out, new_range = flags(world.new_pools(24, seed=1))
  shifted_out, _ = flags(world.shifted_pools(24, seed=1))
  assert new_out <= 3 < new_range
  assert shifted_out >= 18


def test_range_excess_counts_only_exits_past_the_sweeps_own_held_out_exits(
    synergy_dml, monkeypatch):
  """One covariate moved past the sweep's range by less than the largest exit of the
  sweep's own states held out is listed in outside_range but is no verdict; moved past
  it, range_excess is beyond its limit. Surfaces saved before the statistic was measured
  held out test the other three."""
  _, s = synergy_dml
  st = s.support_stats
  limit = max(st["held_out"]["range_excess"])
  assert limit > 0
  c, sd = int(st["cols"][0]), float(st["x_sd"][0])
  name = s.features[c]

  def moved(by_limits):
    x = np.asarray(st["mean"], np.float64).copy()
    x[c] = st["max"][c] + by_limits * limit * sd
    return s.support(dict(zip(s.features, x.tolist())))

  near, far = moved(0.5), moved(2.0)
  assert near["outside_range"] == [name] and far["outside_range"] == [name]
  np.testing.assert_allclose([near["range_excess"], far["range_excess"]],
                             [0.5 * limit, 2.0 * limit], rtol=1e-6)
  assert "range_excess" not in near["beyond"]
  assert "range_excess" in far["beyond"] and far["outside"]
  monkeypatch.delitem(st["held_out"], "range_excess")
  assert "range_excess" not in moved(2.0)["beyond"]


def test_range_excess_of_rows_against_a_range():
  xs = np.array([[0.0, 0.5], [1.5, -0.2], [-2.0, 3.0]])
  np.testing.assert_allclose(
      cbasis.range_excess(xs, np.array([-1.0, 0.0]), np.array([1.0, 1.0])),
      [0.0, 0.5, 2.0])


def test_fit_surface_runs_every_family_on_one_blas_thread(monkeypatch):
  """The families' solves and searches are small; BLAS threads only add overhead, so a
  fit runs on one, whatever the caller's setting, and restores it after."""
  threadpoolctl = pytest.importorskip("threadpoolctl")
  from causalmix_jax.surface import robust
  seen = []

  def blas_threads():
    return {i["num_threads"] for i in threadpoolctl.threadpool_info()
            if i["user_api"] == "blas"}

  def fake_stack(runs, outcome, config, covariate_blind=False):
    seen.append(blas_threads())
    return "fitted"

  monkeypatch.setattr(robust, "fit_stack", fake_stack)
  cfg = fit.default_config()
  cfg.companion = "none"  # the fake stack is no surface to attach a companion to
  with threadpoolctl.threadpool_limits(2, user_api="blas"):
    before = blas_threads()
    assert fit.fit_surface(_wide_runs()[1], "loss", config=cfg) == "fitted"
    assert blas_threads() == before
  assert seen == [{1}]


def test_best_known_mixtures_rank_seed_replicates_by_their_mean():
  # Two pool states, three mixtures run in each with two seeds. Mixture a's seed 0 is
  # the single best run of state 0 (lucky); b is better on average in both states.
  a, b, c = [0.6, 0.2, 0.2], [0.2, 0.6, 0.2], [0.2, 0.2, 0.6]
  w = np.array([a, a, b, b, c, c] * 2)
  x = np.repeat(np.array([[0.0, 1.0], [1.0, 0.5]]), 6, axis=0)
  y = np.array([0.80, 1.40, 1.05, 1.07, 1.20, 1.22,    # state 0: a 1.10, b 1.06
                2.10, 2.30, 2.02, 2.04, 2.20, 2.22])   # state 1: a 2.20, b 2.03
  xb = cbasis.covariate_basis(x, 4)
  best = fit._support_stats(x, w, xb, y, maximize=False, n_best=3)["best_w"]
  np.testing.assert_allclose(best[0], b)
  assert [list(v) for v in best] == [b, a, c]
  # Without replicates every run is its own mean: the best run leads.
  one = fit._support_stats(x[::2], w[::2], cbasis.covariate_basis(x[::2], 4), y[::2],
                           n_best=1)["best_w"]
  np.testing.assert_allclose(one[0], a)
