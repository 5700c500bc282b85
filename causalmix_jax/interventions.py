"""The intervention design of the proxy sweep: which pool states, mixtures and seeds the
proxies are trained on.

Pool states (covariates X) come from `causalmix_jax.data.pool_shift`: the full pool plus
states with scarce, rich, subsampled and duplicated domains. Mixtures (treatments T) are
drawn per state: Dirichlet draws around that state's own token shares at several
concentrations (as sweeps usually do, so T depends on X: the confounding the causal
surface must handle), plus flat-Dirichlet and space-filling (scrambled Sobol mapped to the
simplex) draws shared by every state (so each region of the simplex is seen under every
state). Every mixture respects the weight bounds and the repetition cap (max epochs per
domain given the proxy's token budget and the tokens the state exposes). Seed replicate
s uses the same init and data-order keys for every mixture (common random numbers).

The `design` stage (`stages/design.py`) writes them as `design/interventions.npz` (one row
per run) and `design/design.json`.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Sequence

import ml_collections
import numpy as np
from scipy.stats import qmc


log = logging.getLogger(__name__)

MIX_PRIOR, MIX_FLAT, MIX_SPACE, MIX_ANCHOR = 0, 1, 2, 3
MIX_KINDS = ("prior", "flat", "space_filling", "anchor")
# Reference mixtures a design may run in every pool state (`design.anchors`): the
# uniform mixture and the state's own token shares ("natural").
ANCHORS = ("uniform", "natural")


class DesignError(ValueError):
  """An infeasible or malformed design (names the config key at fault)."""


# ----------------------------------------------------------------------------- simplex


def project_to_box_simplex(v_ND: np.ndarray, lo_D: np.ndarray, hi_D: np.ndarray,
                           iters: int = 100) -> np.ndarray:
  """Euclidean projection of each row onto {w : lo <= w <= hi, sum w = 1}.

  Bisection on the shift tau in w = clip(v - tau, lo, hi). Requires sum lo <= 1 <= sum hi.
  """
  v_ND = np.atleast_2d(np.asarray(v_ND, np.float64))
  lo_D = np.broadcast_to(np.asarray(lo_D, np.float64), v_ND.shape)
  hi_D = np.broadcast_to(np.asarray(hi_D, np.float64), v_ND.shape)
  a = (v_ND - hi_D).min(axis=1) - 1.0
  b = (v_ND - lo_D).max(axis=1) + 1.0
  for _ in range(iters):
    mid = 0.5 * (a + b)
    s = np.clip(v_ND - mid[:, None], lo_D, hi_D).sum(axis=1)
    a = np.where(s > 1.0, mid, a)
    b = np.where(s > 1.0, b, mid)
  w = np.clip(v_ND - (0.5 * (a + b))[:, None], lo_D, hi_D)
  # Exact normalisation of the residual (tiny) without leaving the box.
  resid = 1.0 - w.sum(axis=1)
  room = np.where(resid[:, None] > 0, hi_D - w, w - lo_D)
  share = room / np.maximum(room.sum(axis=1, keepdims=True), 1e-300)
  return w + resid[:, None] * share


def weight_bounds(n_tokens_D: np.ndarray, budget_tokens: int, *, min_weight: float,
                  max_weight: float, max_epochs: float) -> tuple[np.ndarray, np.ndarray]:
  """Per-domain [lo, hi] on the weight: the global bounds and the repetition cap
  w_d * budget / n_tokens_d <= max_epochs (0 = no cap)."""
  d = len(n_tokens_D)
  lo = np.full(d, float(min_weight))
  hi = np.full(d, float(max_weight))
  if max_epochs > 0:
    hi = np.minimum(hi, max_epochs * np.asarray(n_tokens_D, np.float64) / budget_tokens)
  return lo, hi


def sobol_simplex(n: int, d: int, seed: int) -> np.ndarray:
  """n space-filling points on the (d-1)-simplex: scrambled Sobol in [0,1]^(d-1) mapped
  to the simplex by sorted spacings (which maps uniform to uniform)."""
  if d == 1:
    return np.ones((n, 1))
  sampler = qmc.Sobol(d - 1, scramble=True, seed=seed)
  m = int(np.ceil(np.log2(max(n, 2))))
  u = sampler.random_base2(m)[:n]
  u = np.sort(u, axis=1)
  edges = np.concatenate([np.zeros((n, 1)), u, np.ones((n, 1))], axis=1)
  return np.diff(edges, axis=1)


def dirichlet_around(rng: np.random.Generator, prior_D: np.ndarray, concentration: float,
                     n: int) -> np.ndarray:
  """Dirichlet draws with mean `prior_D` and total concentration `concentration * D`."""
  alpha = np.maximum(prior_D * concentration * len(prior_D), 1e-3)
  return rng.dirichlet(alpha, size=n)


# ----------------------------------------------------------------------------- states


def make_states(pool: Any, design_cfg: ml_collections.ConfigDict, *, seq_len: int,
                rng: np.random.Generator, scores: Any = None) -> list[Any]:
  """`design.n_pool_states` pool states: full, then cycling through scarce / rich /
  duplicated / subsampled / quality-filtered variants on randomly chosen domains
  (`scores`: the reference stage's `DocScores`, which quality filters rank by)."""
  from causalmix_jax.data import pool_shift  # pylint: disable=import-outside-toplevel
  domains = list(pool.domains)
  base = pool_shift.full(pool)
  states = [base]
  min_tokens = max(int(design_cfg.min_tokens_per_domain), seq_len + 1)
  factors = tuple(design_cfg.shift_factors)
  check_anchors(design_cfg)
  kinds = tuple(design_cfg.state_kinds)
  unknown = sorted(set(kinds) - {"scarce", "rich", "dup", "subsample", "quality"})
  if unknown or not kinds:
    raise DesignError(f"config key design.state_kinds={kinds}: unknown kind(s) {unknown}; "
                      "known: scarce, rich, dup, subsample, quality")
  if "quality" in kinds and scores is None:
    raise DesignError("config key design.state_kinds includes 'quality', which filters "
                      "documents by the reference model's scores: set reference.enabled="
                      "True and run --stage=reference")
  qualities = tuple(float(q) for q in design_cfg.quality_fractions)
  if "quality" in kinds and (not qualities or not all(0 < q < 1 for q in qualities)):
    raise DesignError(f"config key design.quality_fractions={qualities}: keep fractions "
                      "must lie in (0, 1)")
  max_frac = float(design_cfg.subsample_max_fraction)
  if not 0 < max_frac <= 1:
    raise DesignError(f"config key design.subsample_max_fraction={max_frac} must lie in "
                      "(0, 1]")
  full_n = {d: int(base.n_tokens[d]) for d in domains}

  def floor_factor(d: str, f: float) -> float:
    return float(min(f, max(full_n[d] / min_tokens, 1.0)))

  def draw(kind: str) -> Any:
    st = base
    picked = list(rng.choice(domains, size=min(2, len(domains)), replace=False))
    f = float(rng.choice(factors))
    if kind == "scarce":
      for d in picked:
        st = pool_shift.scarce(st, d, floor_factor(d, f))
    elif kind == "rich":
      # Everything scarce by f except one domain, which stays rich relative to the rest.
      for d in domains:
        st = pool_shift.scarce(st, d, floor_factor(d, f))
      st = pool_shift.rich(st, picked[0], f)
    elif kind == "dup":
      for d in picked:
        rate = float(rng.choice(tuple(design_cfg.dup_rates)))
        st = pool_shift.inject_duplicates(st, d, rate)
    else:
      if kind == "quality":
        for d in picked:
          q = float(rng.choice(qualities))
          kept = pool_shift.kept_tokens(pool, d, scores.keep_mask(d, q))
          if kept >= min_tokens:
            st = pool_shift.quality_filter(st, d, q, kept)
      for d in domains:
        frac = float(rng.uniform(min(1.0 / f, max_frac), max_frac))
        n_avail = int(st.n_tokens[d])
        st = pool_shift.subsample(st, d, max(min(min_tokens, n_avail), int(n_avail * frac)))
    return st

  def key(st: Any) -> tuple[Any, ...]:
    n_D, r_D = st.to_arrays(domains)
    return (tuple(n_D.tolist()) + tuple(np.round(r_D, 9).tolist())
            + tuple(st.quality_array(domains).tolist()))

  seen = {key(base)}
  first = 1 if bool(design_cfg.include_full_pool) else 0
  if not first:
    states = []
  for i in range(first, int(design_cfg.n_pool_states)):
    kind = kinds[(i - first) % len(kinds)]
    # Every state distinct (each gives its runs their own covariates): redraw a repeat,
    # then fall back to a random subsample, which is distinct with probability one.
    for attempt in range(8):
      used = kind if attempt < 7 else "subsample"
      st = draw(used)
      if key(st) not in seen:
        break
    seen.add(key(st))
    st = _renamed(pool_shift, st, f"{i:02d}_{used}")
    states.append(st)
  for st in states:
    for d in domains:
      if int(st.n_tokens[d]) < seq_len + 1:
        raise DesignError(
            f"pool state {st.name!r}: domain {d!r} exposes {st.n_tokens[d]} tokens, fewer "
            f"than one proxy window ({seq_len + 1}); raise design.min_tokens_per_domain "
            "or lower design.shift_factors")
  return states


def _renamed(pool_shift: Any, state: Any, name: str) -> Any:
  import dataclasses  # pylint: disable=import-outside-toplevel
  if dataclasses.is_dataclass(state):
    return dataclasses.replace(state, name=name)
  return pool_shift.PoolState(name, dict(state.n_tokens), dict(state.dup_rate))


# ----------------------------------------------------------------------------- design


def check_anchors(design_cfg: ml_collections.ConfigDict) -> tuple[str, ...]:
  """`design.anchors`, checked: known names, no repeats, and room for them among each
  state's prior-centred mixtures (a DesignError names the keys at fault)."""
  anchors = tuple(str(a) for a in design_cfg.get("anchors", ()))
  if not anchors:
    return anchors
  unknown = sorted(set(anchors) - set(ANCHORS))
  if unknown or len(set(anchors)) != len(anchors):
    raise DesignError(f"config key design.anchors={anchors}: unknown or repeated "
                      f"name(s) {unknown or anchors}; known: {list(ANCHORS)}")
  if bool(design_cfg.state_per_mixture):
    raise DesignError(f"config key design.anchors={anchors} needs several mixtures per "
                      "pool state; design.state_per_mixture=True gives each state one")
  m = int(design_cfg.n_mixtures)
  n_prior = m - int(round(m * float(design_cfg.flat_fraction))) - int(
      round(m * float(design_cfg.space_filling_fraction)))
  if n_prior < len(anchors):
    raise DesignError(
        f"config key design.anchors={anchors}: anchors replace prior-centred mixtures, "
        f"and design.n_mixtures={m} with design.flat_fraction="
        f"{design_cfg.flat_fraction} and design.space_filling_fraction="
        f"{design_cfg.space_filling_fraction} leaves {n_prior} per state")
  return anchors


def anchor_mixtures(anchors: Sequence[str], n_tokens_D: np.ndarray) -> np.ndarray:
  """The anchors' mixtures for one pool state, before its bounds: uniform, or the
  state's token shares ("natural")."""
  n_tokens_D = np.asarray(n_tokens_D, np.float64)
  rows = [np.full(len(n_tokens_D), 1.0 / len(n_tokens_D)) if a == "uniform"
          else n_tokens_D / n_tokens_D.sum() for a in anchors]
  return np.stack(rows) if rows else np.zeros((0, len(n_tokens_D)))


def _state_box(design_cfg: ml_collections.ConfigDict, n_tokens_D: np.ndarray,
               budget_tokens: int, s: int) -> tuple[np.ndarray, np.ndarray]:
  lo, hi = weight_bounds(n_tokens_D, budget_tokens, min_weight=design_cfg.min_weight,
                         max_weight=design_cfg.max_weight,
                         max_epochs=design_cfg.max_epochs)
  if lo.sum() > 1 + 1e-9 or hi.sum() < 1 - 1e-9:
    raise DesignError(
        f"state {s}: no mixture satisfies design.min_weight={design_cfg.min_weight}, "
        f"design.max_weight={design_cfg.max_weight} and design.max_epochs="
        f"{design_cfg.max_epochs} (sum of lower bounds {lo.sum():.3f}, of upper bounds "
        f"{hi.sum():.3f}, budget {budget_tokens} tokens)")
  return lo, hi


def _one_mixture_per_state(rng: np.random.Generator, design_cfg: ml_collections.ConfigDict,
                           n_tokens_SxD: np.ndarray, budget_tokens: int, seed: int
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """One mixture per pool state (the paper's unit: every intervention has its own pool
  state). The mixture kinds are shared out over all states in the configured fractions
  and assigned at random, so the kind does not follow the state's kind."""
  n_states, d = n_tokens_SxD.shape
  n_flat = int(round(n_states * float(design_cfg.flat_fraction)))
  n_space = int(round(n_states * float(design_cfg.space_filling_fraction)))
  n_prior = n_states - n_flat - n_space
  if n_prior < 0:
    raise DesignError("design.flat_fraction + design.space_filling_fraction exceed 1")
  concentrations = tuple(float(c) for c in design_cfg.concentrations)
  if n_prior and not concentrations:
    raise DesignError("design.concentrations is empty")
  kind_E = rng.permutation(np.array([MIX_PRIOR] * n_prior + [MIX_FLAT] * n_flat
                                    + [MIX_SPACE] * n_space, np.int32))
  space = sobol_simplex(n_space, d, seed) if n_space else np.zeros((0, d))
  w_ExD = np.zeros((n_states, d))
  conc_E = np.zeros(n_states)
  n_seen = {MIX_PRIOR: 0, MIX_SPACE: 0}
  for s in range(n_states):
    if kind_E[s] == MIX_PRIOR:
      conc_E[s] = concentrations[n_seen[MIX_PRIOR] % len(concentrations)]
      prior = n_tokens_SxD[s] / n_tokens_SxD[s].sum()
      w = dirichlet_around(rng, prior, conc_E[s], 1)[0]
    elif kind_E[s] == MIX_FLAT:
      w = rng.dirichlet(np.ones(d))
    else:
      w = space[n_seen[MIX_SPACE]]
    n_seen[int(kind_E[s])] = n_seen.get(int(kind_E[s]), 0) + 1
    lo, hi = _state_box(design_cfg, n_tokens_SxD[s], budget_tokens, s)
    w_ExD[s] = project_to_box_simplex(w[None], lo, hi)[0]
  return w_ExD, np.arange(n_states, dtype=np.int32), kind_E, conc_E


def draw_mixtures(rng: np.random.Generator, design_cfg: ml_collections.ConfigDict,
                  n_tokens_SxD: np.ndarray, budget_tokens: int, seed: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """Mixtures for every state: (w_ExD, state_E, kind_E, concentration_E), E = S * M.

  Flat and space-filling mixtures are shared by all states; prior-centred ones are drawn
  around each state's token shares, and the anchors (`design.anchors`) take the place
  of each state's first prior-centred draws (every other draw is as without them). All
  are projected onto the bounds and caps of their state.
  """
  n_states, d = n_tokens_SxD.shape
  anchors = check_anchors(design_cfg)
  if bool(design_cfg.state_per_mixture):
    return _one_mixture_per_state(rng, design_cfg, n_tokens_SxD, budget_tokens, seed)
  m = int(design_cfg.n_mixtures)
  n_flat = int(round(m * float(design_cfg.flat_fraction)))
  n_space = int(round(m * float(design_cfg.space_filling_fraction)))
  n_prior = m - n_flat - n_space
  if n_prior < 0:
    raise DesignError("design.flat_fraction + design.space_filling_fraction exceed 1")
  concentrations = tuple(float(c) for c in design_cfg.concentrations)
  if n_prior and not concentrations:
    raise DesignError("design.concentrations is empty")
  shared = np.concatenate([
      rng.dirichlet(np.ones(d), size=n_flat),
      sobol_simplex(n_space, d, seed)]) if (n_flat + n_space) else np.zeros((0, d))
  shared_kind = np.array([MIX_FLAT] * n_flat + [MIX_SPACE] * n_space, np.int32)
  w_list, state_list, kind_list, conc_list = [], [], [], []
  for s in range(n_states):
    prior = n_tokens_SxD[s] / n_tokens_SxD[s].sum()
    conc = np.array([concentrations[i % len(concentrations)] for i in range(n_prior)])
    prior_draws = np.stack([dirichlet_around(rng, prior, c, 1)[0] for c in conc]) \
        if n_prior else np.zeros((0, d))
    w = np.concatenate([prior_draws, shared])
    kind = np.concatenate([np.full(n_prior, MIX_PRIOR, np.int32), shared_kind])
    conc_s = np.concatenate([conc, np.zeros(n_flat + n_space)])
    if anchors:
      w[:len(anchors)] = anchor_mixtures(anchors, n_tokens_SxD[s])
      kind[:len(anchors)] = MIX_ANCHOR
      conc_s[:len(anchors)] = 0.0
    lo, hi = _state_box(design_cfg, n_tokens_SxD[s], budget_tokens, s)
    w_list.append(project_to_box_simplex(w, lo, hi))
    state_list.append(np.full(m, s, np.int32))
    kind_list.append(kind)
    conc_list.append(conc_s)
  return (np.concatenate(w_list), np.concatenate(state_list), np.concatenate(kind_list),
          np.concatenate(conc_list))


def budget_tokens(cfg: ml_collections.ConfigDict) -> int:
  """Tokens one proxy trains on: steps * batch_size * seq_len."""
  return int(cfg.proxy.optim.steps * cfg.proxy.optim.batch_size * cfg.proxy.model.seq_len)


def build_design(cfg: ml_collections.ConfigDict, domains: Sequence[str],
                 n_tokens_SxD: np.ndarray, dup_rate_SxD: np.ndarray,
                 quality_SxD: np.ndarray | None = None) -> dict[str, np.ndarray]:
  """The per-run arrays for given states (pure numpy; deterministic in cfg.seed).
  `quality_SxD`: each state's quality-filter keep fraction per domain (default 1)."""
  dc = cfg.design
  rng = np.random.default_rng([int(cfg.seed), 0xD5])
  budget = budget_tokens(cfg)
  w_ExD, state_E, kind_E, conc_E = draw_mixtures(
      rng, dc, np.asarray(n_tokens_SxD, np.float64), budget, int(cfg.seed))
  n_int = len(w_ExD)
  heldout_E = np.zeros(n_int, bool)
  n_held = int(round(n_int * float(dc.heldout_fraction)))
  if n_held:
    heldout_E[rng.choice(n_int, n_held, replace=False)] = True
  seeds = int(dc.seeds)
  if seeds < 1:
    raise DesignError(f"design.seeds={seeds} must be >= 1")
  # Runs: interventions x seeds flattened, intervention-major.
  rep = lambda a: np.repeat(a, seeds, axis=0)  # noqa: E731
  seed_N = np.tile(np.arange(seeds, dtype=np.int32), n_int)
  inter_N = rep(np.arange(n_int, dtype=np.int32))
  state_N = rep(state_E)
  per_state = 1 if bool(dc.state_per_mixture) else int(dc.n_mixtures)
  run_id = np.array([f"s{state_E[e]:02d}-m{e % per_state:03d}-r{r}"
                     for e in range(n_int) for r in range(seeds)])
  return {
      "w_NxD": rep(w_ExD), "state_N": state_N, "intervention_N": inter_N,
      "seed_N": seed_N, "run_id_N": run_id, "heldout_N": rep(heldout_E),
      "mixture_kind_N": rep(kind_E), "concentration_N": rep(conc_E),
      "n_tokens_SxD": np.asarray(n_tokens_SxD, np.int64),
      "dup_rate_SxD": np.asarray(dup_rate_SxD, np.float32),
      "quality_SxD": (np.ones_like(np.asarray(dup_rate_SxD, np.float32))
                      if quality_SxD is None else np.asarray(quality_SxD, np.float32)),
      "budget_tokens": np.array(budget, np.int64),
  }


def describe_states(pool: Any, states: Sequence[Any], cfg: ml_collections.ConfigDict,
                    full_vector: dict[str, float], scores: Any = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]]]:
  """(tokens, duplicate rate and quality-filter keep fraction per state and domain, one
  record per state with its covariate vector). The unshifted state reuses
  `full_vector`; `scores` (the reference stage's `DocScores`) adds the reference
  covariates and is needed by quality-filtered states."""
  # pylint: disable=import-outside-toplevel
  from causalmix_jax.data import covariates as covariates_lib
  from causalmix_jax.data import pool_shift
  from causalmix_jax.data import token_pool
  domains = list(pool.domains)
  n_tokens_SxD = np.zeros((len(states), len(domains)), np.int64)
  dup_rate_SxD = np.zeros((len(states), len(domains)), np.float32)
  quality_SxD = np.ones((len(states), len(domains)), np.float32)
  records = []
  full_n_D, _ = pool_shift.full(pool).to_arrays(domains)
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  t0, n_computed = time.time(), 0
  for s, st in enumerate(tqdm(states, desc="design: pool-state covariates", unit="state",
                              disable=len(states) < 8)):
    n_D, r_D = st.to_arrays(domains)
    n_tokens_SxD[s], dup_rate_SxD[s] = n_D, r_D
    quality_SxD[s] = st.quality_array(domains)
    # Host and device must agree on how many tokens are duplicates.
    host_dup = np.array([pool_shift.dup_count(int(n), float(r)) for n, r in zip(n_D, r_D)])
    dev_dup = token_pool.dup_tokens(n_D, r_D)
    if np.any(host_dup != dev_dup):
      raise DesignError(f"state {st.name}: duplicate counts disagree host {host_dup} vs "
                        f"device {dev_dup}")
    if np.array_equal(n_D, full_n_D) and not np.any(r_D) and not st.filtered:
      vector = full_vector  # the unshifted pool: the pool stage computed these already
    else:
      log.debug("design: covariates of pool state %s", st.name)
      vector = covariates_lib.feature_vector(covariates_lib.compute_covariates(
          pool, cfg.covariates, state=st, doc_scores=scores))
      n_computed += 1
    record = {
        "name": st.name,
        "n_tokens": {d: int(n) for d, n in zip(domains, n_D)},
        "dup_rate": {d: float(r) for d, r in zip(domains, r_D)},
        "covariates": vector,
    }
    if st.quality:
      record["quality"] = {d: float(q) for d, q in st.quality.items()}
    records.append(record)
  log.info("design: covariates of %d pool states computed in %.1fs", n_computed,
           time.time() - t0)
  return n_tokens_SxD, dup_rate_SxD, quality_SxD, records


def design_meta(cfg: ml_collections.ConfigDict, domains: Sequence[str],
                full_n_D: np.ndarray, arrays: dict[str, np.ndarray],
                states: list[dict[str, Any]]) -> dict[str, Any]:
  """design.json: domains, prior (the full pool's token shares), weight bounds, budget,
  counts and the pool states."""
  budget = int(arrays["budget_tokens"])
  full_n_D = np.asarray(full_n_D, np.float64)
  lo, hi = weight_bounds(full_n_D, budget, min_weight=cfg.design.min_weight,
                         max_weight=cfg.design.max_weight,
                         max_epochs=cfg.design.max_epochs)
  prior = full_n_D / full_n_D.sum()
  return {
      "domains": list(domains),
      "prior": {d: float(v) for d, v in zip(domains, prior)},
      "bounds": {"min_weight": float(cfg.design.min_weight),
                 "max_weight": float(cfg.design.max_weight),
                 "max_epochs": float(cfg.design.max_epochs),
                 "upper_full_pool": {d: float(v) for d, v in zip(domains, hi)},
                 "lower": {d: float(v) for d, v in zip(domains, lo)}},
      "budget_tokens": budget,
      "concentrations": [float(c) for c in cfg.design.concentrations],
      "anchors": list(check_anchors(cfg.design)),
      "mixture_kinds": list(MIX_KINDS),
      "n_runs": int(len(arrays["run_id_N"])),
      "n_interventions": int(arrays["intervention_N"].max() + 1),
      "seeds": int(cfg.design.seeds),
      "states": states,
  }
