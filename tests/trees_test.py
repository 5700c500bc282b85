"""Tests of the gradient-boosted-trees stack member (`surface/trees.py`): its draws, its
zero derivative through the jitted sampler, saving, the covariate sets, and that
held-out stacking weighs it where the outcome has a step the smooth families miss."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from causalmix_jax.optimise.recommend import recommend
from causalmix_jax.runs import Runs
from causalmix_jax.surface import fit, robust, trees
from causalmix_jax.surface.surface import load_surface

pytestmark = pytest.mark.xdist_group("trees")

STEP = 0.3  # the loss drops by this much once domain d0's share passes 0.3


def _cfg(**kw):
  c = fit.default_config()
  c.nuisance_models = ("ridge",)
  c.stack_covariates = "aware"
  for k, v in kw.items():
    setattr(c, k, v)
  return c


def _step_runs(n_pools: int = 16, per_pool: int = 8, seed: int = 0) -> Runs:
  """Runs whose loss steps down where d0's share passes 0.3, shifted by a pool-level
  covariate: a kink no smooth family of the stack represents."""
  rng = np.random.default_rng(seed)
  rows = []
  for p in range(n_pools):
    q = rng.uniform(0.0, 1.0)
    for i in range(per_pool):
      w = rng.dirichlet(np.ones(4))
      y = 2.0 + 0.2 * q - STEP * float(w[0] > 0.3) + 0.01 * rng.standard_normal()
      rows.append({"run_id": f"p{p}r{i}", "seed": 0, **{f"w_d{j}": w[j] for j in range(4)},
                   "x_q": q, "y_loss": y})
  return Runs(pd.DataFrame(rows), source="step")


@functools.lru_cache(maxsize=None)
def _step_stack():
  return fit.fit_surface(_step_runs(), "loss",
                         config=_cfg(stack_members=("dml", "scaling", "trees")))


def _mixtures(d0_N) -> np.ndarray:
  d0 = np.asarray(d0_N, np.float64)
  return np.stack([d0] + [(1 - d0) / 3] * 3, axis=1)


def test_stacking_weighs_the_trees_where_the_loss_steps():
  s = _step_stack()
  info = s.info
  assert info["members"] == ["dml", "scaling", "trees"]
  held = info["heldout"]
  # The trees predict held-out pools' contrasts across the step far better ...
  assert held["trees"]["contrast_mse"] < 0.5 * min(held["dml"]["contrast_mse"],
                                                   held["scaling"]["contrast_mse"])
  # ... so the held-out weights give them most of the stack.
  assert info["weights"]["trees"] > 0.5
  p = s.predict(_mixtures([0.1, 0.2, 0.45, 0.6]), {"q": 0.5}).mean
  drop = p[:2].mean() - p[2:].mean()
  assert abs(drop - STEP) < 0.1, p


def test_tree_draws_are_the_point_and_the_sampler_has_zero_slope():
  s = _step_stack()
  member = next(m for m in s.members if isinstance(m, trees.TreeSurface))
  w = _mixtures([0.1, 0.5])
  d = member.draws(w, {"q": 0.4})
  assert d.shape == (member.n_draws, 2)
  np.testing.assert_allclose(d, np.broadcast_to(d[:1], d.shape))
  np.testing.assert_allclose(d[0], member.point(w, {"q": 0.4}))
  fn, params = member.sampler()
  x = jnp.asarray([0.4], jnp.float32)
  out = jax.jit(fn)(params, jnp.asarray(w, jnp.float32), x)
  np.testing.assert_allclose(np.asarray(out), d, rtol=1e-5)
  g = jax.grad(lambda v: fn(params, v, x).sum())(jnp.asarray(w, jnp.float32))
  assert np.all(np.asarray(g) == 0.0)
  # The stack's gradient is its smooth members' alone, and finite.
  sfn, sparams = s.sampler()
  gs = jax.grad(lambda v: sfn(sparams, v, x).mean())(jnp.asarray(w, jnp.float32))
  assert np.all(np.isfinite(np.asarray(gs)))


def test_recommend_with_trees_in_the_stack_crosses_the_step():
  s = _step_stack()
  rec = recommend(s, covariates={"q": 0.5}, seed=0)
  w = np.array([rec.weights[d] for d in s.domains])
  np.testing.assert_allclose(w.sum(), 1.0, atol=1e-6)
  assert np.all(w >= -1e-9)
  # The loss is lower on the far side of the step, and the pick is there.
  assert w[0] > 0.3, rec.weights
  # Its true gain over uniform (whose d0 share, 0.25, is on the near side) is the step.
  # The trees, which fit the step, make the reported interval tight (without them, dml
  # + scaling report [0.13, 0.53] on these runs); here it sits just above the step,
  # [0.307, 0.359].
  gain = rec.improvement_over_uniform
  assert abs(gain.mean - STEP) < 0.05 and gain.hi - gain.lo < 0.15, gain


def test_stack_with_trees_saves_and_loads(tmp_path):
  s = _step_stack()
  s.save(tmp_path / "surface")
  back = load_surface(tmp_path / "surface")
  w = _mixtures([0.05, 0.25, 0.35, 0.8])
  for x in ({"q": 0.1}, {"q": 0.9}):
    a, b = s.predict(w, x), back.predict(w, x)
    np.testing.assert_allclose(a.mean, b.mean, rtol=1e-6)
    np.testing.assert_allclose(a.lo, b.lo, rtol=1e-6)
  (model,) = (tmp_path / "surface").glob(f"member_*/{trees.MODEL_FILE}")
  model.unlink()
  with pytest.raises(FileNotFoundError, match="tree surface model not found"):
    load_surface(tmp_path / "surface")


def test_blind_trees_ignore_the_covariates():
  runs = _step_runs(seed=1)
  data = robust._data(runs, "loss", 10)
  kw = dict(domains=runs.domains, features=runs.features, outcome="loss",
            maximize=False, support_stats={"mean": [0.5]})
  w = _mixtures([0.1, 0.5])
  blind = trees.fit_trees(data.w, data.x, data.y, n=4, blind=True, seed=0, **kw)
  aware = trees.fit_trees(data.w, data.x, data.y, n=4, blind=False, seed=0, **kw)
  np.testing.assert_allclose(blind.point(w, {"q": 0.05}), blind.point(w, {"q": 0.95}))
  # The aware trees follow the covariate's level shift (0.2 per unit of q).
  shift = aware.point(w, {"q": 0.95}) - aware.point(w, {"q": 0.05})
  assert np.all(shift > 0.08), shift
  assert blind.info["covariates"] == "none" and aware.info["covariates"] == "all"


def test_unknown_member_is_still_named():
  with pytest.raises(ValueError, match="surface.stack_members.*forest"):
    fit.fit_surface(_step_runs(), "loss", config=_cfg(stack_members=("trees", "forest")))


def test_covariate_selection_fits_the_trees_blind_copy_too():
  s = fit.fit_surface(_step_runs(seed=2), "loss",
                      config=_cfg(stack_members=("dml", "trees"),
                                  stack_covariates="select"))
  assert set(s.info["member_seconds"]) == {"dml", "dml_blind", "trees", "trees_blind"}
  kept = s.info["covariate_selection"]["chosen"]
  suffix = "" if kept == "aware" else "_blind"
  assert s.info["members"] == ["dml" + suffix, "trees" + suffix]
