"""Tests for the companion model (surface.companion) and recommend's decision average."""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect

import numpy as np
import pytest

from causalmix_jax.configs import base
from causalmix_jax.optimise import companion
from causalmix_jax.optimise.recommend import SAFE_SETTINGS, recommend
from causalmix_jax.surface import fit, trees, worlds
from causalmix_jax.surface.surface import COMPANION_DIR, load_surface

pytestmark = pytest.mark.xdist_group("robust")

SMALL = dict(n_candidates=256, n_starts=4, n_steps=20)


@dataclasses.dataclass
class _Bowl:
  """A stand-in companion: its outcome is the squared distance to `target`."""
  target: np.ndarray
  maximize: bool = False

  def point(self, w, x=None):
    del x
    return np.sum((np.asarray(w) - self.target) ** 2, axis=1)


def test_companion_pick_ranks_by_the_models_point_prediction():
  target = np.array([0.6, 0.3, 0.1])
  prior = np.full(3, 1 / 3)
  w = companion.companion_pick(_Bowl(target), None, prior, seed=0)
  assert w.shape == (3,) and abs(w.sum() - 1) < 1e-12
  assert np.abs(w - target).sum() < 0.1  # near the bowl's bottom, not at the prior
  assert np.array_equal(w, companion.companion_pick(_Bowl(target), None, prior, seed=0))
  # A maximised outcome ranks the other way: the mixtures farthest from the target.
  far = companion.companion_pick(_Bowl(target, maximize=True), None, prior, seed=0)
  assert np.abs(far - target).sum() > 0.5
  np.testing.assert_allclose(companion.averaged(target, prior), (target + prior) / 2)
  with pytest.raises(ValueError, match="prior mixture"):
    companion.companion_pick(_Bowl(target), None, np.array([0.0, 0.0, 0.0]))


@functools.lru_cache(maxsize=None)
def _fitted(world_name: str = "synergy", companion_setting: str | None = "trees"):
  """(world, runs, a small dml surface fitted on its sweep), with surface.companion =
  `companion_setting` (None: the config's default)."""
  world = worlds.make_world(world_name, seed=0)
  runs = world.sweep(n_runs=128, n_pools=16, seed=0)
  cfg = fit.default_config()
  cfg.nuisance_models = ("ridge",)
  if companion_setting is not None:
    cfg.companion = companion_setting
  return world, runs, fit.fit_surface(runs, "loss", method="dml", config=cfg)


def _case(world, s, pool):
  tokens = pool.tokens_D[[world.domains.index(d) for d in s.domains]]
  cons = {"tokens": dict(zip(s.domains, tokens)), "budget_tokens": pool.budget}
  return dict(covariates=dict(zip(world.features, pool.x_F)), constraints=cons, **SMALL)


def test_recommend_averages_the_surfaces_pick_with_its_companions(tmp_path):
  world, _, s = _fitted()
  assert isinstance(s.companion, trees.TreeSurface)
  assert s.info["companion"]["method"] == "trees"
  kw = _case(world, s, world.new_pools(2, seed=3)[0])
  avg = recommend(s, decision_average="companion", **kw)
  plain = recommend(s, decision_average="none", **kw)
  d = avg.diagnostics["decision_average"]
  assert d["used"] and d["prior"] == "token shares" and d["setting"] == "companion"
  assert plain.diagnostics["decision_average"] == {
      "used": False, "reason": "decision_average = 'none'"}
  # The surface's own pick is the one "none" recommends; the recommendation is the
  # mean of it and the companion's pick, made feasible.
  assert d["surface_pick"] == plain.weights
  want = np.array([(d["surface_pick"][k] + d["companion_pick"][k]) / 2 for k in s.domains])
  got = np.array([avg.weights[k] for k in s.domains])
  assert np.abs(got - want).sum() <= d["moved_l1_by_projection"] + 1e-9
  assert d["companion_pick"] != d["surface_pick"]
  # The posterior scores and reports the averaged mixture, not the surface's pick.
  assert avg.predicted.mean != plain.predicted.mean
  # Saved and read back, the surface recommends the same; saved again without its
  # companion, the companion's files go.
  s.save(tmp_path / "s")
  assert (tmp_path / "s" / COMPANION_DIR / "surface.json").exists()
  back = load_surface(tmp_path / "s")
  assert isinstance(back.companion, trees.TreeSurface)
  assert recommend(back, decision_average="companion", **kw).weights == avg.weights
  back.companion = None
  back.save(tmp_path / "s")
  assert not (tmp_path / "s" / COMPANION_DIR).exists()
  assert load_surface(tmp_path / "s").companion is None
  assert recommend(load_surface(tmp_path / "s"), **kw).weights == plain.weights


def _fitted_epochs():
  return _fitted("repetition_harm", "trees_epochs")


def test_an_epochs_companion_answers_for_the_pool_it_is_given(tmp_path):
  world, runs, s = _fitted_epochs()
  c = s.companion
  assert isinstance(c, trees.TreeSurface) and c.reads_epochs and c.info["epochs"]
  np.testing.assert_allclose(c.epochs_pool[0], np.median(runs.tokens, axis=0))
  assert c.epochs_pool[1] == float(np.median(runs.budget))
  # The trees were fitted on the runs' epochs: at the sweep's own pools they give the
  # in-sample predictions the booster gives on the same design.
  design = np.concatenate([runs.W, runs.X, runs.epochs()], axis=1)
  row = c.point_rows(runs.W[:5], runs.X[:5], runs.epochs()[:5])
  np.testing.assert_allclose(row, c.booster.predict(design[:5]))
  # Scarcer tokens (more epochs at the same shares) move its predictions; no tokens
  # given is the sweep's median pool.
  w = runs.W[:64]
  x = runs.X[0]
  median = c.point(w, x)
  np.testing.assert_array_equal(median, c.point(w, x, tokens=c.epochs_pool[0],
                                                 budget=c.epochs_pool[1]))
  assert not np.array_equal(median, c.point(w, x, tokens=c.epochs_pool[0] / 50))
  with pytest.raises(ValueError, match="positive token counts"):
    c.point(w, x, tokens=np.zeros(len(s.domains)))
  # recommend queries it at the pool's tokens and budget.
  pool = world.new_pools(2, seed=3)[0]
  kw = _case(world, s, pool)
  avg = recommend(s, decision_average="companion", **kw)
  d = avg.diagnostics["decision_average"]
  assert d["used"] and d["companion_pool"] == "the pool's tokens and budget"
  tokens = np.array([kw["constraints"]["tokens"][k] for k in s.domains])
  at = companion.at_pool(c, tokens, pool.budget)
  x_F = np.array([kw["covariates"][f] for f in s.features])
  w_c = companion.companion_pick(at, x_F, tokens, seed=0)
  np.testing.assert_allclose([d["companion_pick"][k] for k in s.domains], w_c)
  # Without the pool's tokens and budget, the sweep's median pool.
  bare = recommend(s, decision_average="companion", covariates=kw["covariates"], **SMALL)
  d = bare.diagnostics["decision_average"]
  assert d["companion_pool"] == "the sweep's median pool" and d["prior"] == "reference"
  # Saved and read back, the same companion and the same recommendation.
  s.save(tmp_path / "s")
  back = load_surface(tmp_path / "s")
  assert back.companion.reads_epochs
  np.testing.assert_array_equal(back.companion.epochs_pool[0], c.epochs_pool[0])
  assert recommend(back, decision_average="companion", **kw).weights == avg.weights


def test_an_epochs_companion_without_token_counts_reads_no_epochs(caplog):
  _, runs, _ = _fitted_epochs()
  frame = runs.to_frame()
  bare = type(runs)(frame.drop(columns=[k for k in frame if k.startswith("tokens_")]),
                    source="bare.csv")
  with caplog.at_level("WARNING"):
    c = fit.fit_companion(bare, "loss", epochs=True)
  assert not c.reads_epochs and not c.info["epochs"]
  assert "bare.csv" in c.info["epochs_reason"] and "tokens_<domain>" in caplog.text
  # And read as plain trees, it is the "trees" companion.
  plain = fit.fit_companion(bare, "loss")
  np.testing.assert_array_equal(c.point(bare.W[:8], bare.X[0]),
                                plain.point(bare.W[:8], bare.X[0]))
  with pytest.raises(ValueError, match="go together"):
    trees.fit_trees(bare.W, bare.X, bare.y("loss"), n=1, blind=False, seed=0,
                    epochs_NxD=np.ones_like(bare.W), domains=bare.domains,
                    features=bare.features, outcome="loss", maximize=False)


def test_several_surfaces_are_not_averaged_and_bad_settings_are_named():
  world, _, s = _fitted()
  kw = _case(world, s, world.new_pools(2, seed=3)[1])
  two = recommend([s, s], outcome_weights=[0.5, 0.5], **kw)
  assert two.diagnostics["decision_average"] == {
      "used": False, "reason": "several surfaces (multi-objective)"}
  with pytest.raises(ValueError, match="decision_average: unknown 'trees'"):
    recommend(s, decision_average="trees", **kw)
  cfg = fit.default_config()
  cfg.companion = "forest"
  with pytest.raises(ValueError, match=r"surface.companion: unknown 'forest'"):
    fit.check_config("stack", cfg)


def test_the_default_is_the_guarded_mean_with_a_trees_companion():
  # Each decision setting's default is the first value SAFE_SETTINGS lists, in
  # recommend's signature and in the optimise config alike.
  params, oc = inspect.signature(recommend).parameters, base.get_config().optimise
  for key, known in SAFE_SETTINGS.items():
    assert params[key].default == known[0] == oc[key], key
  assert SAFE_SETTINGS["decision_average"][0] == "guarded"
  assert fit.default_config().companion == "trees"
  # The default fit carries the companion, and recommend's default averages with it.
  world, _, s = _fitted(companion_setting=None)
  assert isinstance(s.companion, trees.TreeSurface)
  kw = _case(world, s, world.new_pools(2, seed=3)[0])
  default, guarded = recommend(s, **kw), recommend(s, decision_average="guarded", **kw)
  assert default.weights == guarded.weights
  assert default.diagnostics["decision_average"]["setting"] == "guarded"


def _checked_case(s, **kw):
  """recommend's picks for one query: own ("none"), mean ("companion"), checked,
  guarded, held."""
  return [recommend(s, decision_average=a, **kw)
          for a in ("none", "companion", "checked", "guarded", "held")]


def test_checked_average_is_taken_only_where_it_passes_the_safe_tests():
  world, _, s = _fitted()

  class Echo:
    """A companion that ranks mixtures as the surface's own posterior mean does."""
    maximize = s.maximize

    def point(self, w, x=None):
      del x
      return s.predict(w, None, 0.9).mean

  echo = copy.copy(s)
  echo.companion = Echo()
  cases = [(s, SMALL), (echo, SMALL)]  # the sweep's reference pool: no check runs
  cases += [(s, _case(world, s, p)) for p in world.shifted_pools(2, seed=5)]
  used = []
  for surface, kw in cases:
    own, mean, checked, guarded, held = _checked_case(surface, **kw)
    d, check = (checked.diagnostics[k] for k in ("decision_average", "safe_check"))
    if d["used"]:  # it passed the tests the surface's own pick passed
      assert checked.weights == mean.weights and not check["mean_guard_replaced"]
    else:
      assert checked.weights == own.weights and d["surface_pick"] == own.weights
      assert d["reason"].startswith("checked: ")
      assert ("off-support check" in d["reason"]) == check["ran"]
    # "guarded" puts the mean guard's test alone: it takes the mean wherever
    # "checked" does, and where "checked" refused it for the guard, so does it.
    g = guarded.diagnostics["decision_average"]
    assert guarded.weights == (mean.weights if g["used"] else own.weights)
    if d["used"] or "mean guard" in d.get("reason", ""):
      assert g["used"] == d["used"]
    if not g["used"]:
      assert g["reason"].startswith("guarded: ") and "mean guard" in g["reason"]
    # "held" keeps the safe objective's fallback wherever it replaced the pick, and
    # decides as "guarded" wherever the pick stood.
    h, own_check = held.diagnostics["decision_average"], own.diagnostics["safe_check"]
    fell_back = own_check["replaced"] or own_check["mean_guard_replaced"]
    if fell_back:
      assert held.weights == own.weights and not h["used"]
      assert h["reason"].startswith("held: the safe objective's")
    else:
      assert held.weights == guarded.weights and h["used"] == g["used"]
    used.append((d["used"], g["used"], h["used"], fell_back))
  # The trees' pick, averaged in, is expected to lose to uniform at the reference pool;
  # a companion that agrees with the posterior is taken; off the support the check runs.
  assert [u[0] for u in used[:2]] == [False, True]
  # At the reference pool nothing replaced the pick; off the support the check did.
  assert [u[3] for u in used] == [False, False, True, True]
  # Off the support, a mean the posterior expects to beat the guard's reference can
  # still fail the check's bound: "guarded" takes it, "checked" keeps the pick.
  kw = _case(world, s, world.shifted_pools(4, seed=5)[3])
  c, g, h = (recommend(echo, decision_average=a, **kw)
             for a in ("checked", "guarded", "held"))
  assert c.diagnostics["decision_average"]["reason"].startswith(
      "checked: the off-support check ran")
  assert g.diagnostics["decision_average"]["used"] and g.weights != c.weights
  # There the check had replaced the surface's own pick: "held" keeps its fallback.
  assert h.diagnostics["safe_check"]["replaced"] and h.weights == c.weights
  assert h.diagnostics["decision_average"]["reason"] == (
      "held: the safe objective's off-support check replaced the surface's pick, so "
      "its fallback stands")
  # Without the safe objective there is nothing to check: the mean is taken.
  kw = _case(world, s, world.new_pools(2, seed=3)[0])
  a = recommend(s, objective="mean", decision_average="checked", **kw)
  b = recommend(s, objective="mean", decision_average="companion", **kw)
  assert a.weights == b.weights and a.diagnostics["decision_average"]["used"]
