"""Tests of the surface evaluation harness (`surface/evaluation.py`) on a tiny fake
world with a closed-form oracle, plus the real-sweep adapters on the peer data."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import subprocess
import sys
import types
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from causalmix_jax.runs import Runs
from causalmix_jax.surface import baselines
from causalmix_jax.surface import evaluation
from causalmix_jax.surface.prediction import Prediction

DATA_DIR = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"
TIMING_KEYS = ("fit_s", "recommend_s")


@dataclasses.dataclass(frozen=True)
class FakePool:
  x_F: np.ndarray
  tokens_D: np.ndarray
  budget: float
  latent: np.ndarray
  kind: str


class FakeWorld:
  """loss = 3 + 0.1 * x_0 - sum_d a_d(x) log(eps + w_d), a = softplus(b + B x): the best
  mixture is closed-form (w_d = a_d (1 + D eps) / sum(a) - eps). Domain and feature
  names are not sorted, so the harness must map orders."""

  name = "fake"
  mechanism = "log returns"
  eps = 1e-3

  def __init__(self, seed: int = 0):
    rng = np.random.default_rng(seed)
    self.domains = ["web", "code", "math"]
    self.features = ["size", "q_web", "a_code"]
    self.b_D = rng.normal(0.0, 0.5, 3)
    self.B_DxF = rng.normal(0.0, 0.5, (3, 3))
    self.A_DxF = rng.normal(0.0, 0.5, (3, 3))

  def _a(self, pool) -> np.ndarray:
    return 0.1 * np.log1p(np.exp(self.b_D + self.B_DxF @ pool.x_F))

  def _pool(self, rng: np.random.Generator, kind: str, shift: float = 0.0) -> FakePool:
    x_F = rng.normal(shift, 1.0, 3)
    logits = self.A_DxF @ x_F
    shares = np.exp(logits) / np.exp(logits).sum()
    return FakePool(x_F, 1e9 * shares, 5e8, x_F.copy(), kind)

  def sweep(self, n_runs=384, n_pools=48, seeds=1, seed=0) -> Runs:
    rng = np.random.default_rng([seed, 1])
    pools = [self._pool(rng, "sweep") for _ in range(n_pools)]
    rows = []
    for s in range(seeds):
      for i in range(n_runs):
        pool = pools[i % n_pools]
        w = rng.dirichlet(3.0 * pool.tokens_D / pool.tokens_D.sum())
        w = np.maximum(w, 1e-9)
        w /= w.sum()
        y = self.outcome(w[None], pool)[0] + 0.01 * rng.standard_normal()
        row = {"run_id": f"r{i}-s{s}", "seed": s, "budget_tokens": pool.budget,
               "y_loss": y}
        row |= {f"w_{d}": w[j] for j, d in enumerate(self.domains)}
        row |= {f"x_{f}": pool.x_F[k] for k, f in enumerate(self.features)}
        row |= {f"tokens_{d}": pool.tokens_D[j] for j, d in enumerate(self.domains)}
        rows.append(row)
    return Runs(pd.DataFrame(rows), source="fake world")

  def new_pools(self, n, seed=0):
    rng = np.random.default_rng([seed, 2])
    return [self._pool(rng, "new") for _ in range(n)]

  def shifted_pools(self, n, seed=0):
    rng = np.random.default_rng([seed, 3])
    return [self._pool(rng, "rich", shift=1.5) for _ in range(n)]

  def outcome(self, w_NxD, pool) -> np.ndarray:
    w = np.atleast_2d(w_NxD)
    return 3.0 + 0.1 * pool.x_F[0] - np.log(self.eps + w) @ self._a(pool)

  def best_mixture(self, pool) -> np.ndarray:
    a = self._a(pool)
    return a * (1 + len(a) * self.eps) / a.sum() - self.eps

  def regret(self, w_D, pool) -> float:
    return float(self.outcome(w_D, pool)[0] - self.outcome(self.best_mixture(pool), pool)[0])


def _no_fit(runs, outcome):
  del runs, outcome


def _oracle(world: FakeWorld) -> evaluation.Method:
  """Recommends the world's best mixture (mapping the runs-order pool back to the
  world's order)."""
  def recommend(model, pool, runs):
    f_idx = [runs.features.index(f) for f in world.features]
    w_world = world.best_mixture(dataclasses.replace(pool, x_F=pool.x_F[f_idx]))
    return np.asarray([w_world[world.domains.index(d)] for d in runs.domains])
  return evaluation.Method("oracle", _no_fit, None, None, recommend)


def _wide() -> evaluation.Method:
  """Predicts 0 with huge intervals for everything."""
  def wide(n):
    return Prediction(np.zeros(n), np.full(n, -1e9), np.full(n, 1e9))
  return evaluation.Method(
      "wide", _no_fit, lambda m, w, pool: wide(len(w)),
      lambda m, w, w_ref, pool: wide(len(w)),
      lambda m, pool, runs: np.full(len(runs.domains), 1.0 / len(runs.domains)))


def _truth(world: FakeWorld) -> evaluation.Method:
  """Predicts the world's true expected loss exactly (runs order mapped to the world's);
  recommends uniform."""
  def predict(runs, w, pool):
    d_idx = [runs.domains.index(d) for d in world.domains]
    f_idx = [runs.features.index(f) for f in world.features]
    m = world.outcome(np.asarray(w)[:, d_idx], dataclasses.replace(pool,
                                                                  x_F=pool.x_F[f_idx]))
    return Prediction(m, m, m)
  return evaluation.Method("truth", lambda runs, outcome: runs, predict, None,
                           lambda m, pool, runs: np.ones(len(runs.domains)) / 3.0)


def _my_uniform() -> evaluation.Method:
  return evaluation.Method("my_uniform", _no_fit, None, None,
                           lambda m, pool, runs: np.ones(len(runs.domains)) / 3.0)


def _checked() -> evaluation.Method:
  """Returns a recommendation whose safe check ran on shifted pools and replaced the
  pick with uniform on the first of them."""
  seen = []

  def recommend(model, pool, runs):
    del model
    seen.append(pool.kind)
    shifted = pool.kind != "new"
    replaced = shifted and seen.count(pool.kind) == 1
    return types.SimpleNamespace(
        weights={d: 1 / len(runs.domains) for d in runs.domains},
        diagnostics={"safe_check": {"ran": shifted, "replaced": replaced}})

  return evaluation.Method("checked", _no_fit, None, None, recommend)


def _claiming(name: str, pick, lo: float, hi: float) -> evaluation.Method:
  """Recommends pick(pool, runs) and reports [lo, hi] as its gain over uniform."""
  def recommend(model, pool, runs):
    w = pick(pool, runs)
    return types.SimpleNamespace(
        weights=dict(zip(runs.domains, np.asarray(w, float).tolist())), diagnostics={},
        improvement_over_uniform=types.SimpleNamespace(lo=lo, hi=hi))
  return evaluation.Method(name, _no_fit, None, None, recommend)


SIZES = dict(n_runs=60, n_pools=12, n_test_pools=2, n_mixtures=40)


def test_gain_interval_counts_against_the_true_gain():
  world = FakeWorld()
  oracle = _oracle(world).recommend
  lopsided = lambda pool, runs: np.array([0.98, 0.01, 0.01])  # noqa: E731
  uniform = lambda pool, runs: np.full(3, 1 / 3)  # noqa: E731
  methods = [_claiming("best", lambda p, r: oracle(None, p, r), 1e-12, 1e9),
             _claiming("lopsided", lopsided, 0.5, 1.0),
             _claiming("lopsided_wide", lopsided, -1e9, 1e9),
             _claiming("stays", uniform, 0.0, 0.0), _checked()]
  rows = evaluation.evaluate_world(world, methods, **SIZES)
  by = {(r["split"], r["method"]): r for r in rows}
  for split in evaluation.SPLITS:
    gains = lambda m: {k: by[(split, m)][k] for k in evaluation.GAIN_KEYS}  # noqa: E731
    # The oracle beats uniform on every pool, inside its (claiming) interval.
    assert gains("best") == dict(gain_moved=2, gain_below=0, gain_above=0, gain_claims=2,
                                 gain_false_claims=0)
    # Nearly all weight on one domain is worse than uniform under log returns: every
    # claim is false, and the truth lies below the interval.
    assert gains("lopsided") == dict(gain_moved=2, gain_below=2, gain_above=0,
                                     gain_claims=2, gain_false_claims=2)
    assert gains("lopsided_wide") == dict(gain_moved=2, gain_below=0, gain_above=0,
                                          gain_claims=0, gain_false_claims=0)
    # Uniform itself is no test of the interval; a method without one has no counts.
    assert gains("stays") == dict(gain_moved=0, gain_below=0, gain_above=0,
                                  gain_claims=0, gain_false_claims=0)
    assert all(v is None for v in gains("checked").values())
  g = evaluation.pooled_gains([by[("new", "lopsided")], by[("shifted", "best")], None])
  assert g == dict(moved=4, below=2, above=0, claims=4, false_claims=2)
  assert evaluation.gain_text(g).startswith(
      "the pick moved from uniform on 4 pools; the true gain over uniform fell below its "
      "90% interval on 2 (50%) (nominal 5%) and above it on 0 (0%)")
  assert evaluation.pooled_gains([by[("new", "checked")]]) is None


def _knowing(name: str, pick, known, lo: float, hi: float) -> evaluation.Method:
  """Recommends pick(pool, runs), names `known` as the sweep's best-known mixture and
  reports [lo, hi] as its gain over it."""
  def recommend(model, pool, runs):
    w = np.asarray(pick(pool, runs), float)
    return types.SimpleNamespace(
        weights=dict(zip(runs.domains, w.tolist())), diagnostics={},
        best_known=dict(zip(runs.domains, np.asarray(known, float).tolist())),
        improvement_over_best_known=types.SimpleNamespace(lo=lo, hi=hi))
  return evaluation.Method(name, _no_fit, None, None, recommend)


def test_gain_over_the_best_known_mixture_counts_against_the_truth():
  world = FakeWorld()
  oracle = _oracle(world).recommend
  lopsided = np.array([0.98, 0.01, 0.01])
  uniform = np.full(3, 1 / 3)
  methods = [_knowing("best", lambda p, r: oracle(None, p, r), lopsided, 1e-12, 1e9),
             _knowing("lopsided", lambda p, r: lopsided, uniform, 0.5, 1.0),
             _knowing("same", lambda p, r: uniform, uniform, -1.0, 1.0), _my_uniform()]
  rows = evaluation.evaluate_world(world, methods, **SIZES)
  by = {(r["split"], r["method"]): r for r in rows}
  for split in evaluation.SPLITS:
    known = lambda m: {k: by[(split, m)][k] for k in evaluation.KNOWN_KEYS}  # noqa: E731
    assert known("best") == dict(known_pools=2, known_below=0, known_worse=0,
                                 known_claims=2, known_false_claims=0)
    # Worse than the best-known mixture, below the interval that claimed a gain.
    assert known("lopsided") == dict(known_pools=2, known_below=2, known_worse=2,
                                     known_claims=2, known_false_claims=2)
    assert known("same") == dict(known_pools=2, known_below=0, known_worse=0,
                                 known_claims=0, known_false_claims=0)
    assert all(v is None for v in known("my_uniform").values())
  g = evaluation.pooled_known([by[("new", "lopsided")], by[("shifted", "best")], None,
                               by[("new", "my_uniform")]])
  assert g == dict(pools=4, below=2, worse=2, claims=4, false_claims=2)
  assert evaluation.known_text(g).startswith(
      "on 4 pools the true gain over the sweep's best-known mixture fell below its 90% "
      "interval on 2 (50%) (nominal 5%); the pick was in truth worse than that mixture "
      "on 2 (50%)")
  ours = [dict(r, method="ours") for r in rows if r["method"] == "lopsided"]
  assert "- ours' gain over the sweep's best-known mixture (new pools): on 2 pools" in (
      evaluation.summarise(ours))
  assert evaluation.replicates({0: ours})["shifted"]["ours_known"]["below"] == 2


@pytest.fixture(name="fast_candidates")
def fixture_fast_candidates(monkeypatch):
  monkeypatch.setattr(evaluation, "N_CANDIDATES", 2000)
  monkeypatch.setattr(evaluation, "ARGMIN_CANDIDATES", 512)


def _strip(rows):
  return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


def _uniform_regret(rows, split):
  return next(r["regret"] for r in rows if r["method"] == "uniform" and r["split"] == split)


def test_evaluate_world_rows_deterministic(fast_candidates):
  del fast_candidates
  world = FakeWorld()
  methods = (evaluation.default_methods(["linear", "loglinear", "uniform", "natural"])
             + [_oracle(world), _my_uniform(), _wide(), _truth(world)])
  rows = evaluation.evaluate_world(world, methods + [_checked()], **SIZES)
  checked = {r["split"]: r for r in rows[-2:]}
  assert checked["new"]["safe_check_ran"] == 0.0
  assert checked["shifted"]["safe_check_ran"] == 1.0
  assert 0.0 < checked["shifted"]["safe_check_replaced"] < 1.0
  assert checked["new"]["regret"] == pytest.approx(_uniform_regret(rows, "new"))
  assert rows[0]["safe_check_ran"] is None  # methods that return a mixture
  rows = rows[:-2]
  assert [(r["split"], r["method"]) for r in rows] == [
      (s, m.name) for m in methods for s in evaluation.SPLITS]
  by = {(r["split"], r["method"]): r for r in rows}
  for r in rows:
    assert set(evaluation.WORLD_KEYS) <= set(r)
    assert r["status"] == "ok" and r["world"] == "fake" and r["n_pools"] == 2
    assert np.isfinite(r["regret"]) and r["regret"] >= -1e-9
    assert np.isfinite(r["regret_sd"]) and r["fit_s"] >= 0 and r["recommend_s"] >= 0
  for s in evaluation.SPLITS:
    for m in ("linear", "loglinear"):
      row = by[(s, m)]
      assert -1 <= row["spearman"] <= 1
      assert 0 <= row["pred_coverage90"] <= 1 and 0 <= row["effect_coverage90"] <= 1
    assert by[(s, "uniform")]["spearman"] is None
    assert by[(s, "uniform")]["effect_coverage90"] is None
    assert abs(by[(s, "oracle")]["regret"]) < 1e-9
    assert by[(s, "my_uniform")]["regret"] == pytest.approx(by[(s, "uniform")]["regret"],
                                                            abs=1e-12)
    assert by[(s, "wide")]["pred_coverage90"] == 1.0
    assert by[(s, "wide")]["effect_coverage90"] == 1.0
    assert by[(s, "natural")]["regret"] > 0
    # argmin_regret: the best point prediction among the same candidates for every
    # method; exact predictions pick the truly best of them, a constant the first.
    best = by[(s, "truth")]["argmin_regret"]
    assert 0 <= best < by[(s, "wide")]["argmin_regret"]
    for m in ("linear", "loglinear"):
      assert by[(s, m)]["argmin_regret"] >= best - 1e-12
    assert by[(s, "uniform")]["argmin_regret"] is None
  again = evaluation.evaluate_world(world, methods, **SIZES)
  assert _strip(again) == _strip(rows)


def test_lightgbm_methods_on_fake_world(fast_candidates):
  del fast_candidates
  world = FakeWorld()
  methods = evaluation.default_methods(["lightgbm_epochs", "regmix"])
  rows = evaluation.evaluate_world(world, methods, **SIZES)
  assert len(rows) == 4
  for r in rows:
    assert r["status"] == "ok", r
    for k in ("spearman", "pred_coverage90", "effect_coverage90", "regret"):
      assert np.isfinite(r[k])


def test_lgbm_epochs_answers_for_the_pool():
  runs = FakeWorld().sweep(n_runs=60, n_pools=12)
  model = baselines.fit_lgbm_epochs(runs, "loss", n_boot=2, num_trees=50)
  assert model.boosters[0].num_feature() == 2 * len(runs.domains) + len(runs.features)
  w = runs.W[:5]
  base = model.point(w, runs.X[0])
  scarce = model.at_pool(runs.tokens[0] / 100.0, runs.budget[0])
  assert scarce.predict(w, runs.X[0]).mean.shape == (5,)
  assert not np.allclose(scarce.point(w, runs.X[0]), base)
  assert np.allclose(model.point(w, runs.X[0]), base)  # the original is unchanged
  frame = runs.to_frame()
  no_tokens = Runs(frame.drop(columns=[c for c in frame if c.startswith("tokens_")]))
  with pytest.raises(ValueError, match="epochs features need"):
    baselines.fit_lgbm_epochs(no_tokens, "loss")


def test_ours_uses_library_defaults(monkeypatch):
  """`ours` fits with fit_surface's defaults and recommends under the pool's tokens and
  budget with recommend's default objective and method."""
  calls = {}

  class FakeSurface:
    domains = ["code", "math", "web"]

    def predict(self, w, x, ci, *, tokens, budget):
      calls["predict"] = (np.asarray(x), np.asarray(tokens), budget)
      return Prediction(np.zeros(len(w)), np.zeros(len(w)), np.zeros(len(w)))

  def fake_fit(runs, outcome, *args, **kwargs):
    calls["fit"] = (outcome, args, kwargs)
    return FakeSurface()

  def fake_recommend(surface, **kwargs):
    calls["recommend"] = kwargs
    return type("Rec", (), {"weights": {"code": 0.2, "math": 0.3, "web": 0.5}})()

  monkeypatch.setattr(evaluation.fit_lib, "fit_surface", fake_fit)
  monkeypatch.setattr(evaluation, "optimise_recommend", fake_recommend)
  (ours,) = evaluation.default_methods(["ours"])
  model = ours.fit(None, "loss")
  assert calls["fit"] == ("loss", (), {})
  pool = FakePool(np.arange(3.0), np.array([1e9, 2e9, 3e9]), 5e8, np.zeros(0), "new")
  rec = ours.recommend(model, pool, None)
  assert rec.weights == {"code": 0.2, "math": 0.3, "web": 0.5}
  assert set(calls["recommend"]) == {"covariates", "constraints"}
  assert calls["recommend"]["constraints"] == {
      "tokens": {"code": 1e9, "math": 2e9, "web": 3e9}, "budget_tokens": 5e8}
  ours.predict(model, np.full((2, 3), 1 / 3), pool)
  assert calls["predict"][2] == 5e8


def test_econml_reported_skipped_when_absent(monkeypatch):
  monkeypatch.setitem(sys.modules, "econml", None)
  monkeypatch.setitem(sys.modules, "econml.dml", None)
  (method,) = evaluation.default_methods(["econml"])
  assert method.skipped == "econml not installed"
  rows = evaluation.evaluate_world(FakeWorld(), [method], **SIZES)
  assert [r["status"] for r in rows] == ["skipped: econml not installed"] * 2
  assert "econml" in evaluation.summarise(rows)


def test_ours_settings_reach_the_fit_and_bad_ones_are_named(monkeypatch):
  seen = {}
  monkeypatch.setattr(evaluation.fit_lib, "fit_surface",
                      lambda runs, outcome, config=None: seen.update(config=config))
  (ours,) = evaluation.default_methods(["ours"], {"covariate_extrapolation": "clip"})
  ours.fit(None, "loss")
  assert seen["config"].covariate_extrapolation == "clip"
  assert seen["config"].stack_discrepancy == "none"  # the rest stays the default
  (ours,) = evaluation.default_methods(["ours"], evaluation.parse_ours_settings(
      "stack_members=dml+scaling+transfer,max_x_components=8"))
  ours.fit(None, "loss")  # a tuple from "+"-joined items, other types converted
  assert seen["config"].stack_members == ("dml", "scaling", "transfer")
  assert seen["config"].max_x_components == 8
  with pytest.raises(ValueError, match="surface.stack_members: unknown member 'forest'"):
    evaluation.default_methods(["ours"], {"stack_members": "dml+forest"})
  with pytest.raises(ValueError, match="surface.stack_discrepancy: unknown 'gp'"):
    evaluation.default_methods(["ours"], {"stack_discrepancy": "gp"})
  with pytest.raises(ValueError, match="surface.nope is not a surface config key"):
    evaluation.default_methods(["ours"], {"nope": "1"})
  # The safe objective's settings go to recommend, not to the surface config; each
  # one alone (recommend's own defaults for the rest), a bad value named.
  pool = types.SimpleNamespace(tokens_D=None, budget=None, x_F=np.zeros(2))

  def recommend_kwargs(settings):
    asked = {}
    monkeypatch.setattr(evaluation, "optimise_recommend",
                        lambda surface, **kw: asked.update(kw))
    (ours,) = evaluation.default_methods(["ours"], settings)
    ours.recommend(types.SimpleNamespace(domains=["a", "b"]), pool, None)
    return asked

  assert set(recommend_kwargs(None)) == {"covariates", "constraints"}
  for key, value, bad in (("off_support", "anchors", "best"),
                          ("off_support", "shrink", "best"),
                          ("safe_score", "mean", "median"),
                          ("off_support_trigger", "always", "often"),
                          ("safe_baseline", "uniform", "natural")):
    asked = recommend_kwargs({key: value})
    assert asked[key] == value and set(asked) == {"covariates", "constraints", key}
    with pytest.raises(ValueError, match=f"{key}: unknown '{bad}'"):
      evaluation.default_methods(["ours"], {key: bad})


class _LinearSurface:
  """A surface stand-in with ours' predict / cate signatures: linear in w, intervals
  +-0.05, so its coverage is neither 0 nor 1 on the fake world."""

  c_D = np.array([0.3, -0.2, 0.1])

  def predict(self, w_NxD, x_F, ci, tokens=None, budget=None):
    del x_F, ci, tokens, budget
    m = 3.0 + np.asarray(w_NxD) @ self.c_D
    return Prediction(m, m - 0.05, m + 0.05)

  def cate(self, w_NxD, w_ref_D, x_F, ci, tokens=None, budget=None):
    del x_F, ci, tokens, budget
    m = (np.asarray(w_NxD) - np.asarray(w_ref_D)) @ self.c_D
    return Prediction(m, m - 0.05, m + 0.05)


def test_effect_reference_diagnosis_matches_the_harness():
  world, surface = FakeWorld(), _LinearSurface()
  method = evaluation.Method(
      "ours", lambda runs, outcome: surface, evaluation._ours_predict,
      evaluation._ours_effect, lambda m, pool, runs: np.full(3, 1.0 / 3.0))
  rows = evaluation.evaluate_world(world, [method], **SIZES)
  runs = world.sweep(n_runs=SIZES["n_runs"], n_pools=SIZES["n_pools"])
  diag = evaluation.effect_reference_diagnosis(
      world, surface, runs, n_test_pools=SIZES["n_test_pools"],
      n_mixtures=SIZES["n_mixtures"])
  assert set(diag) == set(evaluation.SPLITS)
  for row in rows:
    d = diag[row["split"]]
    assert d["effect_vs_natural"] == pytest.approx(row["effect_coverage90"], abs=1e-12)
    assert d["prediction"] == pytest.approx(row["pred_coverage90"], abs=1e-12)
    assert 0.0 <= d["effect_vs_median_mixture"] <= 1.0
    assert np.isfinite(d["effect_slope_median"])
    # The stand-in's effect intervals are +-0.05: sd 0.05 / z at the 90% level.
    assert d["effect_median_sd"] == pytest.approx(0.05 / 1.6448536, rel=1e-5)
    assert d["effect_median_abs_error"] > 0.0
    assert (d["effect_coverage_pool_min"] <= d["effect_vs_natural"]
            <= d["effect_coverage_pool_max"])
    bins = d["effect_coverage_by_size"]
    n_effects = SIZES["n_test_pools"] * SIZES["n_mixtures"]
    assert len(bins) == 4  # 80 effects: 4 bins of robust.MIN_BIN_CONTRASTS
    assert sum(b["effects"] for b in bins) == n_effects
    assert sum(b["coverage"] * b["effects"] for b in bins) / n_effects == \
        pytest.approx(d["effect_vs_natural"])
    assert all(b["size_lo"] <= b["size_hi"] for b in bins)
  covers = [diag[s][k] for s in evaluation.SPLITS
            for k in ("effect_vs_natural", "effect_vs_median_mixture")]
  assert any(0.0 < c < 1.0 for c in covers)  # the stand-in is neither exact nor vague


def test_diagnose_script_names_an_unknown_world_before_any_fit():
  root = pathlib.Path(__file__).resolve().parents[1]
  proc = subprocess.run(
      [sys.executable, str(root / "experiments/surface_zoo/diagnose.py"),
       f"--config={root / 'experiments/surface_zoo/config.py'}", "--world=threshold",
       "--world=nope"], capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode != 0
  assert "--world: unknown world 'nope'" in proc.stderr + proc.stdout
  assert "effects vs natural" not in proc.stdout  # nothing was fitted


def test_coverage_by_size_line_shows_the_held_out_factor_where_there_is_one():
  fmt = evaluation.format_coverage_by_size
  held_out = [{"size_lo": 0.01, "size_hi": 0.8, "contrasts": 30, "coverage": 0.8,
               "factor": 1.39},
              {"size_lo": 0.8, "size_hi": 2.0, "contrasts": 30, "coverage": 0.97,
               "factor": 0.77}]
  assert fmt(held_out) == ("0.01-0.80: 0.800 (factor 1.39), "
                           "0.80-2.00: 0.970 (factor 0.77)")
  # The test effects' bins carry no factor.
  test = [{k: v for k, v in b.items() if k != "factor"} for b in held_out]
  assert fmt(test) == "0.01-0.80: 0.800, 0.80-2.00: 0.970"


def _zoo_json(code: str) -> Any:
  """What `code` prints last, as JSON, run in a child process with the repository on
  sys.path and `json`, `sys` and the zoo's `config` imported (the zoo's scripts define
  absl flags when imported, so they are imported apart from the test process)."""
  root = pathlib.Path(__file__).resolve().parents[1]
  head = ("import json, sys; sys.path.insert(0, sys.argv[1]); "
          "from experiments.surface_zoo import config; ")
  proc = subprocess.run([sys.executable, "-c", head + code, str(root)],
                        capture_output=True, text=True, timeout=120, check=True)
  return json.loads(proc.stdout.strip().splitlines()[-1])


def test_zoo_cache_key_holds_anchors_and_domains_only_when_set():
  """Stored results of a random 5-domain sweep are not reused for an anchored one or
  one over other domains, and results stored before the options existed stay valid."""
  code = ("from experiments.surface_zoo import run; cfg = config.get_config(); "
          "plain = run._world_settings(cfg, 'threshold'); cfg.uniform_anchors = True; "
          "anchored = run._world_settings(cfg, 'threshold'); cfg.uniform_anchors = False; "
          "cfg.sweep_design = 'pipeline'; "
          "designed = run._world_settings(cfg, 'threshold'); cfg.sweep_design = 'shares'; "
          "cfg.n_domains = 8; "
          "print(json.dumps([plain, anchored, designed, "
          "run._world_settings(cfg, 'threshold')]))")
  plain, anchored, designed, wider = _zoo_json(code)
  assert "uniform_anchors" not in plain and "n_domains" not in plain
  assert "sweep_design" not in plain
  assert anchored == {**plain, "uniform_anchors": True}
  assert designed == {**plain, "sweep_design": "pipeline"}
  assert wider == {**plain, "n_domains": 8}


def test_evaluate_world_asks_for_uniform_anchors_only_when_set():
  calls = []

  class Recording(FakeWorld):
    def sweep(self, **kw):
      calls.append(kw)
      raise StopIteration  # the sweep's arguments are all this test needs

  for anchors in (False, True):
    with pytest.raises(StopIteration):
      evaluation.evaluate_world(Recording(), [], n_runs=8, n_pools=4, n_test_pools=1,
                                uniform_anchors=anchors)
  assert "uniform_anchors" not in calls[0]  # a world without the option still runs
  assert calls[1]["uniform_anchors"] is True
  with pytest.raises(StopIteration):
    evaluation.evaluate_world(Recording(), [], n_runs=8, n_pools=4, n_test_pools=1,
                              design="pipeline")
  assert "design" not in calls[0] and calls[2]["design"] == "pipeline"


def test_decisions_script_asks_for_the_configs_sweep_options():
  """decisions.py fits on the sweep the config describes: anchors and design reach
  `World.sweep`, and only when set."""
  plain, both = _zoo_json(
      "from experiments.surface_zoo import decisions; "
      "cfg = config.get_config(); plain = decisions.sweep_options(cfg); "
      "cfg.uniform_anchors = True; cfg.sweep_design = 'pipeline'; "
      "print(json.dumps([plain, decisions.sweep_options(cfg)]))")
  assert plain == {} and both == {"uniform_anchors": True, "design": "pipeline"}


def test_sweep_design_names_the_config_key():
  assert evaluation.sweep_design("pipeline", 384, 48) == "pipeline"
  assert evaluation.sweep_design("shares", 100, 48) == "shares"
  with pytest.raises(ValueError, match=r"--config\.sweep_design: unknown 'flat'"):
    evaluation.sweep_design("flat", 384, 48)
  with pytest.raises(ValueError, match=r"--config\.n_runs=100 is not a multiple of "
                     r"--config\.n_pools=48"):
    evaluation.sweep_design("pipeline", 100, 48)


def test_parse_ours_settings_names_a_bad_item():
  assert evaluation.parse_ours_settings(" a=1, b = x ,") == {"a": "1", "b": "x"}
  assert evaluation.parse_ours_settings("") == {}
  with pytest.raises(ValueError, match="'nope' is not key=value"):
    evaluation.parse_ours_settings("a=1,nope")


def test_surface_config_applies_and_checks_settings():
  cfg = evaluation.surface_config({"stack_members": "dml+transfer",
                                   "stack_discrepancy": "rff", "max_x_components": "64"})
  assert cfg.stack_members == ("dml", "transfer")
  assert cfg.stack_discrepancy == "rff" and cfg.max_x_components == 64
  with pytest.raises(ValueError, match="surface.nope is not a surface config key"):
    evaluation.surface_config({"nope": "1"})
  with pytest.raises(ValueError, match="stack_members"):
    evaluation.surface_config({"stack_members": "dml+nope"})
  assert evaluation.surface_config({"feature_kinds": "log+hinge"}).feature_kinds == (
      "log", "hinge")
  with pytest.raises(ValueError, match=r"surface.feature_kinds: unknown kind\(s\) "
                     r"\['hinges'\]"):
    evaluation.surface_config({"feature_kinds": "log+hinges"})


def test_unknown_method_named():
  with pytest.raises(ValueError, match="unknown method"):
    evaluation.default_methods(["ours", "nope"])


def test_summarise_tables_and_counts():
  rows = []
  for world, regrets in (("w1", (0.01, 0.02, 0.05)), ("w2", (0.04, 0.03, 0.05))):
    for split in evaluation.SPLITS:
      for method, regret in zip(("ours", "lightgbm", "uniform"), regrets):
        rows.append(evaluation._world_row(  # pylint: disable=protected-access
            world, split, method, regret=regret, regret_sd=0.0, n_pools=2,
            spearman=None if method == "uniform" else 0.8,
            effect_coverage90=None if method == "uniform" else 0.9,
            pred_coverage90=None if method == "uniform" else 0.5,
            safe_check_ran=(0.25 if split == "new" else 1.0) if method == "ours" else None,
            safe_check_replaced=(0.0 if split == "new" else 0.5) if method == "ours"
            else None))
  rows.append(evaluation._world_row(  # pylint: disable=protected-access
      "w1", "new", "econml", status="skipped: econml not installed"))
  rows.append(evaluation._real_row(  # pylint: disable=protected-access
      "regmix", "cv5", "ours", "pile_cc", spearman=0.91, r2=0.8))
  rows.append(evaluation._real_row(  # pylint: disable=protected-access
      "regmix", "cv5", "lightgbm", "pile_cc", status="error: ValueError: boom"))
  text = evaluation.summarise(rows)
  assert "## New pools" in text and "## Shifted pools" in text
  assert "| world | ours | lightgbm | uniform | econml |" in text
  assert "| w1 | 0.0100 | 0.0200 | 0.0500 | skip |" in text
  assert "| regmix | cv5 | 0.910 / 0.80 | err |" in text
  assert "ours at or below the best baseline's regret on 1 of 2 worlds (new pools)" in text
  assert "mean shifted-pool regret: ours 0.0250 vs lightgbm 0.0250" in text
  assert "ours pred 0/4, effect 4/4" in text
  # ours (0.01, 0.04) against uniform (0.05, 0.05): never worse, ratio to LightGBM 1.0.
  assert "ours worse than uniform on: no (world, split)" in text
  assert ("ours' safe check against uniform ran on 25% of new pools (replaced the pick on "
          "0%), 100% of shifted pools (replaced the pick on 50%)") in text
  h = evaluation.headline(rows)
  assert h["ours_worse_than_uniform"] == []
  assert h["regret_shifted_ratio_ours_over_lightgbm"] == pytest.approx(1.0)
  worse = [dict(r, regret=0.06) if r.get("world") == "w2" and r["method"] == "ours"
           and r["split"] == "shifted" else r for r in rows]
  assert evaluation.headline(worse)["ours_worse_than_uniform"] == ["w2/shifted"]
  head = evaluation.headline(rows)
  assert head["ours_le_best_baseline_shifted"] == "1/2"
  assert head["ours_effect_coverage90_in_band"] == "4/4"
  assert head["real_ours_spearman"] == {"regmix/cv5": 0.91}


def test_real_sweeps_missing_data_reported(tmp_path):
  missing = tmp_path / "nowhere"
  rows = evaluation.evaluate_real(missing, evaluation.default_methods(["linear"]))
  assert rows[0]["status"] == f"skipped: data not found at {missing}"
  assert "data not found" in evaluation.summarise(rows)


def test_fit_seconds_times_rounds_after_a_warm_up(monkeypatch):
  """One untimed warm-up fit of each model, then side-by-side rounds: the fastest, the
  median and their ratios."""
  calls = {"ours": 0, "lgbm": [], "configs": []}
  clock = iter([0.0, 0.5, 1.0, 1.3, 2.0, 2.4])  # ours takes 0.5, 0.3, 0.4 s

  def fake_fit(runs, outcome, config=None):
    calls["ours"] += 1
    calls["configs"].append(config)
    return types.SimpleNamespace(info={"member_seconds": {"dml": 0.1},
                                       "chosen": {"floor": 0.01}})

  lgbm_times = iter([None, 0.45, 0.35, 0.25])

  def fake_lgbm(runs, outcome, *, n_boot, use_covariates):
    calls["lgbm"].append(n_boot)
    t = next(lgbm_times)
    return types.SimpleNamespace(fit_time=t, fit_time_total=None if t is None else 10 * t)

  monkeypatch.setattr(evaluation.fit_lib, "fit_surface", fake_fit)
  monkeypatch.setattr(evaluation.baselines, "fit_regmix_lgbm", fake_lgbm)
  monkeypatch.setattr(evaluation, "time", types.SimpleNamespace(
      perf_counter=lambda: next(clock)))
  out = evaluation.fit_seconds(None, "loss", 3, config="candidate")
  assert calls["configs"] == ["candidate"] * 4  # the warm-up and every round
  assert calls["ours"] == 4 and calls["lgbm"] == [0] + [evaluation.LGBM_BOOT] * 3
  assert out["ours_fit_s"] == pytest.approx(0.3)
  assert out["ours_fit_median_s"] == pytest.approx(0.4)
  assert out["lightgbm_fit_s"] == 0.25 and out["lightgbm_fit_median_s"] == 0.35
  assert out["lightgbm_with_bootstrap_fit_s"] == 2.5
  assert out["fit_time_ratio_ours_over_lgbm"] == pytest.approx(0.3 / 0.25)
  assert out["fit_time_median_ratio_ours_over_lgbm"] == pytest.approx(0.4 / 0.35)
  assert out["repeats"] == 3 and out["ours_chosen"] == {"floor": 0.01}


@pytest.mark.skipif(not (DATA_DIR / "olmix").is_dir(),
                    reason=f"peer data not found at {DATA_DIR} (CI lays shared/ beside "
                    "the checkout)")
def test_olmix_adapter_builds_runs():
  runs = evaluation.olmix_runs(DATA_DIR / "olmix", "dclm")
  assert len(runs) == 127 and len(runs.domains) == 24 and runs.X.shape[1] == 0
  metrics = pd.read_csv(DATA_DIR / "olmix" / "dclm_metrics.csv")
  ratios = pd.read_csv(DATA_DIR / "olmix" / "dclm_ratios.csv")
  values = metrics.drop(columns=[c for c in metrics.columns
                                 if c in ("run", "name", "index") or c.startswith("Unnamed")])
  order = {r: i for i, r in enumerate(runs.run_ids)}
  idx = [order[str(r)] for r in metrics["run"]]
  np.testing.assert_allclose(runs.y("mean_bpb")[idx], values.to_numpy().mean(1))
  np.testing.assert_allclose(runs.W.sum(1), 1.0)
  assert runs.W[order[str(ratios["run"][0])], runs.domains.index("social_life")] == \
      pytest.approx(0.7)
  big = evaluation.olmix_runs(DATA_DIR / "olmix", "full_recomputation")
  assert len(big) == 512 and len(big.domains) == 64


@pytest.mark.skipif(not (DATA_DIR / "regmix").is_dir(),
                    reason=f"peer data not found at {DATA_DIR}")
def test_evaluate_real_with_a_fast_method():
  methods = evaluation.default_methods(["linear", "uniform", "lightgbm_epochs"])
  rows = evaluation.evaluate_real(DATA_DIR, methods)
  keys = [(r["dataset"], r["split"], r["method"]) for r in rows]
  assert ("regmix", "cv5", "linear") in keys
  assert ("regmix", "heldout_last20", "linear") in keys
  assert all(r["method"] != "uniform" for r in rows)
  for swarm in evaluation.OLMIX_SWARMS:
    for split in ("random_half", "extrapolate"):
      (row,) = [r for r in rows if r["dataset"] == f"olmix_{swarm}" and
                r["split"] == split and r["method"] == "linear"]
      assert row["status"] == "ok" and np.isfinite(row["spearman"])
      assert np.isfinite(row["r2"]) and row["n_train"] + row["n_test"] > 60
  epochs = [r for r in rows if r["method"] == "lightgbm_epochs"]
  assert epochs and all(r["status"].startswith("skipped: no token counts") for r in epochs)
  held = [r for r in rows if r["split"] == "heldout_last20"][0]
  assert held["n_test"] == 103 and held["n_train"] == 409


def test_on_a_zoo_world_when_present():
  worlds = pytest.importorskip("causalmix_jax.surface.worlds")
  world = worlds.make_world(next(iter(worlds.WORLDS)), seed=0)
  rows = evaluation.evaluate_world(
      world, evaluation.default_methods(["natural", "linear"]), n_runs=48, n_pools=8,
      n_test_pools=2, n_mixtures=30)
  assert len(rows) == 4 and all(r["status"] == "ok" for r in rows)
  # natural's regret is the world's own regret of each pool's token shares.
  pools = world.new_pools(2, seed=0)
  expected = np.mean([world.regret(p.tokens_D / p.tokens_D.sum(), p) for p in pools])
  (natural,) = [r for r in rows if r["split"] == "new" and r["method"] == "natural"]
  assert natural["regret"] == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_failures_are_recorded_not_raised():
  world = FakeWorld()

  def bad_fit(runs, outcome):
    raise RuntimeError("no luck")

  def nan_predict(model, w, pool):
    n = len(w)
    return Prediction(np.full(n, np.nan), np.zeros(n), np.ones(n))

  methods = [evaluation.Method("broken", bad_fit, None, None, None),
             evaluation.Method("nan", _no_fit, nan_predict, None,
                               lambda m, pool, runs: np.ones(3) / 3),
             _my_uniform()]
  rows = evaluation.evaluate_world(world, methods, **SIZES)
  status = {(r["split"], r["method"]): r["status"] for r in rows}
  assert status[("new", "broken")] == "error: RuntimeError: no luck"
  assert status[("shifted", "nan")].startswith("error: ValueError: 40 of 40 predictions")
  assert status[("new", "my_uniform")] == "ok"


def _replicate_rows(regrets_by_world, coverage, kept=None):
  rows = []
  for world, regrets in regrets_by_world.items():
    for split in evaluation.SPLITS:
      for method, regret in zip(("ours", "lightgbm", "uniform"), regrets):
        rows.append(evaluation._world_row(  # pylint: disable=protected-access
            world, split, method, regret=regret,
            effect_coverage90=coverage if method == "ours" else None,
            covariate_set=(kept or {}).get(world) if method == "ours" else None,
            argmin_regret=None if method == "uniform" else 0.5 * regret))
  return rows


def test_replicates_count_cells_over_seeds():
  by_seed = {0: _replicate_rows({"w1": (0.01, 0.02, 0.05), "w2": (0.06, 0.03, 0.05)}, 0.9,
                                {"w1": "all", "w2": "all"}),
             3: _replicate_rows({"w1": (0.03, 0.02, 0.04), "w2": (0.02, 0.04, 0.05)}, 0.82,
                                {"w1": "aware"})}
  by_seed[3].append(evaluation._world_row(  # pylint: disable=protected-access
      "w1", "new", "econml", status="skipped: econml not installed"))
  rep = evaluation.replicates(by_seed)
  assert rep["seeds"] == [0, 3] and rep["worlds"] == ["w1", "w2"]
  new = rep["new"]
  # Wins: w1/seed0 and w2/seed3; w2/seed0 is worse than uniform (0.06 > 0.05).
  assert new["ours_le_best_baseline"] == "2/4"
  assert new["ours_worse_than_uniform"] == "1/4"
  assert new["ours_worse_than_uniform_cells"] == ["w2/seed0"]
  assert new["regret_ours"] == pytest.approx(0.03)
  assert new["regret_lightgbm"] == pytest.approx(0.0275)
  assert new["regret_ratio_ours_over_lightgbm"] == pytest.approx(0.03 / 0.0275)
  # LightGBM's regret minus ours per cell (w1/0, w1/3, w2/0, w2/3), t interval by hand.
  diffs = np.array([0.01, -0.01, -0.03, 0.02])
  half = stats.t.ppf(0.95, 3) * diffs.std(ddof=1) / 2.0
  below = new["regret_below_lightgbm"]
  assert below["studies"] == 4 and below["verdict"] == "level"
  assert below["gain"] == pytest.approx(-0.0025)
  assert below["lo"] == pytest.approx(-0.0025 - half)
  assert below["hi"] == pytest.approx(-0.0025 + half)
  # 0.82 is outside [0.85, 0.95] on new pools and inside [0.80, 1.0] on shifted ones.
  assert new["effect_coverage_in_target"] == "2/4"
  assert new["effect_coverage_missed"] == ["w1/seed3 (0.820)", "w2/seed3 (0.820)"]
  assert rep["shifted"]["effect_coverage_in_target"] == "4/4"
  cell = rep["cells"]["w2/new"]
  assert cell["regret"]["ours"] == {"0": 0.06, "3": 0.02}
  assert cell["regret_mean"]["uniform"] == pytest.approx(0.05)
  assert cell["regret_mean"]["econml"] is None
  text = evaluation.summarise_replicates(by_seed)
  assert "Seeds: 0, 3." in text
  assert "| w2 | 0.0400 (0.060, 0.020) | 0.0350 (0.030, 0.040) |" in text
  assert "- ours worse than uniform on 1/4 cells: w2/seed0" in text
  assert (f"ratio 1.09; per cell, ours' regret below LightGBM's by -0.0025 "
          f"[{-0.0025 - half:+.4f}, {-0.0025 + half:+.4f}] (90% t interval over 4 "
          "cells: level)") in text
  # The best point prediction among the shared candidates, averaged like the regret.
  assert new["argmin_regret"] == {"ours": pytest.approx(0.015),
                                  "lightgbm": pytest.approx(0.01375)}
  assert (f"among the same {evaluation.ARGMIN_CANDIDATES} candidates per pool (the fit "
          "near the optimum, apart from the decision rule): ours 0.0150, lightgbm "
          "0.0138") in text
  # The covariate set each stacked fit kept, counted over cells that name one.
  assert new["ours_covariate_sets"] == {"all": 2, "aware": 1}
  assert "- the covariate set ours' stack kept, in cells: all 2, aware 1" in text
  with pytest.raises(ValueError, match="at least one seed"):
    evaluation.replicates({})


def test_gain_counts_pooled_in_headline_and_replicates():
  def with_gains(rows, false_claims):
    return [dict(r, gain_moved=3, gain_below=1, gain_above=0, gain_claims=2,
                 gain_false_claims=false_claims) if r["method"] == "ours" else r
            for r in rows]
  seed0 = with_gains(_replicate_rows({"w1": (0.01, 0.02, 0.05)}, 0.9), 0)
  seed1 = with_gains(_replicate_rows({"w1": (0.01, 0.02, 0.05),
                                      "w2": (0.01, 0.02, 0.05)}, 0.9), 1)
  seed1 = [dict(r, gain_false_claims=0) if r["world"] == "w2" else r for r in seed1]
  head = evaluation.headline(seed1)
  assert head["ours_gain_new"] == dict(moved=6, below=2, above=0, claims=4,
                                       false_claims=1)
  assert ("- ours' gain over uniform (shifted pools): the pick moved from uniform on 6 "
          "pools; the true gain over uniform fell below its 90% interval on 2 (33%)"
          in evaluation.summarise(seed1))
  rep = evaluation.replicates({0: seed0, 1: seed1})
  assert rep["new"]["ours_gain"] == dict(moved=9, below=3, above=0, claims=6,
                                         false_claims=1)
  assert rep["new"]["ours_gain_false_claim_cells"] == ["w1/seed1"]
  text = evaluation.summarise_replicates({0: seed0, 1: seed1})
  assert ("the interval claimed a gain (lower end > 0) on 6, and the pick was in truth "
          "worse than uniform on 1 of those (w1/seed1)") in text
  # Runs made before the counts existed have none: no line, no error.
  assert evaluation.replicates({0: _replicate_rows({"w1": (0.01, 0.02, 0.05)}, 0.9)}
                               )["new"]["ours_gain"] is None


def test_replicates_script_merges_runs_of_one_seed_and_names_duplicates(tmp_path):
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
  from experiments.surface_zoo import replicates  # pylint: disable=import-outside-toplevel
  def write(name, seed, rows):
    path = tmp_path / name
    path.write_text(json.dumps({"config": {"seed": seed}, "headline": {}, "rows": rows}))
    return str(path)
  a = write("a.json", 1, _replicate_rows({"w1": (0.01, 0.02, 0.05)}, 0.9))
  b = write("b.json", 1, _replicate_rows({"w2": (0.01, 0.02, 0.05)}, 0.9))
  c = write("c.json", 2, _replicate_rows({"w1": (0.01, 0.02, 0.05)}, 0.9))
  by_seed = replicates.load([a, b, c])
  assert sorted(by_seed) == [1, 2] and len(by_seed[1]) == 12 and len(by_seed[2]) == 6
  with pytest.raises(ValueError, match="w1/new/ours at seed 1 is in both .*a.json and "
                     ".*a.json"):
    replicates.load([a, a])
  variant = write("v.json", 1, [dict(r, regret=0.0) for r in _replicate_rows(
      {"w2": (0.01, 0.02, 0.05)}, 0.9) if r["method"] == "ours"])
  swapped = replicates.replace_ours(by_seed, replicates.load([variant]))
  ours = {(r["world"], r["split"]): r["regret"] for r in swapped[1] if r["method"] == "ours"}
  assert ours == {("w1", "new"): 0.01, ("w1", "shifted"): 0.01, ("w2", "new"): 0.0,
                  ("w2", "shifted"): 0.0}
  assert len(swapped[1]) == 12 and swapped[2] == by_seed[2]
  with pytest.raises(ValueError, match="ours at seed 2 for w2/new, w2/shifted, which "
                     "--results lacks"):
    replicates.replace_ours(by_seed, {2: replicates.load([variant])[1]})
  bad = tmp_path / "bad.json"
  bad.write_text("{}")
  with pytest.raises(ValueError, match="bad.json: not a surface-zoo results.json"):
    replicates.load([str(bad)])


def test_progress_names_a_stack_fits_weights():
  """A fit whose info carries stack weights has them in its progress line, and its
  rows name the covariate set it kept; a model without them has neither."""

  class _Stacked(_LinearSurface):
    info = {"weights": {"dml": 0.6, "scaling_blind": 0.4},
            "covariate_selection": {"setting": "select", "chosen": "blind"}}

  lines, rows = {}, {}
  for name, surface in (("stacked", _Stacked()), ("plain", _LinearSurface())):
    method = evaluation.Method(
        "ours", lambda runs, outcome, s=surface: s, evaluation._ours_predict,
        evaluation._ours_effect, lambda m, pool, runs: np.full(3, 1.0 / 3.0))
    said = []
    rows[name] = evaluation.evaluate_world(FakeWorld(), [method], progress=said.append,
                                           **SIZES)
    lines[name] = [m for m in said if "/ ours: fit" in m]
  assert [r["covariate_set"] for r in rows["stacked"]] == ["blind", "blind"]
  assert [r["covariate_set"] for r in rows["plain"]] == [None, None]
  assert lines["stacked"] and lines["stacked"][0].endswith(
      ", stack weights dml 0.60, scaling_blind 0.40")
  assert lines["plain"] and "stack weights" not in lines["plain"][0]


def _decisions_script(tmp_path, *flags_):
  root = pathlib.Path(__file__).resolve().parents[1]
  return subprocess.run(
      [sys.executable, str(root / "experiments/surface_zoo/decisions.py"),
       f"--config={root / 'experiments/surface_zoo/config.py'}:smoke",
       "--config.worlds=('mixing_law',)", "--config.n_test_pools=1",
       f"--workdir={tmp_path}", *flags_],
      capture_output=True, text=True, timeout=600, check=False)


def test_decisions_script_names_a_bad_rule_before_any_fit(tmp_path):
  proc = _decisions_script(tmp_path, "--rules=D:decision_average=sometimes")
  assert proc.returncode != 0
  assert "decision_average: unknown 'sometimes'" in proc.stderr + proc.stdout
  proc = _decisions_script(tmp_path, "--rules=D:lcb=1")
  assert proc.returncode != 0 and "'lcb=1' is not key=value" in proc.stderr + proc.stdout
  proc = _decisions_script(tmp_path, "--rules=D:companion=forest")
  assert proc.returncode != 0
  assert "companion 'forest' is not one of" in proc.stderr + proc.stdout
  proc = _decisions_script(tmp_path, "--rules=D:", "--config.n_domains=1")
  assert proc.returncode != 0
  assert "--config.n_domains: every world needs" in proc.stderr + proc.stdout
  proc = _decisions_script(tmp_path, "--rules=D:", "--config.sweep_design=flat")
  assert proc.returncode != 0
  assert "--config.sweep_design: unknown 'flat'" in proc.stderr + proc.stdout
  assert not (tmp_path / "worlds").exists()  # nothing was fitted


@pytest.mark.parametrize("bad", [1, 0, 2.5, True, "three"])
def test_domain_count_names_the_key(bad):
  with pytest.raises(ValueError, match=r"--config\.n_domains: .*got"):
    evaluation.domain_count(bad)


def test_domain_count_takes_whole_numbers_from_two():
  assert evaluation.domain_count(2) == 2 and evaluation.domain_count(8.0) == 8


def test_decisions_script_scores_each_rule_on_one_fit_swaps_companions_and_resumes(
    tmp_path):
  """One fit per world, every rule deciding on it (a rule may swap the companion), and
  a rerun loads the stored world instead of fitting again."""
  surface = "--config.ours_surface=companion=trees"
  rules = ("--rules=D:decision_average=none;N:companion=none,decision_average=companion;"
           "G:decision_average=companion;E:companion=trees_epochs,decision_average=companion")
  proc = _decisions_script(tmp_path, surface, rules)
  assert proc.returncode == 0, proc.stderr[-2000:]
  head = json.loads(proc.stdout.strip().splitlines()[-1])
  assert set(head) == {f"{s}/{n}" for s in ("new", "shifted") for n in "DNGE"}
  rows = json.loads((tmp_path / "results.json").read_text())["rows"]
  got = {(r["split"], r["rule"]): r for r in rows}
  assert set(got) == {(s, n) for s in ("new", "shifted") for n in "DNGE"}
  # One fit: every rule of a world reports the same fit seconds and uniform's regret.
  for split in ("new", "shifted"):
    assert len({got[split, n]["fit_s"] for n in "DNGE"}) == 1
    assert len({got[split, n]["uniform_regret"] for n in "DNGE"}) == 1
  # Without a companion the mean is never taken: the surface's own pick, as D's. The
  # rule after it has the fit's own companion back, whose mean moves the pick off the
  # surface's own on these pools.
  assert all(got[s, "N"]["regret"] == got[s, "D"]["regret"] for s in ("new", "shifted"))
  assert any(got[s, "G"]["regret"] != got[s, "D"]["regret"] for s in ("new", "shifted"))
  again = _decisions_script(tmp_path, surface, rules)
  assert again.returncode == 0 and "mixing_law:" not in again.stdout  # loaded, not refitted
  assert json.loads(again.stdout.strip().splitlines()[-1]) == head
