"""Tests of the intervention design: bounds, caps, confounding, sharing, seeds."""

from __future__ import annotations


import numpy as np
import pytest

from causalmix_jax import interventions
from causalmix_jax.configs import base
from causalmix_jax.data import covariates as covariates_lib
from causalmix_jax.data import pool as pool_lib
from causalmix_jax.data import pool_shift

DOMAINS = ["a", "b", "c", "d"]


def _cfg(**design):
  cfg = base.get_config("smoke")
  cfg.unlock()
  cfg.design.state_per_mixture = False  # n_mixtures per state unless a test says
  for k, v in design.items():
    cfg.design[k] = v
  return cfg


def _states_arrays():
  n = np.array([[40_000, 40_000, 20_000, 100_000],
                [5_000, 40_000, 20_000, 100_000],    # a scarce
                [40_000, 40_000, 20_000, 12_500]],   # d scarce
               np.int64)
  return n, np.zeros(n.shape, np.float32)


def test_projection_respects_box_and_simplex():
  rng = np.random.default_rng(0)
  v = rng.normal(size=(200, 5))
  lo = np.array([0.05, 0.0, 0.0, 0.1, 0.0])
  hi = np.array([0.5, 0.3, 0.9, 0.4, 0.2])
  w = interventions.project_to_box_simplex(v, lo, hi)
  np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-12)
  assert np.all(w >= lo - 1e-12) and np.all(w <= hi + 1e-12)
  # A point already feasible is left where it is.
  p = np.array([[0.2, 0.2, 0.2, 0.25, 0.15]])
  np.testing.assert_allclose(interventions.project_to_box_simplex(p, lo, hi), p, atol=1e-9)


def test_bounds_and_repetition_cap_hold_in_every_run():
  n, r = _states_arrays()
  cfg = _cfg(n_mixtures=30, min_weight=0.02, max_weight=0.8, max_epochs=0.5, seeds=2)
  cfg.proxy.optim.steps = 100
  cfg.proxy.optim.batch_size = 8
  cfg.proxy.model.seq_len = 32  # budget = 25,600 tokens
  d = interventions.build_design(cfg, DOMAINS, n, r)
  budget = int(d["budget_tokens"])
  assert budget == 25_600
  w = d["w_NxD"]
  np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-9)
  assert w.min() >= 0.02 - 1e-9 and w.max() <= 0.8 + 1e-9
  epochs = w * budget / n[d["state_N"]]
  assert epochs.max() <= 0.5 + 1e-9
  # The cap binds: scarce domain a in state 1 (5,000 tokens) is held to <= 0.0977.
  assert w[d["state_N"] == 1, 0].max() <= 0.5 * 5_000 / budget + 1e-9


def test_infeasible_bounds_name_the_config_keys():
  n, r = _states_arrays()
  cfg = _cfg(max_weight=0.2)
  with pytest.raises(interventions.DesignError, match="design.max_weight"):
    interventions.build_design(cfg, DOMAINS, n, r)


def test_confounding_prior_mixtures_follow_each_states_token_shares():
  n, r = _states_arrays()
  cfg = _cfg(n_mixtures=60, flat_fraction=0.2, space_filling_fraction=0.2, seeds=1)
  d = interventions.build_design(cfg, DOMAINS, n, r)
  prior = d["mixture_kind_N"] == interventions.MIX_PRIOR
  w_a = {s: d["w_NxD"][prior & (d["state_N"] == s), 0].mean() for s in range(3)}
  w_d = {s: d["w_NxD"][prior & (d["state_N"] == s), 3].mean() for s in range(3)}
  # Domain a is 8x scarcer in state 1, domain d 8x scarcer in state 2: treatment
  # depends on the covariates.
  assert w_a[1] < 0.5 * w_a[0]
  assert w_d[2] < 0.5 * w_d[0]
  # Prior-centred means track the shares (full pool: a = 0.2).
  assert abs(w_a[0] - 0.2) < 0.06


def test_flat_and_space_filling_mixtures_are_shared_by_every_state():
  n, r = _states_arrays()
  cfg = _cfg(n_mixtures=20, flat_fraction=0.25, space_filling_fraction=0.25, seeds=1)
  d = interventions.build_design(cfg, DOMAINS, n, r)
  shared = d["mixture_kind_N"] != interventions.MIX_PRIOR
  blocks = [d["w_NxD"][shared & (d["state_N"] == s)] for s in range(3)]
  assert len(blocks[0]) == 10
  np.testing.assert_array_equal(blocks[0], blocks[1])
  np.testing.assert_array_equal(blocks[0], blocks[2])
  assert (d["mixture_kind_N"] == interventions.MIX_SPACE).sum() == 15


def test_anchors_run_uniform_and_natural_in_every_state_and_leave_the_rest():
  n, r = _states_arrays()
  plain_cfg = _cfg(n_mixtures=10, flat_fraction=0.2, space_filling_fraction=0.2, seeds=2)
  plain = interventions.build_design(plain_cfg, DOMAINS, n, r)
  cfg = _cfg(n_mixtures=10, flat_fraction=0.2, space_filling_fraction=0.2, seeds=2,
             anchors=("uniform", "natural"))
  d = interventions.build_design(cfg, DOMAINS, n, r)
  anchor = d["mixture_kind_N"] == interventions.MIX_ANCHOR
  assert anchor.sum() == 3 * 2 * 2  # states x anchors x seeds
  for s in range(3):
    rows = np.flatnonzero(anchor & (d["state_N"] == s) & (d["seed_N"] == 0))
    np.testing.assert_allclose(d["w_NxD"][rows[0]], 0.25, atol=1e-12)
    np.testing.assert_allclose(d["w_NxD"][rows[1]], n[s] / n[s].sum(), atol=1e-12)
  # Every other run is the design without anchors, run for run.
  np.testing.assert_array_equal(d["w_NxD"][~anchor], plain["w_NxD"][~anchor])
  assert np.all(plain["mixture_kind_N"][anchor] == interventions.MIX_PRIOR)
  np.testing.assert_array_equal(d["run_id_N"], plain["run_id_N"])


def test_anchors_respect_the_states_bounds_and_caps():
  n, r = _states_arrays()
  cfg = _cfg(n_mixtures=10, max_epochs=0.5, seeds=1, anchors=("uniform",))
  cfg.proxy.optim.steps = 100
  cfg.proxy.optim.batch_size = 8
  cfg.proxy.model.seq_len = 32  # budget 25,600: a (5,000 tokens) capped at 0.0977
  d = interventions.build_design(cfg, DOMAINS, n, r)
  w = d["w_NxD"][(d["mixture_kind_N"] == interventions.MIX_ANCHOR) & (d["state_N"] == 1)]
  assert w[0, 0] <= 0.5 * 5_000 / 25_600 + 1e-9 and abs(w[0].sum() - 1) < 1e-9


@pytest.mark.parametrize("design, match", [
    (dict(anchors=("uniform", "best")), "design.anchors"),
    (dict(anchors=("uniform", "uniform")), "design.anchors"),
    (dict(anchors=("uniform",), state_per_mixture=True), "state_per_mixture"),
    (dict(anchors=("uniform", "natural"), n_mixtures=4, flat_fraction=0.5,
          space_filling_fraction=0.25), "design.n_mixtures=4"),
])
def test_bad_anchors_name_the_config_keys(design, match):
  n, r = _states_arrays()
  with pytest.raises(interventions.DesignError, match=match):
    interventions.build_design(_cfg(**design), DOMAINS, n, r)


def test_bad_anchors_stop_the_design_before_any_state_is_built():
  docs = {d: ["abcdefgh" * 50] * 10 for d in DOMAINS}
  pool = pool_lib.from_documents(docs, ["target"])
  cfg = _cfg(anchors=("natrual",))
  with pytest.raises(interventions.DesignError, match="natrual"):
    interventions.make_states(pool, cfg.design, seq_len=32, rng=np.random.default_rng(0))


def test_sobol_simplex_is_space_filling():
  pts = interventions.sobol_simplex(64, 3, seed=0)
  np.testing.assert_allclose(pts.sum(1), 1.0)
  rng_pts = np.random.default_rng(0).dirichlet(np.ones(3), 64)
  def min_dist(p):
    dist = np.linalg.norm(p[:, None] - p[None], axis=-1) + np.eye(len(p)) * 9
    return dist.min()
  assert min_dist(pts) > min_dist(rng_pts)


def test_seed_replicates_heldout_and_run_ids():
  n, r = _states_arrays()
  cfg = _cfg(n_mixtures=10, seeds=3, heldout_fraction=0.2)
  d = interventions.build_design(cfg, DOMAINS, n, r)
  n_int = 30
  assert len(d["run_id_N"]) == n_int * 3
  assert len(set(d["run_id_N"].tolist())) == n_int * 3
  # Every intervention has seeds 0..2 with identical weights, state and held-out flag.
  for e in range(n_int):
    rows = d["intervention_N"] == e
    assert d["seed_N"][rows].tolist() == [0, 1, 2]
    assert np.ptp(d["w_NxD"][rows], axis=0).max() == 0
    assert len(set(d["heldout_N"][rows].tolist())) == 1
    assert len(set(d["state_N"][rows].tolist())) == 1
  assert d["heldout_N"].sum() == round(0.2 * n_int) * 3
  # Deterministic in cfg.seed.
  again = interventions.build_design(cfg, DOMAINS, n, r)
  np.testing.assert_array_equal(d["w_NxD"], again["w_NxD"])


def test_make_states_varies_the_pool_and_keeps_windows():
  rng = np.random.default_rng(0)
  docs = {d: ["".join(rng.choice(list("abcdefgh"), 400)) for _ in range(60)]
          for d in DOMAINS}
  pool = pool_lib.from_documents(docs, ["target"])
  cfg = _cfg(n_pool_states=5, min_tokens_per_domain=2048)
  states = interventions.make_states(pool, cfg.design, seq_len=32,
                                     rng=np.random.default_rng(1))
  assert len(states) == 5 and states[0].name == "full"
  arrays = [s.to_arrays(pool.domains) for s in states]
  n = np.stack([a[0] for a in arrays])
  dup = np.stack([a[1] for a in arrays])
  full_n = np.array([len(pool.train[d]) for d in pool.domains])
  assert np.array_equal(n[0], full_n)
  assert n.min() >= 2048 and np.all(n <= full_n)
  # Scarce, rich (everything cut but one domain) and duplicated states all differ.
  assert (n[1] < full_n).sum() >= 1
  assert (n[2] < full_n).sum() == len(DOMAINS) - 1
  assert dup[3].max() > 0
  assert len({tuple(a[0]) + tuple(a[1]) for a in arrays}) == 5
  # Materialising works for every state (the covariates are computed on it).
  mat = pool_shift.materialise(pool, states[3])
  assert all(len(mat.train[d]) == n[3, i] for i, d in enumerate(pool.domains))



def test_one_mixture_per_state_gives_every_intervention_its_own_state():
  rng = np.random.default_rng(0)
  n = np.stack([rng.integers(5_000, 100_000, 4) for _ in range(20)]).astype(np.int64)
  cfg = _cfg(state_per_mixture=True, n_pool_states=20, flat_fraction=0.2,
             space_filling_fraction=0.2, seeds=2, n_mixtures=7)
  d = interventions.build_design(cfg, DOMAINS, n, np.zeros(n.shape, np.float32))
  assert len(d["run_id_N"]) == 40 and len(set(d["run_id_N"].tolist())) == 40
  np.testing.assert_array_equal(d["state_N"], np.repeat(np.arange(20), 2))
  kinds = np.bincount(d["mixture_kind_N"][::2], minlength=3)
  assert kinds.tolist() == [12, 4, 4]  # prior-centred / flat / space-filling
  # Prior-centred draws still follow their own state's token shares (confounding).
  prior = d["mixture_kind_N"][::2] == interventions.MIX_PRIOR
  shares = (n / n.sum(1, keepdims=True))[prior]
  assert np.corrcoef(shares[:, 0], d["w_NxD"][::2][prior, 0])[0, 1] > 0.3


def test_per_run_design_gives_a_distinct_covariate_vector_per_intervention():
  rng = np.random.default_rng(0)
  docs = {d: ["".join(rng.choice(list("abcdefgh" + d * 3), 400)) for _ in range(60)]
          for d in DOMAINS}
  pool = pool_lib.from_documents(docs, ["target"])
  cfg = _cfg(state_per_mixture=True, n_pool_states=12, min_tokens_per_domain=2048,
             state_kinds=("scarce", "rich", "dup", "subsample", "quality"))
  scores = fake_doc_scores(pool)
  states = interventions.make_states(pool, cfg.design, seq_len=32,
                                     rng=np.random.default_rng(1), scores=scores)
  full = covariates_lib.feature_vector(covariates_lib.compute_covariates(
      pool, cfg.covariates, doc_scores=scores))
  n_SxD, r_SxD, q_SxD, records = interventions.describe_states(pool, states, cfg, full,
                                                               scores)
  assert np.any(q_SxD < 1) and np.all(q_SxD > 0)  # some states filter by quality
  d = interventions.build_design(cfg, DOMAINS, n_SxD, r_SxD, q_SxD)
  vectors = [tuple(sorted(records[s]["covariates"].items())) for s in d["state_N"][::1]]
  assert len(vectors) == len(d["run_id_N"])
  assert len(set(vectors)) == len(set(d["intervention_N"].tolist())) == 12
  # The reference features move with the state: a quality filter lowers the loss.
  filtered = [s for s, r in enumerate(records) if r.get("quality")]
  for s in filtered:
    for dom, q in records[s]["quality"].items():
      assert (records[s]["covariates"][f"x_ref_loss_bits__{dom}"]
              < full[f"x_ref_loss_bits__{dom}"]), (dom, q)


def fake_doc_scores(pool, seed: int = 0):
  """Document scores from random per-token values (no model needed)."""
  from causalmix_jax.data import doc_scores  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(seed)
  loss = {d: rng.gamma(2.0, 1.0, len(pool.train[d])) for d in pool.domains}
  # Documents differ in level, so a quality filter has something to rank.
  for d in pool.domains:
    starts = np.asarray(pool.doc_starts[d])
    level = rng.uniform(0.5, 2.0, len(starts))
    loss[d] *= np.repeat(level, np.diff(np.append(starts, len(pool.train[d]))))
  ent = {d: rng.gamma(3.0, 1.0, len(pool.train[d])) for d in pool.domains}
  scored = {d: np.ones(len(pool.train[d]), bool) for d in pool.domains}
  return doc_scores.from_token_scores(pool.domains, pool.doc_starts, loss, ent, scored)


def test_shift_study_sweeps_only_small_subsamples():
  from experiments.shift import config as shift_config  # pylint: disable=import-outside-toplevel
  cfg = shift_config.get_config("smoke")
  rng = np.random.default_rng(0)
  docs = {d: ["".join(rng.choice(list("abcdefgh"), 400)) for _ in range(80)]
          for d in DOMAINS}
  pool = pool_lib.from_documents(docs, ["target"])
  with cfg.unlocked():
    cfg.design.min_tokens_per_domain = 64
  with pytest.raises(interventions.DesignError, match="reference.enabled"):
    interventions.make_states(pool, cfg.design, seq_len=32, rng=np.random.default_rng(1))
  states = interventions.make_states(pool, cfg.design, seq_len=32,
                                     rng=np.random.default_rng(1),
                                     scores=fake_doc_scores(pool))
  n = np.stack([s.to_arrays(pool.domains)[0] for s in states])
  # Each domain's subsample is 1/8 to 1/2 of what it holds after any quality filter.
  avail = np.stack([[s.available[d] for d in pool.domains] for s in states])
  assert len(states) == cfg.design.n_pool_states
  assert all(s.name.endswith(("_subsample", "_quality")) for s in states)
  assert np.all(n <= 0.5 * avail + 1) and np.all(n >= avail / 8 - 1)
  filtered = [s for s in states if s.filtered]
  assert len(filtered) == len(states) // 2
  assert all(set(s.quality.values()) <= {0.25, 0.5, 0.75} for s in filtered)
  assert len({tuple(r) for r in n}) == len(states)
  assert cfg.pool.deploy.fraction.math == 1 / 16 and cfg.pool.deploy.dup_rate.code == 0.25
  assert cfg.pool.deploy.quality.literature == 0.5 and cfg.reference.enabled
