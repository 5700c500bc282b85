"""Tests for the mixture optimiser: exact feasibility of every recommendation under random
constraints, the brute-force optimum on a small simplex, risk objectives, infeasibility
errors, multi-objective weighting and the `optimise` stage."""

import json
import logging
import pathlib

import hypothesis
import hypothesis.strategies as st
import jax.numpy as jnp
import numpy as np
import pytest

from causalmix_jax import artifacts
from causalmix_jax.configs import base
from causalmix_jax.optimise import Constraints, InfeasibleConstraintsError, recommend
from causalmix_jax.optimise import constraints as cons
from causalmix_jax.optimise import settings
from causalmix_jax.optimise.recommend import surface_sampler
from causalmix_jax.stages import optimise as optimise_stage
from causalmix_jax.surface import surface as surface_lib

SMALL = dict(n_candidates=512, n_starts=8, n_steps=120)


def _property(n: int) -> hypothesis.settings:
  """Deterministic hypothesis settings (never flaky), n examples."""
  return hypothesis.settings(derandomize=True, deadline=None, database=None, max_examples=n,
                             suppress_health_check=list(hypothesis.HealthCheck))


def _quadratic(p, w_NxD, x_F):
  """Posterior draws of a convex quadratic loss; x moves the optimum along domain 0."""
  centre_SxD = p["wstar"] + 0.05 * x_F[0] * (jnp.arange(p["wstar"].shape[1]) == 0)
  d = w_NxD[None] - centre_SxD[:, None, :]
  return p["c"][:, None] + (d ** 2 * p["a"][:, None, :]).sum(-1)


class FakeSurface:
  """A known surface with posterior draws, following the Surface contract."""

  def __init__(self, n_domains=3, n_draws=64, seed=0, maximize=False, outcome="loss"):
    rng = np.random.default_rng(seed)
    self.domains = [f"d{i}" for i in range(n_domains)]
    self.features = ["size"]
    self.outcome, self.maximize = outcome, maximize
    wstar = rng.dirichlet(np.full(n_domains, 3.0))
    sign = -1.0 if maximize else 1.0
    self.params = {
        "c": jnp.asarray(sign * rng.normal(2.0, 0.05, n_draws), jnp.float32),
        "wstar": jnp.asarray(wstar + rng.normal(0, 0.05, (n_draws, n_domains)), jnp.float32),
        "a": jnp.asarray(sign * rng.uniform(0.5, 2.0, (n_draws, n_domains)), jnp.float32)}
    self.x_ref = np.zeros(1, np.float32)
    self.w_ref = rng.dirichlet(np.full(n_domains, 5.0))

  def sampler(self):
    return _quadratic, self.params

  def support(self, x):
    dist = max(0.0, abs(float(np.asarray(x).reshape(-1)[0])) - 1.0)
    return {"inside": dist == 0, "max_distance_sd": dist}

  def draws(self, w_NxD, x=0.0):
    return np.asarray(_quadratic(self.params, jnp.asarray(w_NxD, jnp.float32),
                                 jnp.asarray([x], jnp.float32)), np.float64)


def _simplex_grid(n):
  g = np.arange(n + 1) / n
  a, b = np.meshgrid(g, g, indexing="ij")
  keep = a + b <= 1 + 1e-12
  return np.stack([a[keep], b[keep], np.clip(1 - a[keep] - b[keep], 0, None)], 1)


def _brute_force(objective_fn, n=200, rounds=4):
  """Dense grid on the D=3 simplex, then successively finer grids around the best."""
  w = _simplex_grid(n)
  best = w[np.argmin(objective_fn(w))]
  h = 1.0 / n
  for _ in range(rounds):
    off = np.linspace(-2 * h, 2 * h, 41)
    a, b = np.meshgrid(best[0] + off, best[1] + off, indexing="ij")
    w = np.stack([a.ravel(), b.ravel(), 1 - a.ravel() - b.ravel()], 1)
    w = w[(w >= 0).all(1)]
    best = w[np.argmin(objective_fn(w))]
    h = h / 10
  return best, float(objective_fn(best[None])[0])


# ------------------------------------------------------------------ exact projection


@_property(150)
@hypothesis.given(st.integers(2, 7), st.integers(0, 2**31 - 1))
def test_box_simplex_projection_is_exact_and_nearest(dn, seed):
  rng = np.random.default_rng(seed)
  lo = rng.uniform(0, 1.0 / dn, dn) * (rng.uniform(size=dn) < 0.5)
  hi = np.maximum(lo, rng.uniform(0.5 / dn, 1, dn))
  hypothesis.assume(lo.sum() <= 1 and hi.sum() >= 1)
  v = rng.normal(0, 1, dn)
  w = cons.project_box_simplex(v, lo, hi)
  assert abs(w.sum() - 1) < 1e-12
  assert np.all(w >= lo) and np.all(w <= hi)
  for _ in range(20):  # no feasible point is nearer to v
    u = cons.project_box_simplex(rng.normal(0, 1, dn), lo, hi)
    assert ((u - v) ** 2).sum() >= ((w - v) ** 2).sum() - 1e-12


def _random_constraints(rng, domains, ref):
  dn = len(domains)
  kw = {}
  if rng.uniform() < 0.5:
    kw["min_weight"] = {d: float(rng.uniform(0, 0.6 / dn)) for d in domains
                        if rng.uniform() < 0.5}
  if rng.uniform() < 0.5:
    kw["max_weight"] = {d: float(rng.uniform(0.1, 1)) for d in domains
                        if rng.uniform() < 0.5}
  if rng.uniform() < 0.4:
    kw["max_epochs"] = float(rng.uniform(0.5, 4))
    kw["tokens"] = {d: float(rng.uniform(1e6, 1e8)) for d in domains}
    kw["budget_tokens"] = float(rng.uniform(1e7, 1e8))
  if rng.uniform() < 0.3:
    d = domains[int(rng.integers(dn))]
    kw["pinned"] = {d: float(rng.choice([0.0, rng.uniform(0.05, 0.4)]))}
  if rng.uniform() < 0.5:
    kw["trust_radius"] = float(rng.uniform(0.05, 1.2))
    kw["trust_kind"] = str(rng.choice(["l1", "kl"]))
  if rng.uniform() < 0.6:
    kw["sampler_min_weight"] = float(rng.choice([1e-3, 0.02, 0.08]))
  return Constraints(**kw)


def _assert_satisfies(w, c: Constraints, domains, ref, tol=1e-9):
  """Independent check of every constraint (not via FeasibleSet.violations)."""
  w = np.asarray(w, np.float64)
  assert abs(w.sum() - 1) <= tol and np.all(w >= -tol)
  for i, d in enumerate(domains):
    lo = c.min_weight.get(d, 0) if isinstance(c.min_weight, dict) else c.min_weight
    hi = c.max_weight.get(d, 1) if isinstance(c.max_weight, dict) else c.max_weight
    assert w[i] >= lo - tol and w[i] <= hi + tol, (d, w[i], lo, hi)
    if c.max_epochs > 0:
      assert w[i] * c.budget_tokens / c.tokens[d] <= c.max_epochs + tol
    if d in c.pinned:
      assert abs(w[i] - c.pinned[d]) <= tol
    assert w[i] <= tol or w[i] >= c.sampler_min_weight - tol, (d, w[i])
  if c.trust_radius > 0:
    if c.trust_kind == "l1":
      dist = np.abs(w - ref).sum()
    else:
      pos = w > 0
      assert np.all(ref[pos] > 0)
      dist = np.sum(w[pos] * np.log(w[pos] / ref[pos]))
    assert dist <= c.trust_radius + tol


@_property(300)
@hypothesis.given(st.integers(2, 7), st.integers(0, 2**31 - 1))
def test_make_feasible_satisfies_every_constraint(dn, seed):
  rng = np.random.default_rng(seed)
  domains = [f"d{i}" for i in range(dn)]
  ref = rng.dirichlet(np.ones(dn))
  c = _random_constraints(rng, domains, ref)
  try:
    fs = c.resolve(domains, ref)
    w, info = fs.make_feasible(rng.dirichlet(np.full(dn, 0.3)))
  except InfeasibleConstraintsError as e:
    assert "infeasible" in str(e)
    return
  _assert_satisfies(w, c, domains, ref)
  assert fs.violations(w) == []
  for d in info["zeroed"]:
    assert w[domains.index(d)] == 0


_SURFACE4 = FakeSurface(n_domains=4, seed=3)


@_property(14)
@hypothesis.given(st.integers(0, 2**31 - 1), st.sampled_from(["A", "S"]))
def test_every_recommendation_satisfies_every_constraint(seed, method):
  rng = np.random.default_rng(seed)
  domains = _SURFACE4.domains
  ref = rng.dirichlet(np.ones(4))
  c = _random_constraints(rng, domains, ref)
  try:
    c.resolve(domains, ref)
  except InfeasibleConstraintsError:
    hypothesis.assume(False)
  rec = recommend(_SURFACE4, covariates={"size": float(rng.normal())}, reference=ref,
                  constraints=c, method=method, seed=seed % 1000, **SMALL)
  _assert_satisfies(rec.weight_vector(), c, domains, ref)
  for d in rec.zeroed:
    assert rec.weights[d] == 0


# ------------------------------------------------------------------ optimality


def test_search_reaches_brute_force_optimum_mean():
  s = FakeSurface(n_domains=3, seed=0)
  rec = recommend(s, constraints=Constraints(), objective="mean", method="S", **SMALL)
  w_bf, v_bf = _brute_force(lambda w: s.draws(w).mean(0))
  assert rec.predicted.mean <= v_bf + 1e-4
  assert np.abs(np.array(rec.weight_vector()) - w_bf).sum() < 2e-2
  # The predicted value is the posterior mean at the returned mixture.
  assert rec.predicted.mean == pytest.approx(s.draws([rec.weight_vector()]).mean(), abs=1e-6)


def test_search_reaches_brute_force_optimum_risk_bound_maximised():
  s = FakeSurface(n_domains=3, seed=1, maximize=True, outcome="accuracy")
  rec = recommend(s, objective="lcb", method="S", **SMALL)
  # Maximised outcome: the risk-averse bound is the lower 5% quantile; maximise it.
  w_bf, v_bf = _brute_force(lambda w: -np.quantile(s.draws(w), 0.05, axis=0))
  assert rec.objective == "bound"
  assert rec.objective_value >= -v_bf - 1e-4
  assert rec.predicted.lo == pytest.approx(rec.objective_value, abs=1e-5)


def test_analytic_step_improves_on_reference_inside_trust_region():
  s = FakeSurface(n_domains=3, seed=2)
  ref = np.array([0.6, 0.3, 0.1])
  c = Constraints(trust_radius=0.1)
  rec = recommend(s, reference=ref, constraints=c, method="A")
  assert np.abs(np.array(rec.weight_vector()) - ref).sum() <= 0.1 + 1e-9
  assert rec.improvement_over_reference.mean > 0
  # Theta points downhill: the step moves mass from the domain with the largest return.
  step = np.array(rec.weight_vector()) - ref
  theta = np.array([rec.theta[d] for d in s.domains])
  assert np.dot(step, theta - theta.mean()) < 0


def test_probability_of_improvement_objective():
  s = FakeSurface(n_domains=3, seed=4)
  ref = np.array([0.2, 0.5, 0.3])
  rec = recommend(s, reference=ref, objective="pi", **SMALL)
  z = s.draws(np.stack([rec.weight_vector(), ref]))
  p = float((z[:, 0] < z[:, 1]).mean())
  assert rec.improvement_over_reference.prob_better == pytest.approx(p)
  assert rec.objective_value == pytest.approx(p, abs=1e-4)
  assert p >= 0.95
  mean_rec = recommend(s, reference=ref, objective="mean", **SMALL)
  assert p >= mean_rec.improvement_over_reference.prob_better - 1e-12


def test_multi_objective_weighted_sum():
  a = FakeSurface(n_domains=3, seed=5, outcome="loss_a")
  b = FakeSurface(n_domains=3, seed=6, outcome="acc_b", maximize=True)
  rec = recommend([a, b], outcome_weights={"loss_a": 1.0, "acc_b": 0.5}, objective="mean",
                  **SMALL)
  w_bf, v_bf = _brute_force(lambda w: a.draws(w).mean(0) - 0.5 * b.draws(w).mean(0))
  assert rec.objective_value <= v_bf + 1e-4
  assert rec.outcome == "1*loss_a+0.5*acc_b"


def test_support_warning_when_outside(caplog):
  s = FakeSurface(n_domains=3, seed=0)
  with caplog.at_level(logging.WARNING):
    rec = recommend(s, covariates={"x_size": 3.0}, method="A")
  assert not rec.support["inside"]
  assert rec.support["max_distance_sd"] == pytest.approx(2.0)
  assert "outside the sweep's support" in caplog.text
  assert rec.covariates == {"size": 3.0}


def test_sampler_min_weight_zeroes_and_reports():
  s = FakeSurface(n_domains=3, seed=0)
  fs = Constraints(sampler_min_weight=0.1).resolve(s.domains, np.full(3, 1 / 3))
  w, info = fs.make_feasible(np.array([0.05, 0.45, 0.5]))
  assert w[0] == 0 and info["zeroed"] == ["d0"]
  np.testing.assert_allclose(w, [0, 0.45 / 0.95, 0.5 / 0.95], atol=1e-12)
  # A lower bound below the sampler's resolution is raised to it, not zeroed.
  fs = Constraints(sampler_min_weight=0.1, min_weight={"d0": 0.01}).resolve(
      s.domains, np.full(3, 1 / 3))
  w, info = fs.make_feasible(np.array([0.02, 0.48, 0.5]))
  assert w[0] == pytest.approx(0.1) and info["zeroed"] == []


# ------------------------------------------------------------------ infeasibility


@pytest.mark.parametrize("kw,match", [
    (dict(min_weight=0.4), r"minimum weights sum to 1\.2"),
    (dict(max_weight={"d0": 0.2, "d1": 0.2, "d2": 0.2}), r"maximum weights sum to 0\.6"),
    (dict(max_epochs=1.0, tokens={"d0": 1e6, "d1": 1e6, "d2": 1e6}, budget_tokens=1e7),
     r"max_epochs=1"),
    (dict(pinned={"d0": 0.5}, max_weight={"d0": 0.3}), r"pinned\[d0\]=0\.5.*max_weight"),
    (dict(pinned={"d0": 0.005}, sampler_min_weight=0.01), r"sampler_min_weight"),
    (dict(pinned={"d0": 0.9}, trust_radius=0.2), r"trust region"),
    (dict(min_weight={"d2": 0.1}, trust_radius=0.5, trust_kind="kl"), r"KL trust region"),
    (dict(sampler_min_weight=0.6, trust_radius=0.5),
     r"sampler_min_weight=0\.6 with the trust region"),
])
def test_infeasible_constraints_raise_clear_errors(kw, match):
  s = FakeSurface(n_domains=3)
  ref = np.array([0.5, 0.5, 0.0])
  with pytest.raises(InfeasibleConstraintsError, match=match):
    recommend(s, reference=ref, constraints=Constraints(**kw), method="A")


def test_bad_inputs_name_the_problem():
  s = FakeSurface(n_domains=3)
  with pytest.raises(ValueError, match=r"unknown domain.*'web'"):
    recommend(s, constraints=Constraints(pinned={"web": 0.2}), method="A")
  with pytest.raises(ValueError, match=r"missing feature.*size"):
    recommend(s, covariates={"other": 1.0}, method="A")
  with pytest.raises(ValueError, match=r"unknown objective"):
    recommend(s, objective="median")
  with pytest.raises(ValueError, match=r"sum to 1"):
    recommend(s, reference=[0.5, 0.2, 0.2])


class ReportsApartSurface(FakeSurface):
  """FakeSurface whose reported figures come from other draws (its curvature doubled)
  than the ones it decides on."""
  reports_apart = True

  def report_sampler(self):
    return _quadratic, {**self.params, "a": 2 * self.params["a"]}


def test_reported_figures_come_from_the_report_sampler_and_decisions_do_not():
  kw = dict(method="S", n_candidates=256, n_starts=4, n_steps=20)
  base, apart = recommend(FakeSurface(n_domains=3), **kw), recommend(
      ReportsApartSurface(n_domains=3), **kw)
  assert apart.weights == base.weights
  s = ReportsApartSurface(n_domains=3)
  fn, params = s.report_sampler()
  rows = np.array([[apart.weights[d] for d in s.domains], np.full(3, 1 / 3)])
  z = np.asarray(fn(params, jnp.asarray(rows, jnp.float32),
                    jnp.zeros(1, jnp.float32)), np.float64)
  assert apart.predicted.mean == pytest.approx(z[:, 0].mean(), rel=1e-5)
  assert apart.improvement_over_uniform.mean == pytest.approx(
      (z[:, 1] - z[:, 0]).mean(), rel=1e-4, abs=1e-7)
  assert apart.predicted.mean != pytest.approx(base.predicted.mean, rel=1e-4)
  with pytest.raises(ValueError, match=r"use: unknown 'bogus'"):
    surface_sampler(s, use="bogus")


# ------------------------------------------------------------------ stage


def _stage_workdir(tmp_path: pathlib.Path) -> pathlib.Path:
  wd = tmp_path / "wd"
  (wd / "surface").mkdir(parents=True)
  (wd / "surface" / "surface.json").write_text("{}")
  artifacts.write_json(wd / "pool" / "pool.json", {
      "domains": ["d0", "d1", "d2"],
      "per_domain": {"d0": {"tokens": 2_000}, "d1": {"tokens": 50_000},
                     "d2": {"tokens": 50_000}}})
  artifacts.write_json(wd / "pool" / "covariates.json", {
      "domains": ["d0", "d1", "d2"], "vector": {"x_size": 0.5, "x_other": 1.0}})
  return wd


def test_run_stage_writes_mixture_with_constraints(tmp_path, monkeypatch):
  surface = FakeSurface(n_domains=3, seed=0)
  monkeypatch.setattr(surface_lib, "load_surface", lambda d: surface)
  wd = _stage_workdir(tmp_path)
  cfg = base.get_config("smoke")
  cfg.optimise.max_epochs = 1.0
  cfg.optimise.pinned = {"d2": 0.25}
  cfg.optimise.n_candidates = 512
  cfg.optimise.n_starts = 8
  cfg.optimise.n_steps = 120
  path = optimise_stage.run(cfg, wd)
  assert path == wd / "optimise" / "mixture.json"
  mix = json.loads(path.read_text())
  budget = settings.target_budget_tokens(cfg)
  assert budget == cfg.target.optim.steps * cfg.target.optim.batch_size * \
      cfg.target.model.seq_len
  w = mix["weights"]
  assert w["d0"] * budget / 2_000 <= 1.0 + 1e-9  # the scarce domain is capped
  assert w["d2"] == pytest.approx(0.25, abs=1e-12)
  assert sum(w.values()) == pytest.approx(1.0, abs=1e-12)
  assert mix["covariates"] == {"size": 0.5}
  assert mix["constraints"]["max_epochs"] == 1.0
  assert (wd / "optimise" / "mixture.yaml").exists()
  rows = [json.loads(x) for x in (wd / "optimise" / "metrics.jsonl").read_text().splitlines()]
  assert rows[-1]["event"] == "recommend"
  # The fake surface records no sweep, so there is no best-known mixture to compare.
  assert rows[-1]["improvement_over_best_known"] is None and "best_known" not in mix


def test_run_stage_errors_name_missing_features(tmp_path, monkeypatch):
  surface = FakeSurface(n_domains=3)
  surface.features = ["size", "depth"]
  monkeypatch.setattr(surface_lib, "load_surface", lambda d: surface)
  wd = _stage_workdir(tmp_path)
  with pytest.raises(ValueError, match=r"covariates\.json.*\['depth'\]"):
    optimise_stage.run(base.get_config("smoke"), wd)
  cfg = base.get_config("smoke")
  cfg.optimise.pinned = {"web": 0.1}
  surface.features = ["size"]
  with pytest.raises(ValueError, match=r"optimise\.pinned.*'web'"):
    optimise_stage.run(cfg, wd)


@pytest.mark.parametrize("key,value", [("objective", "best"), ("method", "Z"),
                                       ("off_support", "anchor"),
                                       ("safe_score", "median"),
                                       ("off_support_trigger", "often"),
                                       ("safe_baseline", "natural"),
                                       ("mean_guard", "always"),
                                       ("fallback_score", "lcb"),
                                       ("decision_average", "trees")])
def test_run_stage_names_a_bad_choice_before_reading_surfaces(tmp_path, monkeypatch, key,
                                                              value):
  def no_surface(d):
    raise AssertionError("the surface was read before the config was checked")
  monkeypatch.setattr(surface_lib, "load_surface", no_surface)
  cfg = base.get_config("smoke")
  cfg.optimise[key] = value
  with pytest.raises(ValueError, match=rf"config key optimise\.{key}='{value}'"):
    optimise_stage.run(cfg, _stage_workdir(tmp_path))


def test_run_stage_multi_objective_reads_one_surface_per_outcome(tmp_path, monkeypatch):
  surfaces = {"loss_a": FakeSurface(n_domains=3, seed=5, outcome="loss_a"),
              "acc_b": FakeSurface(n_domains=3, seed=6, outcome="acc_b", maximize=True)}
  wd = _stage_workdir(tmp_path)
  for name in surfaces:
    (wd / "surface" / name).mkdir()
    (wd / "surface" / name / "surface.json").write_text("{}")
  monkeypatch.setattr(surface_lib, "load_surface",
                      lambda d: surfaces.get(d.name, surfaces["loss_a"]))
  cfg = base.get_config("smoke")
  cfg.optimise.outcome_weights = {"loss_a": 1.0, "acc_b": 0.5}
  cfg.optimise.method = "A"
  mix = json.loads(optimise_stage.run(cfg, wd).read_text())
  assert mix["outcome"] == "0.5*acc_b+1*loss_a"  # the study's outcome first, then by name
  assert mix["diagnostics"]["outcome_weights"] == [0.5, 1.0]
  cfg.optimise.outcome_weights = {"loss_a": 1.0, "nosuch": 1.0}
  with pytest.raises(FileNotFoundError,
                     match=r"no surface for outcome 'nosuch'.*optimise\.outcome_weights"):
    optimise_stage.run(cfg, wd)


def test_with_a_fitted_baseline_surface_on_the_planted_world():
  """End to end on a real fitted model: the linear baseline with covariates (its sampler
  returns a fresh closure per call) on a confounded planted sweep."""
  from causalmix_jax.surface import baselines
  from causalmix_jax.surface.planted import PlantedWorld
  world = PlantedWorld(n_domains=4, n_features=2, seed=1)
  runs = world.sample_sweep(n_runs=96, n_pool_states=8)
  surface = baselines.fit_linear(runs, "loss", use_covariates=True)
  x = world.shifted_pools(1, outside_fraction=1.0)[0]
  shares = world.token_shares(x)[0]
  c = Constraints(min_weight=0.05, trust_radius=0.3, sampler_min_weight=0.01)
  kw = dict(covariates=dict(zip(surface.features, x)), reference=shares, constraints=c,
            method="A")
  recs = [recommend(surface, **kw) for _ in range(2)]
  plain = recommend(surface, off_support="uniform", **kw)
  # The reference breaks min_weight, so compare with the feasible point nearest to it.
  fs = c.resolve(surface.domains, shares)
  w0, _ = fs.make_feasible(fs.centre)
  fn, params = surface.sampler()
  post_mean = lambda w: float(np.mean(fn(params, jnp.asarray([w], jnp.float32),  # noqa: E731
                                         jnp.asarray(x, jnp.float32))))
  for rec in recs + [plain]:
    _assert_satisfies(rec.weight_vector(), c, surface.domains, shares)
    assert not rec.support["inside"]
    assert rec.predicted.mean == pytest.approx(post_mean(rec.weight_vector()), abs=1e-5)
  # Off the support the fallback without the segment toward the pick does no worse than
  # the constraints' centre; the default's segment only lowers the bound of the paired
  # difference to uniform that the fallback minimises.
  assert plain.predicted.mean <= post_mean(w0) + 1e-5
  ub = lambda r: r.diagnostics["difference_to_uniform_upper_bound"]  # noqa: E731
  assert ub(recs[0]) <= ub(plain) + 1e-6
  assert recs[0].weights == recs[1].weights
