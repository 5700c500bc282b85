"""Tests for the world zoo: valid, deterministic and confounded sweeps, an exact oracle,
shifted pools outside the sweep's range, the hidden feature, heavy-tailed noise."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from causalmix_jax.configs import sweep as sweep_config
from causalmix_jax.runs import Runs
from causalmix_jax.surface import worlds

# Its module-level fixtures and caches are built once: one xdist worker runs it all.
pytestmark = pytest.mark.xdist_group("worlds")

NAMES = sorted(worlds.WORLDS)


@pytest.fixture(scope="module", params=NAMES)
def world(request):
  return worlds.make_world(request.param, seed=0)


def _sweep_pool_outcomes(world, n_pools=48):
  runs = world.sweep(n_pools=n_pools)
  state = runs.to_frame()["pool_state"].to_numpy()
  pools = world.sweep_pools(n_pools)
  return runs, state, pools


def _with_tokens(pool, tokens_D, kind="new"):
  """The pool with other unique-token counts (and the covariates that follow them)."""
  return worlds.Pool(x_F=np.concatenate([np.log(tokens_D / 1e9), pool.x_F[5:]]),
                     tokens_D=tokens_D, budget=pool.budget, latent=pool.latent, kind=kind)


def test_registry_and_interface():
  assert len(worlds.WORLDS) >= 10
  assert {"mixing_law", "data_constrained", "quality_transfer", "synergy", "threshold",
          "heavy_tail", "hidden"} <= set(worlds.WORLDS)
  for name, cls in worlds.WORLDS.items():
    w = worlds.make_world(name, seed=3)
    assert isinstance(w, cls) and w.name == name and w.seed == 3
    assert w.mechanism and len(w.domains) == 5 and len(w.features) == 10
    assert w.domains == ["web", "code", "math", "books", "chat"]


def test_make_world_unknown_name_lists_known():
  with pytest.raises(ValueError) as err:
    worlds.make_world("no_such_world")
  assert "no_such_world" in str(err.value)
  for name in NAMES:
    assert name in str(err.value)


def test_sweep_is_valid_deterministic_and_confounded(world):
  runs = world.sweep(n_runs=384, n_pools=48, seeds=2, seed=0)
  assert isinstance(runs, Runs) and len(runs) == 768
  frame = runs.to_frame()
  expected = ({"run_id", "seed", "pool_state", "budget_tokens", "y_loss"}
              | {f"w_{d}" for d in world.domains} | {f"x_{f}" for f in world.features}
              | {f"tokens_{d}" for d in world.domains})
  assert set(frame.columns) == expected
  assert sorted(runs.domains) == sorted(world.domains)
  np.testing.assert_allclose(runs.W.sum(1), 1.0, atol=1e-9)
  assert set(frame["pool_state"]) == set(range(48)) and set(runs.seeds) == {0, 1}
  # Replicates share mixtures and pools, and differ only by noise.
  np.testing.assert_array_equal(runs.W[:384], runs.W[384:])
  np.testing.assert_array_equal(runs.X[:384], runs.X[384:])
  assert np.std(runs.y("loss")[:384] - runs.y("loss")[384:]) > 0
  # Repetition happens at high weights in small pools.
  assert runs.epochs().max() > 1.0
  # Deterministic given (world seed, sweep seed); another seed differs.
  again = worlds.make_world(world.name, seed=world.seed).sweep(n_runs=384, n_pools=48, seeds=2)
  assert again.to_frame().equals(frame)
  other = world.sweep(n_runs=384, n_pools=48, seeds=2, seed=1)
  assert not np.allclose(other.W, runs.W)
  # Confounded: a domain's weight rises with its pool's tokens.
  corr = [np.corrcoef(runs.W[:, j], runs.X[:, runs.features.index(f"log_tokens_{d}")])[0, 1]
          for j, d in enumerate(runs.domains)]
  assert np.mean(corr) > 0.1 and np.min(corr) > 0.0, corr


def test_pools_and_covariates(world):
  pool = world.new_pools(1)[0]
  assert pool.kind == "new" and pool.x_F.shape == (10,) and pool.tokens_D.shape == (5,)
  np.testing.assert_allclose(pool.x_F[:5], np.log(pool.tokens_D / 1e9))
  if world.name == "measured_quality":  # the covariates report quality with error
    np.testing.assert_allclose(pool.x_F[5:], np.clip(pool.latent[:5] + pool.latent[5:],
                                                     0.0, 1.0))
  else:
    np.testing.assert_allclose(pool.x_F[5:], pool.latent[:5])
  assert world.features[:5] == [f"log_tokens_{d}" for d in world.domains]
  assert world.features[5:] == [f"quality_{d}" for d in world.domains]
  a, b = world.new_pools(3, seed=4), world.new_pools(3, seed=4)
  for p, q in zip(a, b):
    np.testing.assert_array_equal(p.latent, q.latent)
    np.testing.assert_array_equal(p.tokens_D, q.tokens_D)
  assert not np.allclose(world.new_pools(3, seed=5)[0].x_F, a[0].x_F)


def test_outcome_spread_well_above_noise(world):
  runs, state, pools = _sweep_pool_outcomes(world)
  spreads = [np.std(world.outcome(runs.W[state == p], pool))
             for p, pool in enumerate(pools)]
  assert 5 * world.noise_sd < np.median(spreads) < 0.5, spreads
  # x moves y directly: the same mixture scores differently across pools.
  uniform = np.full(5, 0.2)
  assert np.ptp([world.outcome(uniform, p)[0] for p in pools]) > 0.02


def test_best_mixture_is_optimal_and_moves_with_pool(world):
  pools = world.new_pools(6, seed=1)
  best = np.asarray([world.best_mixture(p) for p in pools])
  assert np.all(best >= 0) and np.allclose(best.sum(1), 1.0, atol=1e-9)
  rng = np.random.default_rng(0)
  for pool in pools[:2] + world.shifted_pools(4, seed=1)[:2]:
    w_best = world.best_mixture(pool)
    cands = np.concatenate([rng.dirichlet(np.ones(5), 1000),
                            rng.dirichlet(np.full(5, 0.3), 1000), np.full((1, 5), 0.2)])
    assert np.all(world.regret(cands, pool) >= -1e-6)
    assert world.regret(w_best, pool) == pytest.approx(0.0, abs=1e-12)
    assert isinstance(world.regret(np.full(5, 0.2), pool), float)
    # Local polish around the optimum finds nothing better.
    near = np.clip(w_best + 0.01 * rng.standard_normal((500, 5)), 0.0, None)
    near /= near.sum(1, keepdims=True)
    assert np.all(world.regret(near, pool) >= -1e-6)
  l1 = np.abs(best[:, None, :] - best[None, :, :]).sum(-1)
  assert l1.max() > 0.1, l1


def test_shifted_pools_leave_the_sweep_range(world):
  runs = world.sweep()
  lt = [runs.features.index(f"log_tokens_{d}") for d in world.domains]
  qi = [runs.features.index(f"quality_{d}") for d in world.domains]
  lo, hi = runs.X.min(0), runs.X.max(0)
  sweep_total = runs.tokens.sum(1).max()
  pools = world.shifted_pools(12, seed=2)
  assert [p.kind for p in pools[:4]] == ["larger", "scarce", "rich", "quality"]
  for p in pools:
    log_tokens, quality = p.x_F[:5], p.x_F[5:]
    if p.kind == "larger":
      assert p.tokens_D.sum() > 3 * sweep_total
      assert np.mean(log_tokens > hi[lt]) >= 0.6
    elif p.kind == "scarce":
      assert np.sum(log_tokens < lo[lt]) >= 1
      assert p.budget / p.tokens_D.min() > 5  # forces repetition at modest weights
    elif p.kind == "rich":
      assert np.sum(log_tokens > hi[lt]) >= 1
    elif world.name == "measured_quality":
      # The true quality leaves the sweep's range; its noisy report need not.
      assert 1 <= np.isin(world.quality(p), [0.05, 0.95]).sum() <= 2
    else:
      shifted = np.isin(quality, [0.05, 0.95])
      assert 1 <= shifted.sum() <= 2
      assert np.all(((quality < lo[qi]) | (quality > hi[qi]))[shifted])


def test_hidden_feature_is_latent_only_and_moves_the_oracle():
  world = worlds.make_world("hidden", seed=0)
  assert not any("hidden" in f or "shift" in f for f in world.features)
  pool = world.new_pools(1)[0]
  assert pool.latent.shape == (6,) and pool.x_F.shape == (10,)
  low, high = world.with_shift(pool, -2.0), world.with_shift(pool, 2.0)
  np.testing.assert_array_equal(low.x_F, high.x_F)
  w_low, w_high = world.best_mixture(low), world.best_mixture(high)
  assert np.abs(w_low - w_high).sum() > 0.3
  assert w_high[world.domains.index("code")] > w_low[world.domains.index("code")]
  # h is unrelated to the covariates across sweep pools.
  pools = world.sweep_pools(200)
  h = np.asarray([world.hidden_shift(p) for p in pools])
  x = np.asarray([p.x_F for p in pools])
  assert np.abs([np.corrcoef(h, x[:, k])[0, 1] for k in range(10)]).max() < 0.3


def test_data_constrained_value_depends_on_repetition():
  world = worlds.make_world("data_constrained", seed=0)
  pool = world.shifted_pools(2)[1]
  assert pool.kind == "scarce"
  d = int(np.argmin(pool.tokens_D / world.typical_tokens_D))
  tokens = pool.tokens_D.copy()
  tokens[d] = world.typical_tokens_D[d]
  restored = _with_tokens(pool, tokens)
  assert world.best_mixture(pool)[d] < world.best_mixture(restored)[d] - 0.02


def test_heavy_tail_noise_is_heavy_and_heteroscedastic():
  world = worlds.make_world("heavy_tail", seed=0)
  pools = world.new_pools(40)
  small = min(pools, key=lambda p: p.x_F[0])
  large = max(pools, key=lambda p: p.x_F[0])
  rng = np.random.default_rng(0)
  n = 20000
  uniform = np.full((n, 5), 0.2)
  e = world.noise(uniform, small, rng)
  assert stats.kurtosis(e) > 2.0                      # Gaussian: 0
  # Unit-variance t: the median |draw| is the t quartile / sqrt(df / (df - 2)).
  median_abs = stats.t.ppf(0.75, 3) / np.sqrt(3.0)
  scale = world.noise_scale(uniform[:1], small)[0]
  assert np.median(np.abs(e)) == pytest.approx(median_abs * scale, rel=0.05)
  # Scale grows with the covariate (log_tokens of the first domain) ...
  e_large = world.noise(uniform, large, rng)
  ratio = np.median(np.abs(e_large)) / np.median(np.abs(e))
  expected = np.exp(world.noise_per_log_tokens * (large.x_F[0] - small.x_F[0]))
  assert ratio == pytest.approx(expected, rel=0.1) and ratio > 1.3
  # ... and with extreme mixtures.
  extreme = np.tile([0.96, 0.01, 0.01, 0.01, 0.01], (n, 1))
  e_extreme = world.noise(extreme, small, rng)
  assert np.median(np.abs(e_extreme)) > 2.0 * np.median(np.abs(e))
  # The default noise of the other worlds is Gaussian with noise_sd.
  g = worlds.make_world("synergy").noise(uniform, small, rng)
  assert abs(stats.kurtosis(g)) < 0.2 and np.std(g) == pytest.approx(0.01, rel=0.05)


def test_held_out_worlds_are_registered_apart():
  first, second = set(worlds.HELD_OUT_WORLDS), set(worlds.SECOND_HELD_OUT_WORLDS)
  assert first <= set(worlds.WORLDS) and second <= set(worlds.WORLDS)
  assert len(first) == len(second) == 3 and not first & second
  assert len(set(worlds.WORLDS) - first - second) == 7


def test_balanced_tasks_scores_the_worst_task():
  world = worlds.make_world("balanced_tasks", seed=0)
  pool = world.new_pools(1)[0]
  rng = np.random.default_rng(0)
  w_NxD = np.concatenate([rng.dirichlet(np.ones(5), 200), [world.best_mixture(pool)]])
  tasks_NxK = world.task_losses(w_NxD, pool)
  score_N = world.outcome(w_NxD, pool) - world.pool_offset(pool) - world.irreducible
  # A soft maximum: between the worst task less tau log K and the worst task.
  tau_log_k = world.temperature * np.log(world.n_tasks)
  assert np.all(score_N <= tasks_NxK.max(1) + 1e-12)
  assert np.all(score_N >= tasks_NxK.max(1) - tau_log_k - 1e-12)
  # At the optimum the two worst tasks are level to within a few temperatures, while
  # random mixtures leave one task well behind.
  top2 = np.sort(tasks_NxK, axis=1)[:, -2:]
  assert top2[-1, 1] - top2[-1, 0] < 3 * world.temperature
  assert np.median(top2[:-1, 1] - top2[:-1, 0]) > top2[-1, 1] - top2[-1, 0]
  # Useful tokens follow the tokens seen on a first pass and stop at the unique tokens.
  small = np.full((1, 5), 1e-4)
  np.testing.assert_allclose(world.useful_tokens(small, pool)[0], 1e-4 * pool.budget,
                             rtol=1e-3)
  assert np.all(world.useful_tokens(np.eye(5), pool) < pool.tokens_D)


def test_measured_quality_decides_on_the_true_quality_not_the_report():
  world = worlds.make_world("measured_quality", seed=0)
  pools = world.sweep_pools(400)
  q_PxD = np.asarray([world.quality(p) for p in pools])
  x_PxD = np.asarray([p.x_F[5:] for p in pools])
  error = x_PxD - q_PxD
  assert 0.07 < np.std(error) < 0.11 and x_PxD.min() >= 0.0 and x_PxD.max() <= 1.0
  assert 0.7 < np.corrcoef(q_PxD.ravel(), x_PxD.ravel())[0, 1] < 0.95
  # The same report with another true quality moves the optimum; the same true quality
  # with another report does not move the loss.
  pool = world.new_pools(1)[0]
  d = int(np.argmax(world.best_mixture(pool)))
  latent = pool.latent.copy()
  latent[d] = 0.05
  worse = worlds.Pool(x_F=pool.x_F, tokens_D=pool.tokens_D, budget=pool.budget,
                      latent=latent, kind="new")
  assert world.best_mixture(worse)[d] < world.best_mixture(pool)[d] - 0.05
  reported = worlds.Pool(x_F=np.concatenate([pool.x_F[:5], np.full(5, 0.5)]),
                         tokens_D=pool.tokens_D, budget=pool.budget, latent=pool.latent,
                         kind="new")
  w = np.full((1, 5), 0.2)
  assert world.outcome(w, reported)[0] == world.outcome(w, pool)[0]


def test_random_network_centre_and_optimum_move_with_the_pool():
  world = worlds.make_world("random_network", seed=0)
  pools = world.new_pools(4, seed=2)
  centres = np.asarray([world.centre(p) for p in pools])
  np.testing.assert_allclose(centres.sum(1), 1.0)
  assert np.abs(centres[:, None] - centres[None]).sum(-1).max() > 0.1
  assert world.pool_state(pools[0]).shape == (11,)
  # The network bends the bowl: the optimum is not the centre, yet stays near it.
  for pool in pools:
    gap = np.abs(world.best_mixture(pool) - world.centre(pool)).sum()
    assert 0.0 < gap < 1.0
  # Another world seed is another function.
  other = worlds.make_world("random_network", seed=1)
  w = np.full((1, 5), 0.2)
  assert other.outcome(w, pools[0])[0] != world.outcome(w, pools[0])[0]


def test_repetition_harm_caps_a_small_domain():
  world = worlds.make_world("repetition_harm", seed=0)
  pool = world.new_pools(1)[0]
  d = int(np.argmax(world.best_mixture(pool)))
  scarce_D = pool.tokens_D.copy()
  scarce_D[d] /= 20.0
  scarce = _with_tokens(pool, scarce_D)
  w_best = world.best_mixture(scarce)
  assert w_best[d] < world.best_mixture(pool)[d] - 0.05
  # Past the tolerance the loss rises with more of the domain; below it, it falls.
  tolerance_w = world.tolerance_D[d] * scarce.tokens_D[d] / scarce.budget
  def with_weight(x):
    w = np.full(5, (1.0 - x) / 4)
    w[d] = x
    return world.outcome(w, scarce)[0]
  assert with_weight(2.5 * tolerance_w) > with_weight(1.5 * tolerance_w)
  assert with_weight(0.5 * tolerance_w) < with_weight(0.05 * tolerance_w)
  np.testing.assert_allclose(world.epochs(np.eye(5)[d:d + 1], scarce)[0, d],
                             scarce.budget / scarce.tokens_D[d])


def test_natural_target_follows_the_pools_shares():
  world = worlds.make_world("natural_target", seed=0)
  pool = world.new_pools(1)[0]
  np.testing.assert_allclose(world.target(pool).sum(), 1.0)
  d = int(np.argmin(world.target(pool)))
  rich_D = pool.tokens_D.copy()
  rich_D[d] *= 30.0
  rich = _with_tokens(pool, rich_D)
  assert world.target(rich)[d] > world.target(pool)[d] + 0.2
  assert world.best_mixture(rich)[d] > world.best_mixture(pool)[d] + 0.1


def test_relative_quality_depends_on_the_other_domains():
  world = worlds.make_world("relative_quality", seed=0)
  pool = world.new_pools(1)[0]
  q_D = world.quality(pool)
  d = int(np.argmax(q_D))
  others_up = q_D.copy()
  others_up[np.arange(5) != d] = q_D[d]
  # Domain d's own quality is unchanged; its relevance falls as the others catch up.
  lifted = worlds.Pool(x_F=np.concatenate([pool.x_F[:5], others_up]),
                       tokens_D=pool.tokens_D, budget=pool.budget,
                       latent=np.concatenate([others_up, pool.latent[5:]]), kind="new")
  assert world.relevance(lifted)[d] < world.relevance(pool)[d] - 0.05
  assert world.best_mixture(lifted)[d] < world.best_mixture(pool)[d]
  # The pool's size moves the relevance too (toward the domains with g_d > 0).
  larger = _with_tokens(pool, pool.tokens_D * 8.0)
  gainer = int(np.argmax(world.size_gain_D))
  assert world.relevance(larger)[gainer] > world.relevance(pool)[gainer]


def test_pool_validation():
  with pytest.raises(ValueError):
    worlds.Pool(x_F=np.zeros(2), tokens_D=np.ones(2), budget=1.0, latent=np.zeros(2),
                kind="bogus")
  with pytest.raises(ValueError):
    worlds.Pool(x_F=np.zeros(2), tokens_D=np.zeros(2), budget=1.0, latent=np.zeros(2),
                kind="new")
  world = worlds.make_world("synergy")
  with pytest.raises(ValueError):
    world.outcome(np.ones((3, 4)) / 4, world.new_pools(1)[0])


def test_uniform_anchors_put_one_uniform_run_in_every_pool_state():
  world = worlds.make_world("threshold", seed=3)
  plain = world.sweep(n_runs=60, n_pools=12, seeds=2, seed=1)
  anchored = world.sweep(n_runs=60, n_pools=12, seeds=2, seed=1, uniform_anchors=True)
  assert anchored.meta["uniform_anchors"] and not plain.meta["uniform_anchors"]
  f_plain, f_anch = plain.to_frame(), anchored.to_frame()
  wcols = [c for c in f_anch.columns if c.startswith("w_")]
  is_uniform = np.all(np.isclose(f_anch[wcols].to_numpy(), 1.0 / len(wcols)), axis=1)
  # Exactly one uniform run per pool state and seed, and it is that state's first run.
  per_state = f_anch[is_uniform].groupby(["seed", "pool_state"]).size()
  assert len(per_state) == 2 * 12 and (per_state == 1).all()
  first = f_anch.groupby(["seed", "pool_state"]).head(1)
  assert is_uniform[first.index].all()
  # Every other run is unchanged.
  rest = ~is_uniform
  np.testing.assert_array_equal(f_anch.loc[rest, wcols + ["y_loss"]].to_numpy(),
                                f_plain.loc[rest, wcols + ["y_loss"]].to_numpy())
  first_rows = first.index[first["seed"] == 0]
  assert not np.allclose(f_anch.loc[first_rows, "y_loss"],
                         f_plain.loc[first_rows, "y_loss"])  # they trained on uniform


def test_pipeline_design_draws_the_default_intervention_designs_mixtures():
  """design="pipeline": per pool state n_runs / n_pools mixtures, as the project's own
  design draws them: its flat and space-filling ones the same in every state, the rest
  around the state's token shares; outcomes as the world scores those mixtures."""
  world = worlds.make_world("threshold", seed=3)
  n_pools, m = 12, 10
  plain = world.sweep(n_runs=n_pools * m, n_pools=n_pools, seed=1)
  ours = world.sweep(n_runs=n_pools * m, n_pools=n_pools, seed=1, design="pipeline")
  assert ours.meta["design"] == "pipeline" and plain.meta["design"] == "shares"
  f = ours.to_frame()
  wcols = [f"w_{d}" for d in world.domains]
  w_MxPxD = f[wcols].to_numpy().reshape(m, n_pools, -1)  # run k * n_pools + p
  np.testing.assert_array_equal(f["pool_state"].to_numpy().reshape(m, n_pools),
                                np.broadcast_to(np.arange(n_pools), (m, n_pools)))
  np.testing.assert_allclose(w_MxPxD.sum(-1), 1.0)
  design = sweep_config.design_section(frozenset())
  n_shared = (round(m * design.flat_fraction) + round(m * design.space_filling_fraction))
  n_prior = m - n_shared
  # The shared draws are the same mixture in every pool state; the rest differ.
  shared = w_MxPxD[n_prior:]
  np.testing.assert_allclose(shared, np.broadcast_to(shared[:, :1], shared.shape),
                             atol=1e-12)
  assert not np.allclose(w_MxPxD[:n_prior], w_MxPxD[:n_prior, :1])
  # Prior-centred draws lean toward their state's token shares.
  tokens_PxD = f[[f"tokens_{d}" for d in world.domains]].to_numpy()[:n_pools]
  shares_PxD = tokens_PxD / tokens_PxD.sum(-1, keepdims=True)
  near = np.abs(w_MxPxD[:n_prior] - shares_PxD).sum(-1).mean()
  assert near < np.abs(w_MxPxD[:n_prior] - shares_PxD[::-1]).sum(-1).mean()
  # Outcomes: the world's on those mixtures, plus noise of the world's size.
  pools = world.sweep_pools(n_pools, seed=1)
  truth_MxP = np.stack([world.outcome(w_MxPxD[:, p], pools[p]) for p in range(n_pools)],
                      1)
  resid = f["y_loss"].to_numpy().reshape(m, n_pools) - truth_MxP
  assert np.abs(resid).max() < 6 * world.noise_sd
  assert not np.allclose(f[wcols].to_numpy(), plain.to_frame()[wcols].to_numpy())
  # Deterministic, and anchors still take each state's first run.
  again = world.sweep(n_runs=n_pools * m, n_pools=n_pools, seed=1, design="pipeline")
  pd.testing.assert_frame_equal(again.to_frame(), f)
  anchored = world.sweep(n_runs=n_pools * m, n_pools=n_pools, seed=1, design="pipeline",
                         uniform_anchors=True).to_frame()
  np.testing.assert_allclose(anchored[wcols].to_numpy()[:n_pools], 1.0 / len(wcols))
  np.testing.assert_array_equal(anchored[wcols].to_numpy()[n_pools:],
                                f[wcols].to_numpy()[n_pools:])
  with pytest.raises(ValueError, match="sweep design: unknown 'flat'"):
    world.sweep(n_runs=24, n_pools=12, design="flat")
  with pytest.raises(ValueError, match="n_runs=25 is not a multiple of n_pools=12"):
    world.sweep(n_runs=25, n_pools=12, design="pipeline")


@pytest.mark.parametrize("n_domains", [3, 8])
def test_every_world_is_defined_over_other_domain_counts(n_domains):
  """The zoo's `n_domains` reaches every world: sweeps, pools and the oracle keep the
  count, and the oracle's mixture is no worse than uniform on a new and a shifted
  pool."""
  for name in NAMES:
    world = worlds.make_world(name, seed=1, n_domains=n_domains)
    assert world.n_domains == n_domains and len(world.domains) == n_domains
    runs = world.sweep(n_runs=24, n_pools=4, seeds=1, seed=0)
    assert runs.W.shape == (24, n_domains) and sorted(runs.domains) == sorted(world.domains)
    assert np.all(np.isfinite(runs.y("loss")))
    for pool in (world.new_pools(1, seed=2)[0], world.shifted_pools(1, seed=2)[0]):
      best_D = world.best_mixture(pool)
      assert best_D.shape == (n_domains,) and abs(best_D.sum() - 1.0) < 1e-6
      uniform_D = np.full(n_domains, 1.0 / n_domains)
      assert world.regret(best_D, pool) <= 1e-9, name
      assert world.regret(uniform_D, pool) >= -1e-9, name


def test_make_world_names_a_bad_domain_count():
  with pytest.raises(ValueError, match="n_domains >= 2"):
    worlds.make_world("threshold", n_domains=1)
