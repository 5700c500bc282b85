"""Surfaces that stay honest on pools the sweep did not see: the scaling-law family as a
surface, and a stack of families chosen and calibrated by leave-pools-out prediction.

`fit_stack` answers the question users ask of a new pool. Runs are grouped by pool state
(the distinct rows of the varying covariates; row folds when the sweep has fewer than
four states) and, where the runs table mixes training scales (`params`, `budget_tokens`),
by scale too, so a held-out group is one pool at one scale and contrasts and replicates
never mix scales. Every member family is refitted with each group held out:

- members: the DML surface (`fit.py`, linear in physics features, effects modified by
  the covariates), the GP surface (random Fourier features over mixture and covariates:
  flexible in X), the structured scaling law (`scaling.py`: power laws in effective
  data with data-constrained repetition, so it extrapolates pool size physically) and
  its transfer form ("transfer": one power law in the domains' pooled effective data,
  so domains substitute for one another), LightGBM ("trees") and the DML family with
  hinge features ("hinge": kinks at fixed shares of the uniform weight, for
  thresholds); each also covariate-blind ("dml_blind", ...:
  the same effect in every pool, left out when the sweep's covariates do not vary) and
  on every principal component of the pool states ("dml_all", ...: left out when the
  `surface.max_x_components` cap already keeps them all);
- covariates (`surface.stack_covariates = "select"`, the default): every member is
  fitted with and without the covariates, and the blind set replaces the aware one
  only when its held-out contrast error per pool state is lower by more than one
  standard error (`select_covariates`); "select_all" also fits every member on all
  the components, a third set that replaces the aware one by the same test;
- stacking: non-negative weights summing to one that minimise the squared error of the
  held-out *within-pool contrasts* (the effect of the mixture, which is what a decision
  uses), so a family that is wrong for this sweep gets no weight; with
  `surface.stack_focus = "top"`, only the contrasts of the runs in the better half of
  their held-out cell choose the weights and the covariate set (the region the
  optimiser moves into);
- calibration: split-conformal on held-out contrasts within the same cells (a held-out
  pool state when pool states hold several mixtures; a held-out fold of pool states
  when each state holds one mixture, as with a pool state per intervention). By default
  (`surface.stack_calibration = "pairs"`) a contrast is the difference of two held-out
  runs of one cell, the same kind of quantity as an effect of one mixture against
  another. The spread of the stacked draws around their mean is scaled so that the
  conformal quantile of the normalised contrast errors sits on the edge of the
  interval (replicate runs' pure error is taken out, and pairs of replicate runs, one
  mixture against itself, are left out: `surface.replicate_pairs`; without replicates
  the run noise stays in, erring wide). `surface.conformal_units = "pools"` takes the
  held-out pool states, not the contrasts, as the exchangeable units
  (`grouped_conformal_scale`: the finite-sample bound for a new pool; wider, most
  where states are few; with fewer states than the level needs, the contrasts stay the
  units); with
  "pools_reported" that factor sets the intervals and a recommendation's reported
  figures while the optimiser decides on the contrasts' factor. A
  pool-level shift, common to every mixture of a pool, gets the spread of the held-out
  pools' level errors: it widens predictions of a new pool's outcome without touching
  its effects. With `surface.stack_discrepancy = "rff"` the contrast errors' variance
  is first split between the scaled spread and a smooth discrepancy of the mixture
  (`discrepancy.py`), and the conformal factor scales both.

The same held-out pool states judge the safe objective's uniform guard and, with
`surface.decision_calibration = "conformal"`, calibrate the guard's own query, the
pick's paired difference to uniform (`decisions.py`); `recommend` reads both from the
surface's info.

The result is an ordinary surface (`SurfaceBase`): predict, cate, theta, support, a
pure jittable sampler for the optimiser, save and load.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import pathlib
import time
from typing import Any, Sequence

import jax.numpy as jnp
import numpy as np
import scipy.optimize
from scipy import stats

from causalmix_jax import artifacts
from causalmix_jax.surface import conjugate
from causalmix_jax.surface import decisions
from causalmix_jax.surface import discrepancy
from causalmix_jax.surface import features as features_lib
from causalmix_jax.surface import nuisance as nuis
from causalmix_jax.surface import scaling
from causalmix_jax.surface import trees
from causalmix_jax.surface.prediction import central_z
from causalmix_jax.surface.surface import SurfaceBase

log = logging.getLogger(__name__)

BASE_MEMBERS = ("dml", "gp", "scaling", "transfer", "trees", "hinge")
# Each family also as a member that ignores the covariates ("dml_blind", ...): the same
# effect in every pool. Stacked beside the covariate-aware family, it takes the weight
# when effects modified by the pool do not predict held-out pools better.
BLIND_SUFFIX = "_blind"
# Each family also on every principal component of the sweep's pool states ("dml_all",
# ...) instead of at most `surface.max_x_components`: effects that may move with every
# direction the pool states span.
ALL_SUFFIX = "_all"
COVARIATE_SETS = {"aware": "", "blind": BLIND_SUFFIX, "all": ALL_SUFFIX}
MEMBERS = tuple(m + suffix for suffix in COVARIATE_SETS.values() for m in BASE_MEMBERS)
# The prefix of each set's "<prefix>_diff_mean" / "_diff_se" in the selection's figures
# (the blind set's keeps the name saved surfaces and reports already read).
DIFF_PREFIX = {"blind": "unit", "all": "all"}
# surface.stack_covariates -> the copies of each member that the selection fits.
SELECTION_COPIES = {"select": ("blind",), "select_all": ("blind", "all")}
# The members (and `fit_surface` methods) that are forms of the scaling family.
SCALING_FORMS = {"scaling": "boxcox", "transfer": "transfer"}
# The members that are the DML family with a feature kind added to its configured (or
# default) kinds: "hinge" bends at fixed shares of the uniform weight
# (features.HINGE_KNOTS), for steps, thresholds and saturation that the concave default
# features cannot follow.
DML_FORMS = {"hinge": "hinge"}
MIN_GROUPS = 4  # fewer distinct pool states: cross-validate by rows
# Below this many runs the members' fold refits (each on 4/5 of the runs) would fall
# under the 10 runs a surface needs once the fit stage's own cross-validation holds
# out a fifth: fit the DML surface alone.
MIN_STACK_RUNS = 30
# Most within-cell pairs of held-out runs the conformal step scores (a uniform sample
# of them beyond this; the count bounds memory and time, not a tuned value).
MAX_PAIRS = 4096
# Fewest contrasts per bin of `coverage_by_size` (else one bin): a bin's 90% conformal
# quantile needs 9 at least, and twice that keeps it off its one or two largest errors.
MIN_BIN_CONTRASTS = 20


# -- the scaling-law family as a surface ----------------------------------------------

class ScalingSurface(SurfaceBase):
  """The structured family of `scaling.py` with its Laplace posterior draws."""

  def __init__(self, spec: scaling.ScalingSpec, params: dict[str, Any], **kw):
    super().__init__(**kw)
    self.spec = spec
    self.params = {k: jnp.asarray(v) for k, v in params.items()}
    self._fn = functools.partial(scaling.sampler_fn, spec)

  def sampler(self, tokens: Any = None, budget: float | None = None):
    params = dict(self.params)
    if tokens is not None and self.spec.tokens_known:
      params["tokens_D"] = jnp.asarray(np.asarray(tokens, np.float64).reshape(-1),
                                       jnp.float32)
    if budget is not None and self.spec.tokens_known:
      params["budget"] = jnp.asarray(float(budget), jnp.float32)
    return self._fn, params

  @property
  def n_draws(self) -> int:
    return int(self.params["draws_SxP"].shape[0])

  def save(self, directory: str | pathlib.Path) -> pathlib.Path:
    directory = pathlib.Path(directory)
    self.save_companion(directory)
    artifacts.write_npz(directory / "posterior.npz",
                        **{k: np.asarray(v) for k, v in self.params.items()})
    return artifacts.write_json(directory / "surface.json", {
        **self.saved_meta("scaling"), "spec": self.spec.to_dict()})

  def __repr__(self) -> str:
    return (f"ScalingSurface(outcome={self.outcome!r}, {len(self.domains)} domains, "
            f"{len(self.features)} covariates, {self.n_draws} draws)")


class StackedSurface(SurfaceBase):
  """sum_k a_k [m_k + c (f_k - m_k)] + delta(w) + level + h g(w): member draws f_k
  (means m_k) stacked with weights a_k, their spread scaled by the conformal factor c,
  a smooth discrepancy of the mixture per draw (`discrepancy.py`; none when `disc` is
  empty) and a pool-level shift per draw (zero mean; the same for every mixture of a
  pool). The means m_k see the covariates clipped to `x_bounds`. With `hedge_S` given,
  the spread f_k - m_k is the one at the raw covariates, and the extrapolation gap g(w)
  (the stacked means at the raw covariates minus those at the clipped ones; zero inside
  the bounds) enters times a standard normal h per draw. With `clip_decisions_only`
  (surface.covariate_extrapolation = "clip_decisions") only the optimiser's draws see
  the clipped covariates; predict, cate and theta see them as they are."""

  def __init__(self, members: Sequence[SurfaceBase], weights: Sequence[float],
               scale: float, level_S: np.ndarray,
               disc: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
               x_bounds: tuple[np.ndarray, np.ndarray] | None = None,
               hedge_S: np.ndarray | None = None, optimiser_scale: float | None = None,
               clip_decisions_only: bool = False, report_scale: float | None = None,
               decision_disc_ratio: float = 1.0, **kw):
    super().__init__(**kw)
    # The members see covariates clipped to these bounds (surface.covariate_extrapolation
    # = "clip": the sweep's range); infinite bounds leave them as they are.
    f = len(self.features)
    self.x_bounds = tuple(np.asarray(b, np.float32).reshape(f) for b in (
        x_bounds if x_bounds is not None else (np.full(f, -np.inf), np.full(f, np.inf))))
    self.members = list(members)
    self.weights = np.asarray(weights, np.float64)
    self.scale = float(scale)
    # Whether the bounds hold for the optimiser's draws only (the intervals extrapolate).
    self.clip_decisions_only = bool(clip_decisions_only)
    # The factor the decisions' draws use (`optimiser_sampler`); None: `scale`.
    self.optimiser_scale = float(scale if optimiser_scale is None else optimiser_scale)
    # The factor a recommendation's reported figures use (`report_sampler`); None:
    # `optimiser_scale`'s (surface.conformal_units = "pools_reported" sets it apart).
    self.report_scale = float(self.optimiser_scale if report_scale is None
                              else report_scale)
    # The decisions' discrepancy amplitude over the intervals' (the contrasts' factor
    # over the pool states' with "pools_reported"; 1 otherwise).
    self.decision_disc_ratio = float(decision_disc_ratio)
    self.level_S = np.asarray(level_S, np.float32)
    # surface.covariate_extrapolation = "hedge": one standard normal per draw scales the
    # gap between extrapolating the covariates and clipping them (empty: no gap term).
    self.hedge_S = np.asarray(() if hedge_S is None else hedge_S, np.float32).reshape(-1)
    if len(self.hedge_S) and len(self.hedge_S) < len(self.level_S):
      raise ValueError(f"hedge draws: {len(self.hedge_S)}, fewer than the "
                       f"{len(self.level_S)} level draws")
    if disc is None:
      disc = discrepancy.draw_weights(None, 0.0, len(self.level_S), len(self.domains),
                                      0)
    self.disc = tuple(np.asarray(a, np.float32) for a in disc)  # omega, b, z
    if self.disc[0].shape[1] != len(self.domains):
      raise ValueError(f"discrepancy frequencies have {self.disc[0].shape[1]} columns; "
                       f"the surface has {len(self.domains)} domains")
    fns = tuple(m.sampler()[0] for m in self.members)
    n = min([m.n_draws for m in self.members] + [len(self.level_S), len(self.disc[2])])

    hedged = bool(len(self.hedge_S))

    def fn(params, w_NxD, x_F):
      omega, b, z = params["disc"]
      x_c = jnp.clip(x_F, *params["x_bounds"])
      member_draws = [f(p, w_NxD, x_c)[:n] for f, p in zip(fns, params["members"])]
      raw = ([f(p, w_NxD, x_F)[:n] for f, p in zip(fns, params["members"])] if hedged
             else None)
      return (_combine(member_draws, params["weights"], params["scale"],
                       params["level_S"][:n], raw, params["hedge_S"][:n])
              + discrepancy.draws(omega, b, z[:n], w_NxD, jnp.cos))

    self._fn = fn
    self._n = n

  def sampler(self, tokens: Any = None, budget: float | None = None):
    params = {"members": tuple(m.sampler(tokens, budget)[1] for m in self.members),
              "weights": jnp.asarray(self.weights, jnp.float32),
              "scale": jnp.float32(self.scale), "level_S": jnp.asarray(self.level_S),
              "disc": tuple(jnp.asarray(a) for a in self.disc),
              "x_bounds": tuple(jnp.asarray(a) for a in self._read_bounds()),
              "hedge_S": jnp.asarray(self.hedge_S)}
    return self._fn, params

  def _read_bounds(self) -> tuple[np.ndarray, np.ndarray]:
    """The bounds `sampler` and `draws` clip the covariates to: none when only the
    decisions clip them."""
    if self.clip_decisions_only:
      return tuple(np.full_like(b, s * np.inf) for b, s in zip(self.x_bounds, (-1, 1)))
    return self.x_bounds

  def optimiser_sampler(self, tokens: Any = None, budget: float | None = None):
    """`sampler` with the members' spread scaled by `optimiser_scale`: the draws the
    optimiser decides on (the same as `sampler`'s unless the fit calibrated the
    intervals and the decisions apart, surface.conformal_spread = "split" or
    surface.conformal_units = "pools_reported"), and the
    covariates clipped to `x_bounds` also where only the decisions clip them
    (surface.covariate_extrapolation = "clip_decisions")."""
    fn, params = self.sampler(tokens, budget)
    omega, b, z = params["disc"]
    return fn, {**params, "scale": jnp.float32(self.optimiser_scale),
                "disc": (omega, b, z * jnp.float32(self.decision_disc_ratio)),
                "x_bounds": tuple(jnp.asarray(a) for a in self.x_bounds)}

  @property
  def reports_apart(self) -> bool:
    """Whether `report_sampler`'s draws differ from `optimiser_sampler`'s: where the
    decisions alone clip the covariates, or the reports have their own factor."""
    return self.clip_decisions_only or self.report_scale != self.optimiser_scale

  def report_sampler(self, tokens: Any = None, budget: float | None = None):
    """The draws a recommendation reports its pick's predictions and gains from:
    `report_scale`'s spread (the decisions' unless the fit set it apart), with the
    covariates as `predict` reads them (not clipped where only the decisions clip
    them)."""
    fn, params = self.sampler(tokens, budget)
    return fn, {**params, "scale": jnp.float32(self.report_scale)}

  @property
  def n_draws(self) -> int:
    return self._n

  def draws(self, w: Any, x: Any = None, *, tokens: Any = None,
            budget: float | None = None) -> np.ndarray:
    omega, b, z = (np.asarray(a, np.float64) for a in self.disc)
    x_c = x
    if x is not None and len(self.features):
      x_c = np.clip(self._x(x), *(np.asarray(a, np.float64) for a in self._read_bounds()))
    member_draws = [m.draws(w, x_c, tokens=tokens, budget=budget)[:self._n]
                    for m in self.members]
    raw = None
    if len(self.hedge_S) and x is not None and len(self.features):
      raw = [m.draws(w, x, tokens=tokens, budget=budget)[:self._n] for m in self.members]
    return (_combine(member_draws, self.weights, self.scale,
                     np.asarray(self.level_S[:self._n], np.float64), raw,
                     np.asarray(self.hedge_S[:self._n], np.float64))
            + discrepancy.draws(omega, b, z[:self._n], self._w(w), np.cos))

  def save(self, directory: str | pathlib.Path) -> pathlib.Path:
    directory = pathlib.Path(directory)
    self.save_companion(directory)
    names = []
    for i, m in enumerate(self.members):
      names.append(f"member_{i}")
      m.save(directory / names[-1])
    artifacts.write_npz(directory / "posterior.npz", level_S=self.level_S,
                        disc_omega_MxD=self.disc[0], disc_b_M=self.disc[1],
                        disc_z_SxM=self.disc[2], x_lo_F=self.x_bounds[0],
                        x_hi_F=self.x_bounds[1], hedge_S=self.hedge_S)
    return artifacts.write_json(directory / "surface.json", {
        **self.saved_meta("stack"), "members": names, "weights": self.weights.tolist(),
        "scale": self.scale, "optimiser_scale": self.optimiser_scale,
        "report_scale": self.report_scale,
        "decision_disc_ratio": self.decision_disc_ratio,
        "clip_decisions_only": self.clip_decisions_only})

  def __repr__(self) -> str:
    kinds = [m.info.get("method", "?") for m in self.members]
    return (f"StackedSurface(outcome={self.outcome!r}, members={kinds}, "
            f"weights={np.round(self.weights, 3).tolist()}, scale={self.scale:.2f})")


def _combine(draws_K: Sequence[Any], weights_K: Any, scale: Any, level_S: Any,
             raw_K: Sequence[Any] | None = None, hedge_S: Any = None) -> Any:
  """sum_k a_k [m_k + c (f_k - m_k)] + level, S x N; NumPy or jax.numpy arrays alike.

  With `raw_K` (the members' draws at the raw covariates, `draws_K` being those at the
  clipped ones), the spread f_k - m_k is raw_k's, and h_s times the gap between the
  stacked means of raw_K and draws_K is added: the mean stops at the sweep's range
  while the intervals keep widening as if the covariates' trends went on."""
  out = level_S[:, None]
  for k, (d, a) in enumerate(zip(draws_K, weights_K)):
    m = d.mean(0, keepdims=True)
    spread = d if raw_K is None else raw_K[k]
    out = out + a * (m + scale * (spread - spread.mean(0, keepdims=True)))
    if raw_K is not None:
      out = out + a * hedge_S[:, None] * (raw_K[k].mean(0, keepdims=True) - m)
  return out


def load(directory: pathlib.Path, meta: dict[str, Any]) -> SurfaceBase:
  """Reads a scaling, tree or stacked surface written by `save` (see `load_surface`)."""
  if meta["kind"] == "trees":
    return trees.load(directory, meta)
  from causalmix_jax.surface.surface import load_surface
  kw = SurfaceBase.saved_kwargs(meta)
  if meta["kind"] == "scaling":
    # Surfaces saved before the Box-Cox form carry no `form` (they are bare powers) and
    # no `predictive` (their draws are pushed through the model).
    spec = {"form": "power", "predictive": "sampled", **meta["spec"]}
    try:
      spec = scaling.ScalingSpec(**spec)
    except (TypeError, ValueError) as e:
      raise ValueError(f"{directory / 'surface.json'}: bad 'spec': {e}") from e
    return ScalingSurface(spec,
                          scaling.load_params(directory), **kw)
  members = [load_surface(directory / n) for n in meta["members"]]
  path = directory / "posterior.npz"
  if not path.exists():
    raise FileNotFoundError(f"surface posterior not found: {path}")
  with np.load(path) as z:
    level = z["level_S"]
    # Surfaces saved before the discrepancy term have none.
    disc = ((z["disc_omega_MxD"], z["disc_b_M"], z["disc_z_SxM"])
            if "disc_z_SxM" in z.files else None)
    # ... and their members extrapolate the covariates as they are.
    bounds = (z["x_lo_F"], z["x_hi_F"]) if "x_lo_F" in z.files else None
    hedge = z["hedge_S"] if "hedge_S" in z.files else None
  # Surfaces saved before the decisions had their own factor decide on `scale`; those
  # saved before "clip_decisions" clip for every reader or for none; those saved before
  # the reports had their own factor report with the decisions'.
  return StackedSurface(members, meta["weights"], meta["scale"], level, disc, bounds,
                        hedge, meta.get("optimiser_scale"),
                        clip_decisions_only=bool(meta.get("clip_decisions_only", False)),
                        report_scale=meta.get("report_scale"),
                        decision_disc_ratio=float(meta.get("decision_disc_ratio", 1.0)),
                        **kw)


# -- data ---------------------------------------------------------------------------

@dataclasses.dataclass
class _Data:
  name: str
  rows: np.ndarray  # indices of usable runs in the table
  w: np.ndarray
  x: np.ndarray
  y: np.ndarray
  tokens: np.ndarray | None
  budget: np.ndarray | None
  groups: np.ndarray  # (pool state, scale) of every row: what a held-out fold holds
  pools: np.ndarray  # distinct (covariates, tokens, budget) rows: what one query sees
  scale: np.ndarray  # log10 of the scale columns that vary (params, budget), N x 0-2

  @property
  def n_scales(self) -> int:
    """Distinct (params, budget_tokens) pairs among the rows."""
    return len(np.unique(self.scale, axis=0)) if self.scale.shape[1] else 1


def _data(runs, outcome: str, min_runs: int) -> _Data:
  from causalmix_jax.surface import fit as fit_lib
  name, keep, y_all = fit_lib.usable_runs(runs, outcome)
  rows = np.flatnonzero(keep)
  if len(rows) < min_runs:
    raise ValueError(f"{runs.source}: outcome y_{name} has {len(rows)} usable runs; the "
                     f"surface needs at least {min_runs}")
  w = runs.W[rows]
  w = w / w.sum(1, keepdims=True)
  x = runs.X[rows]
  tokens = runs.tokens[rows] if runs.tokens is not None else None
  budget = runs.budget[rows] if runs.budget is not None else None
  if tokens is None or budget is None:
    tokens = budget = None
  cols = nuis.varying_columns(x)
  scale = runs.scales()[rows]
  state = np.round(x[:, cols], 9)
  _, groups = np.unique(np.concatenate([state, scale], axis=1), axis=0,
                        return_inverse=True)
  if runs.params is not None and len(np.unique(runs.params[rows])) > 1:
    # Does any covariate tell the model sizes apart? If a pool state holds several
    # sizes, the surface sees them as one pool and pools their outcomes.
    _, by_state = np.unique(state, axis=0, return_inverse=True)
    sizes = runs.params[rows]
    mixed = [g for g in np.unique(by_state)
             if len(np.unique(sizes[np.asarray(by_state).reshape(-1) == g])) > 1]
    if mixed:
      log.warning(
          "%s: y_%s spans %d model sizes (the params column), and no covariate tells "
          "them apart (%d of %d pool states hold several sizes): the surface pools the "
          "sizes. Held-out folds and contrasts keep each size apart; to predict per "
          "size, add a covariate such as x_log_params, or fit one size at a time",
          runs.source, name, len(np.unique(sizes)), len(mixed), len(np.unique(by_state)))
  key = [x] + ([tokens, budget[:, None]] if tokens is not None else [])
  _, pools = np.unique(np.round(np.concatenate(key, axis=1), 6), axis=0,
                       return_inverse=True)
  return _Data(name, rows, w, x, y_all[rows], tokens, budget,
               np.asarray(groups).reshape(-1), np.asarray(pools).reshape(-1), scale)


def _folds(data: _Data, n_folds: int, seed: int) -> tuple[np.ndarray, str]:
  """Fold of every row: by pool state when there are enough states, else by row."""
  uniq = np.unique(data.groups)
  if len(uniq) >= MIN_GROUPS:
    k = min(n_folds, len(uniq))
    f_g = nuis.fold_ids(len(uniq), k, seed)
    by = "pool states x scales" if data.n_scales > 1 else "pool states"
    return f_g[np.searchsorted(uniq, data.groups)], by
  return nuis.fold_ids(len(data.y), n_folds, seed), "runs"


def _member_draws(surface: SurfaceBase, data: _Data, rows: np.ndarray, n: int
                  ) -> np.ndarray:
  """Draws (n x len(rows)) of a surface at the given rows, one query per pool."""
  out = np.empty((n, len(rows)))
  for p in np.unique(data.pools[rows]):
    sel = rows[data.pools[rows] == p]
    i = sel[0]
    kw = {}
    if data.tokens is not None:
      kw = {"tokens": data.tokens[i], "budget": float(data.budget[i])}
    out[:, np.isin(rows, sel)] = surface.draws(data.w[sel], data.x[i], **kw)[:n]
  return out


# -- members ------------------------------------------------------------------------

def fit_scaling(runs, outcome: str, config=None, *, covariate_blind: bool = False,
                _masks: np.ndarray | None = None, form: str = "boxcox"):
  """Fits the scaling-law family (`scaling.py`; `form` "boxcox": per-domain power laws,
  "transfer": one power law in the domains' pooled effective data). With `_masks` (M x
  N over the usable runs) also returns the draws of the fit on each mask (for
  cross-validation)."""
  from causalmix_jax.surface import fit as fit_lib
  cfg = fit_lib.default_config() if config is None else config
  t0 = time.time()
  data = _data(runs, outcome, max(10, int(cfg.n_folds)))
  xb = fit_lib.covariate_basis(np.zeros((len(data.y), 0)) if covariate_blind else data.x,
                               int(cfg.max_x_components))
  s = xb.scores(data.x) if xb.k else np.zeros((len(data.y), 0))
  y_mu, y_sd = float(data.y.mean()), float(data.y.std()) or 1.0
  u = None if data.tokens is None else data.tokens / data.budget[:, None]
  masks = np.ones((1, len(data.y)), bool)
  if _masks is not None:
    masks = np.concatenate([np.asarray(_masks, bool), masks], axis=0)
  maps, draws, optimiser = scaling.fit_draws(data.w, u, s, (data.y - y_mu) / y_sd, masks,
                                             int(cfg.num_samples), int(cfg.seed), form)
  spec = scaling.ScalingSpec(data.w.shape[1], xb.k, u is not None, form=form)
  tokens_med = None if u is None else np.median(data.tokens, axis=0)
  budget_med = None if u is None else float(np.median(data.budget))
  sigma = float(np.exp(scaling.unflatten(spec, maps[-1])["log_sigma"]) * y_sd)
  info = {"method": "transfer" if form == "transfer" else "scaling",
          "inference": "laplace", "n_runs": int(len(data.y)),
          "noise_sd": sigma,
          "covariates": {"components": xb.k, "pool_states": xb.n_states},
          "map": optimiser, "fit_seconds": time.time() - t0}
  surf = ScalingSurface(spec, scaling.base_params(xb, y_mu, y_sd, tokens_med, budget_med,
                                                  draws[-1], maps[-1]),
                        domains=runs.domains, features=runs.features, outcome=data.name,
                        maximize=data.name in runs.maximize,
                        support_stats=fit_lib._support_stats(
                            data.x, data.w, xb, data.y, data.name in runs.maximize,
                            tokens=data.tokens, budget=data.budget),
                        info=info)
  if _masks is None:
    return surf
  return surf, [scaling.base_params(xb, y_mu, y_sd, tokens_med, budget_med, d, m)
                for d, m in zip(draws[:-1], maps[:-1])]


def _fold_config(cfg, surface):
  """The member's config for fold refits: the hyperparameters its full fit chose, no
  pool calibration (the stack calibrates), so each fold is one posterior."""
  c = cfg.copy_and_resolve_references()
  with c.unlocked():
    chosen = surface.info.get("chosen", {})
    if "floor" in chosen:
      c.floors = (float(chosen["floor"]),)
      c.pairs = "always" if "pairs" in chosen.get("kinds", ()) else "never"
      c.modifiers = (chosen.get("modifiers", "linear"),)
    c.calibrate_pools = False
    c.inference = "exact"
  return c


def _linear_member(runs, outcome, method, cfg, covariate_blind, data, folds,
                   extra_kind: str | None = None):
  """Full fit and held-out draws of a `fit.py` family, with `extra_kind` (a feature
  kind) added to the configured or default feature kinds when given."""
  from causalmix_jax.surface import fit as fit_lib
  c = cfg.copy_and_resolve_references()
  with c.unlocked():
    c.calibrate_pools = False
    c.modifiers = tuple(cfg.stack_modifiers)
    if extra_kind is not None:
      # Repetition is dropped by the fit where tokens or budget are unknown.
      kinds = tuple(cfg.feature_kinds) or features_lib.default_kinds(True)
      c.feature_kinds = kinds + ((extra_kind,) if extra_kind not in kinds else ())
  full = fit_lib._fit_surface(runs, outcome, method, c, covariate_blind)
  fc = _fold_config(c, full)
  n = int(cfg.num_samples)
  oof = np.empty((n, len(data.y)))
  # Each fold holds most of the runs: its evidence search starts at the full fit's.
  start = (full.info["prior_precision"], full.info["noise_precision"])
  for k in range(int(folds.max()) + 1):
    te = np.flatnonzero(folds == k)
    model = fit_lib._fit_surface(runs.select(data.rows[folds != k]), outcome, method, fc,
                                 covariate_blind, support_held_out=False, start=start)
    oof[:, te] = _member_draws(model, data, te, n)
  return full, oof


def _scaling_member(runs, outcome, cfg, covariate_blind, data, folds, form="boxcox"):
  masks = np.stack([folds != k for k in range(int(folds.max()) + 1)])
  full, fold_params = fit_scaling(runs, outcome, cfg, covariate_blind=covariate_blind,
                                  _masks=masks, form=form)
  n = full.n_draws
  oof = np.empty((n, len(data.y)))
  for k, params in enumerate(fold_params):
    te = np.flatnonzero(folds == k)
    fold_surface = ScalingSurface(full.spec, params, domains=full.domains,
                                  features=full.features, outcome=full.outcome,
                                  maximize=full.maximize, support_stats=full.support_stats)
    oof[:, te] = _member_draws(fold_surface, data, te, n)
  return full, oof


def _tree_member(runs, cfg, covariate_blind, data, folds):
  """Full fit and held-out point predictions (repeated as draws) of the trees; the
  full fit's noise sd is its held-out residuals' (in-sample residuals of boosted trees
  are near zero)."""
  from causalmix_jax.surface import fit as fit_lib
  n, seed = int(cfg.num_samples), int(cfg.seed)
  xb = fit_lib.covariate_basis(np.zeros((len(data.y), 0)) if covariate_blind else data.x,
                               int(cfg.max_x_components))
  maximize = data.name in runs.maximize
  kw = dict(domains=runs.domains, features=runs.features, outcome=data.name,
            maximize=maximize)
  oof_N = np.empty(len(data.y))
  for k in range(int(folds.max()) + 1):
    tr, te = folds != k, folds == k
    fold = trees.fit_trees(data.w[tr], data.x[tr], data.y[tr], n=1,
                           blind=covariate_blind, seed=seed, support_stats={}, **kw)
    oof_N[te] = fold.point_rows(data.w[te], data.x[te])
  support = fit_lib._support_stats(data.x, data.w, xb, data.y, maximize,
                                   tokens=data.tokens, budget=data.budget)
  full = trees.fit_trees(data.w, data.x, data.y, n=n, blind=covariate_blind, seed=seed,
                         support_stats=support,
                         info={"noise_sd": float(np.std(data.y - oof_N))}, **kw)
  return full, np.broadcast_to(oof_N[None, :], (n, len(oof_N))).copy()


# -- stacking and calibration ---------------------------------------------------------

def _cells(folds: np.ndarray, groups: np.ndarray) -> np.ndarray:
  """Dense id of each row's held-out (fold, pool state) cell."""
  _, inv = np.unique(folds * (int(groups.max()) + 1) + groups, return_inverse=True)
  return np.asarray(inv).reshape(-1)


def _contrast_cells(data: _Data, folds: np.ndarray) -> tuple[np.ndarray, str]:
  """The cells within which held-out contrasts are taken, and what they are: the held-out
  (fold, pool state) cells when most runs share their pool state with a different
  mixture; otherwise (e.g. one mixture per pool state, where a pool's runs are only
  seed replicates) the held-out folds, so contrasts compare different mixtures, across
  the fold's pool states."""
  cells = _cells(folds, data.groups)
  _, mix = np.unique(np.round(data.w, 9), axis=0, return_inverse=True)
  mix = np.asarray(mix).reshape(-1)
  distinct = np.array([len(np.unique(mix[cells == c])) for c in range(cells.max() + 1)])
  if np.mean(distinct[cells] > 1) >= 0.5:
    return cells, "pool states"
  _, fold_cells = np.unique(folds, return_inverse=True)
  return np.asarray(fold_cells).reshape(-1), "folds"


def _cell_means(v_NxM: np.ndarray, cells_N: np.ndarray) -> np.ndarray:
  """Mean of each column of v within each cell, n_cells x M."""
  out = np.zeros((int(cells_N.max()) + 1, v_NxM.shape[1]))
  np.add.at(out, cells_N, v_NxM)
  return out / np.bincount(cells_N)[:, None]


def _centre(v_N: np.ndarray, cells_N: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """v minus its mean within each cell (contrasts), and each row's cell size."""
  counts = np.bincount(cells_N)
  means = np.bincount(cells_N, weights=v_N) / counts
  return v_N - means[cells_N], counts[cells_N]


def cell_pairs(cells_N: np.ndarray, max_pairs: int, seed: int,
               apart_N: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Every pair (i < j) of rows in the same cell, as two index arrays; a uniform sample
  of `max_pairs` of them (seeded) when there are more. With `apart_N` (a group id per
  row, e.g. replicate groups), pairs within one group are left out before the sample,
  so a sweep with more pairs than the cap still scores `max_pairs` of the others."""
  order = np.argsort(cells_N, kind="stable")
  bounds = np.flatnonzero(np.diff(cells_N[order])) + 1
  firsts, seconds = [], []
  for rows in np.split(order, bounds):
    if len(rows) < 2:
      continue
    a, b = np.triu_indices(len(rows), 1)
    firsts.append(rows[a])
    seconds.append(rows[b])
  if not firsts:
    return np.zeros(0, np.int64), np.zeros(0, np.int64)
  i, j = np.concatenate(firsts), np.concatenate(seconds)
  if apart_N is not None:
    other = apart_N[i] != apart_N[j]
    i, j = i[other], j[other]
  if len(i) > max_pairs:
    keep = np.sort(np.random.default_rng([seed, 23]).choice(len(i), max_pairs,
                                                            replace=False))
    i, j = i[keep], j[keep]
  return i, j


def better_half(y_N: np.ndarray, cells_N: np.ndarray, maximize: bool) -> np.ndarray:
  """Mask of the runs at or past their cell's median outcome on the better side (below
  it when the outcome is minimised), in cells of two runs or more: the held-out
  contrasts of the mixtures a decision would move toward."""
  v = -y_N if maximize else y_N
  counts = np.bincount(cells_N)
  med = np.array([np.median(v[cells_N == c]) if counts[c] else 0.0
                  for c in range(len(counts))])
  return (v <= med[cells_N]) & (counts[cells_N] > 1)


def stack_weights(contrasts_KxN: np.ndarray, target_N: np.ndarray) -> np.ndarray:
  """Weights on the simplex minimising || target - sum_k a_k contrasts_k ||^2."""
  k = contrasts_KxN.shape[0]
  if k == 1:
    return np.ones(1)
  g = contrasts_KxN @ contrasts_KxN.T
  b = contrasts_KxN @ target_N
  scale = max(float(np.trace(g)) / k, 1e-300)
  res = scipy.optimize.minimize(
      lambda a: (a @ g @ a - 2 * a @ b) / scale, np.full(k, 1.0 / k),
      jac=lambda a: (2 * g @ a - 2 * b) / scale, method="SLSQP",
      bounds=[(0.0, 1.0)] * k,
      constraints=[{"type": "eq", "fun": lambda a: a.sum() - 1.0}])
  a = np.clip(res.x, 0.0, None)
  a[a < 1e-3] = 0.0
  return a / a.sum()


def _normalised_errors(err2_N: np.ndarray, var_N: np.ndarray,
                       noise_N: np.ndarray | None = None) -> np.ndarray:
  """Held-out squared errors less the known run noise (floored at 0), over their
  posterior variance."""
  r = err2_N - (0.0 if noise_N is None else noise_N)
  return np.maximum(r, 0.0) / np.maximum(var_N, 1e-30)


def conformal_scale(err2_N: np.ndarray, var_N: np.ndarray, level: float,
                    noise_N: np.ndarray | None = None) -> float:
  """Scale of the posterior spread so that the split-conformal `level` quantile of the
  held-out errors, normalised by their posterior sd (after taking out known run
  noise), sits on the edge of the central `level` interval."""
  return _conformal_scale(_normalised_errors(err2_N, var_N, noise_N), level)


def _conformal_scale(r_N: np.ndarray, level: float) -> float:
  """conformal_scale of normalised errors r (`_normalised_errors`)."""
  n = len(r_N)
  q = min(1.0, np.ceil((n + 1) * level) / n)
  return float(np.sqrt(np.quantile(r_N, q, method="higher")) / central_z(level))


def pooled_level(level: float, n_units: int) -> float:
  """The quantile of the unit-pooled error distribution that covers `level` of a new
  unit's errors, given `n_units` exchangeable calibration units (hierarchical
  split-conformal: each unit carries mass 1 / (n_units + 1), the new one included);
  above 1 (fewer than level / (1 - level) units, 9 at 90%) no finite quantile does."""
  return level * (n_units + 1) / n_units


def min_pool_states(level: float) -> int:
  """The fewest units whose `pooled_level` is at most 1: a finite split-conformal bound
  for a new pool at `level` (9 at 90%)."""
  return int(np.ceil(level / (1.0 - level) - 1e-9))


def grouped_conformal_scale(r_N: np.ndarray, units_N: np.ndarray,
                            level: float) -> tuple[float, dict[str, Any]]:
  """conformal_scale with pool states, not contrasts, as the exchangeable units
  (`surface.conformal_units = "pools"`): every unit's contrasts share its weight
  equally, and the weighted `pooled_level` quantile of the normalised errors sets the
  scale, so a sweep whose misfit sits on a few pool states, or that has few of them,
  is not taken for thousands of independent contrasts. With fewer units than the
  level needs, the largest error sets the scale and the info says so."""
  r_N = np.asarray(r_N, np.float64)
  _, units = np.unique(np.asarray(units_N).reshape(-1), return_inverse=True)
  n_units = int(units.max()) + 1
  q = pooled_level(level, n_units)
  weights_N = 1.0 / np.bincount(units)[units]  # each unit's contrasts share its weight
  bound = np.quantile(r_N, min(q, 1.0), weights=weights_N, method="inverted_cdf")
  info = {"units": n_units, "quantile": float(q)}
  need = min_pool_states(level)
  if n_units < need:
    info["reason"] = (f"{n_units} pool states; a {level:.0%} bound for a new pool "
                      f"needs {need}, so the largest held-out error sets the scale")
  return float(np.sqrt(bound) / central_z(level)), info


def size_bins(size_N: np.ndarray, bins: int = 4) -> list[np.ndarray]:
  """Masks of `bins` quantile bins of `size_N`, smallest first (empty bins, from tied
  sizes, left out); one bin when that would leave fewer than MIN_BIN_CONTRASTS per bin."""
  size_N = np.asarray(size_N, np.float64)
  if len(size_N) < MIN_BIN_CONTRASTS * bins:
    bins = 1
  edges = np.quantile(size_N, np.linspace(0.0, 1.0, bins + 1))
  idx = np.clip(np.searchsorted(edges, size_N, side="right") - 1, 0, bins - 1)
  return [m for m in (idx == b for b in range(bins)) if m.any()]


def coverage_by_size(size_N: np.ndarray, r_N: np.ndarray, scale: float, level: float,
                     bins: int = 4) -> list[dict[str, float]]:
  """Held-out calibration split by contrast size: per quantile bin of `size_N` (the
  L1 distance between a contrast's two mixtures), its lower and upper size, count,
  coverage at the fitted conformal `scale`, and the factor of `scale` the bin alone
  would need (above 1: its contrasts' errors are large for their spread). One factor
  per fit fits the average; bins far from 1 say the spread's shape over contrast sizes
  is off. With fewer than MIN_BIN_CONTRASTS contrasts per bin: one bin."""
  size_N = np.asarray(size_N, np.float64)
  r_N = np.asarray(r_N, np.float64)
  bound = (central_z(level) * scale) ** 2
  out = []
  for m in size_bins(size_N, bins):
    out.append({"size_lo": float(size_N[m].min()), "size_hi": float(size_N[m].max()),
                "contrasts": int(m.sum()),
                "coverage": float(np.mean(r_N[m] <= bound)),
                "factor": float(_conformal_scale(r_N[m], level) / max(scale, 1e-30))})
  return out


def member_set(name: str) -> tuple[str, str]:
  """(family, covariate set) of a stack member's name: "dml_blind" -> ("dml",
  "blind"), "scaling_all" -> ("scaling", "all"), "dml" -> ("dml", "aware")."""
  for kind, suffix in COVARIATE_SETS.items():
    if suffix and name.endswith(suffix):
      return name.removesuffix(suffix), kind
  return name, "aware"


def all_components(cfg, data: _Data) -> int:
  """The component cap of an "all" member: every component the pool states span."""
  return max(int(cfg.max_x_components), data.x.shape[1])


def _member_names(requested: tuple[str, ...], covariate_blind: bool, data: _Data,
                  copies: tuple[str, ...] = (), capped_k: int = 0, all_k: int = 0
                  ) -> list[str]:
  """The members to fit, in the config's order (names checked by fit.check_config),
  each followed by its copies on the covariate sets `copies` ("blind", "all"). A copy
  is left out where it would repeat its family: a blind one where the stack itself is
  covariate-blind or no covariate varies across the sweep; an "all" one there too, or
  where the cap already keeps every component (`capped_k` == `all_k`)."""
  requested = tuple(n for name in requested
                    for n in (name, *(name + COVARIATE_SETS[c] for c in copies)))
  names = []
  varies = len(nuis.varying_columns(data.x)) > 0
  for name in requested:
    family, kind = member_set(name)
    if kind != "aware" and (covariate_blind or not varies
                            or (kind == "all" and capped_k >= all_k)):
      why = ("the stack is covariate-blind" if covariate_blind else
             "no covariate varies" if not varies else
             f"the cap keeps all {all_k} components")
      if family in requested:
        (log.debug if copies else log.info)(
            "stack member %s left out: %s, so it is %s", name, why, family)
        continue
      log.info("stack member %s fitted as %s: %s", name, family, why)
    names.append(name)
  return names


def select_covariates(contrasts_KxN: np.ndarray, target_N: np.ndarray,
                      sets_K: np.ndarray, units_N: np.ndarray
                      ) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
  """Which covariate set the stack keeps (`surface.stack_covariates = "select"` or
  "select_all"): its covariate-aware members, their blind copies or their copies on all
  the components (`sets_K`, each member's set: "aware", "blind" or "all"; a bool array
  is read as blind or not). Returns (the choice and its figures, the mask of kept
  members over K, the kept set's stacking weights).

  Each set is stacked on its own (`stack_weights`) and its held-out contrast errors are
  summed per unit (a pool state, or a row where states are not repeated). Another set
  replaces the aware one only when its mean per-unit squared error is lower by more
  than one standard error of the paired per-unit difference (of those that are, the
  lowest): the default's effects are kept unless held-out pools say plainly that
  another set predicts them better. "unit_diff_mean" / "unit_diff_se" in the figures
  are the blind set's difference; "all_diff_mean" / "all_diff_se" the all set's."""
  sets_K = np.asarray(sets_K)
  if sets_K.dtype == bool:
    sets_K = np.where(sets_K, "blind", "aware")
  units = np.asarray(units_N).reshape(-1)
  _, units = np.unique(units, return_inverse=True)
  n_units = int(units.max()) + 1
  kinds = [k for k in COVARIATE_SETS if np.any(sets_K == k)]
  if "aware" not in kinds:
    raise ValueError(f"select_covariates: no covariate-aware member among {kinds}")
  err, weights = {}, {}
  for kind in kinds:
    c_KxN = contrasts_KxN[sets_K == kind]
    weights[kind] = stack_weights(c_KxN, target_N)
    err[kind] = np.bincount(units, weights=(target_N - weights[kind] @ c_KxN) ** 2,
                            minlength=n_units)
  info: dict[str, Any] = {"setting": "select", "chosen": "aware", "units": n_units}
  better = {}
  for kind in kinds:
    info[f"{kind}_mse"] = float(err[kind].sum() / len(target_N))
    if kind == "aware":
      continue
    d_U = err["aware"] - err[kind]  # positive: this set did better
    se = float(d_U.std(ddof=1) / np.sqrt(n_units)) if n_units > 1 else np.inf
    prefix = DIFF_PREFIX[kind]
    info[f"{prefix}_diff_mean"], info[f"{prefix}_diff_se"] = float(d_U.mean()), se
    if float(d_U.mean()) > se:
      better[kind] = info[f"{kind}_mse"]
  if better:
    info["chosen"] = min(better, key=better.get)
  return info, sets_K == info["chosen"], weights[info["chosen"]]


def fit_stack(runs, outcome: str, config=None, *, covariate_blind: bool = False):
  """Fits every member family, stacks them by held-out contrasts and calibrates the
  intervals by split-conformal on the same held-out pools (see the module docstring)."""
  from causalmix_jax.surface import fit as fit_lib
  cfg = (fit_lib.default_config() if config is None else config
         ).copy_and_resolve_references()
  with cfg.unlocked():
    cfg.num_samples = min(int(cfg.num_samples), int(cfg.stack_draws))
  t0 = time.time()
  seed = int(cfg.seed)
  data = _data(runs, outcome, max(10, int(cfg.n_folds)))
  if len(data.y) < MIN_STACK_RUNS:
    # Too few runs to refit every family on held-out folds: the DML surface alone,
    # with its own leave-pools-out calibration, says so in its info.
    log.warning("surface: %d usable runs of y_%s; stacking needs %d, so the DML "
                "surface is fitted alone", len(data.y), data.name, MIN_STACK_RUNS)
    surface = fit_lib._fit_surface(runs, outcome, "dml", cfg, covariate_blind)
    surface.info["stack"] = (f"skipped: {len(data.y)} runs, stacking needs "
                             f"{MIN_STACK_RUNS}")
    return surface
  folds, fold_by = _folds(data, int(cfg.n_folds), seed)
  members, oofs, names, secs = [], [], [], {}
  setting = fit_lib.stack_covariates(cfg)
  copies = SELECTION_COPIES.get(setting, ())
  cfg_all, capped_k, all_k = cfg, 0, 0  # the "all" members' config and basis sizes
  if "all" in copies or any(member_set(m)[1] == "all" for m in cfg.stack_members):
    cfg_all = cfg.copy_and_resolve_references()
    with cfg_all.unlocked():
      cfg_all.max_x_components = all_components(cfg, data)
    capped_k, all_k = (fit_lib.covariate_basis(data.x, int(c.max_x_components)).k
                       for c in (cfg, cfg_all))
  for name in _member_names(tuple(cfg.stack_members), covariate_blind, data, copies,
                            capped_k, all_k):
    t1 = time.time()
    family, kind = member_set(name)
    blind = covariate_blind or kind == "blind"
    member_cfg = cfg_all if kind == "all" else cfg
    if family in SCALING_FORMS:
      full, oof = _scaling_member(runs, outcome, member_cfg, blind, data, folds,
                                  SCALING_FORMS[family])
    elif family == "trees":
      full, oof = _tree_member(runs, member_cfg, blind, data, folds)
    elif family in DML_FORMS:
      full, oof = _linear_member(runs, outcome, "dml", member_cfg, blind, data, folds,
                                 DML_FORMS[family])
    else:
      full, oof = _linear_member(runs, outcome, family, member_cfg, blind, data, folds)
    secs[name] = time.time() - t1
    if not np.all(np.isfinite(oof)):
      log.warning("stack member %s: non-finite held-out predictions; left out", name)
      continue
    log.info("stack member %s: %.2fs", name, secs[name])
    members.append(full)
    oofs.append(oof)
    names.append(name)
  if not members:
    raise ValueError(f"{runs.source}: no surface family gave finite held-out "
                     f"predictions of y_{data.name} (tried {list(cfg.stack_members)})")
  n = min(o.shape[0] for o in oofs)
  oofs = [o[:n] for o in oofs]
  cells, contrasts_within = _contrast_cells(data, folds)
  yc, cell_n = _centre(data.y, cells)
  contrasts = np.stack([_centre(o.mean(0), cells)[0] for o in oofs])
  sets_K = np.array([member_set(nm)[1] for nm in names])
  # The support is the covariate-aware DML member's where there is one, kept or not (a
  # blind member's support sees no covariates, and a pool's distance is still asked).
  support = next((m.support_stats for m, k in zip(members, sets_K)
                  if m.info.get("method") == "dml" and k == "aware"),
                 members[0].support_stats)
  covariates = {"setting": setting, "chosen": "aware"}
  # The contrasts that choose the weights and the covariate set (`surface.stack_focus`).
  focus_setting = fit_lib.stack_focus(cfg)
  focus = (better_half(data.y, cells, data.name in runs.maximize)
           if focus_setting == "top" else np.ones(len(data.y), bool))
  if focus.sum() < 2:  # nothing to weigh on: every run's contrasts
    focus = np.ones(len(data.y), bool)
  focus_info = {"setting": focus_setting, "runs": int(focus.sum())}
  weights = None  # the stacking weights, when the selection already fitted them
  if copies and (sets_K == "aware").any() and (sets_K != "aware").any():
    covariates, keep_K, weights = select_covariates(
        contrasts[:, focus], yc[focus], sets_K, data.groups[focus])
    covariates["setting"] = setting
    log.info("surface stack on y_%s: the %s members kept (held-out contrast mse %s; "
             "per-unit difference to aware %s over %d units)", data.name,
             covariates["chosen"],
             ", ".join(f"{k} {covariates[k + '_mse']:.4g}" for k in COVARIATE_SETS
                       if k + "_mse" in covariates),
             ", ".join(f"{k} {covariates[p + '_diff_mean']:.3g} +- "
                       f"{covariates[p + '_diff_se']:.3g}"
                       for k, p in DIFF_PREFIX.items()
                       if p + "_diff_mean" in covariates), covariates["units"])
    members = [m for m, k in zip(members, keep_K) if k]
    oofs = [o for o, k in zip(oofs, keep_K) if k]
    names = [nm for nm, k in zip(names, keep_K) if k]
    contrasts = contrasts[keep_K]
  if weights is None:
    weights = stack_weights(contrasts[:, focus], yc[focus])
  keep = weights > 0
  stacked = sum(a * o for a, o in zip(weights, oofs))  # S x N held-out draws
  mean = stacked.mean(0)
  held_dev = stacked - mean
  # The final fit's spread at the same runs (`surface.conformal_spread`): the spread
  # the conformal factor will scale, narrower than the fold fits' where more runs
  # shrink it.
  final = sum(a * _member_draws(m, data, np.arange(len(data.y)), n)
              for a, m in zip(weights, members) if a > 0)
  final_dev = final - final.mean(0)
  spread_setting = fit_lib.conformal_spread(cfg)
  # What the decisions read (recommend's draws, the level shift and the held-out guard):
  # the fold fits' calibration unless the setting is "final"; "split" gives the
  # intervals the final fit's calibration and leaves the decisions on the fold fits'.
  dev = final_dev if spread_setting == "final" else held_dev
  c_mean = _centre(mean, cells)[0]
  ok = cell_n > 1
  # Replicates share mixture, covariates and scale.
  key = np.concatenate([data.w, data.x, data.scale], 1)
  pure_var, pe_dof = fit_lib.pure_error(data.y, key)
  level = float(cfg.interval_level)
  pi = pj = np.zeros(0, np.int64)
  n_replicate_pairs = 0
  if fit_lib.stack_calibration(cfg) == "pairs":
    apart = None
    if fit_lib.replicate_pairs(cfg) == "drop":
      # A pair of replicate runs is no effect of one mixture against another: every
      # member predicts it exactly (no spread), so once the run noise is taken out its
      # normalised error is 0 or unbounded, a coin toss that moves the quantile. They
      # leave before the sample, so the cap counts effects only.
      apart = conjugate.replicate_groups(key)  # the pure error's groups
      _, per_group = np.unique(np.stack([cells, apart]), axis=1, return_counts=True)
      n_replicate_pairs = int(np.sum(per_group * (per_group - 1) // 2))
    pi, pj = cell_pairs(cells, MAX_PAIRS, seed, apart)
  if len(pi):
    # An effect is one mixture against another in one pool: its error carries both
    # mixtures' misfit in full. The difference of two held-out runs of a cell is that
    # query; a run against its cell's mean would average the second one's away.
    err2 = ((data.y[pi] - data.y[pj]) - (mean[pi] - mean[pj])) ** 2

    def pair_var(dev_SxN):  # each pair's contrast variance under the draws
      dev_NxS = np.ascontiguousarray(dev_SxN.T)
      diff_PxS = dev_NxS[pi] - dev_NxS[pj]
      return (np.einsum("ps,ps->p", diff_PxS, diff_PxS) / dev_SxN.shape[0]
              - diff_PxS.mean(1) ** 2)
    var_held, var_final = pair_var(held_dev), pair_var(final_dev)
    noise = np.full(len(pi), 2.0 * pure_var) if pe_dof > 0 else None
    size = np.abs(data.w[pi] - data.w[pj]).sum(1)
    unit = data.groups[pi]  # the held-out pool state each contrast comes from

    def disc_var(feats):  # the unit discrepancy's variance of each pair's contrast
      phi = feats(data.w)
      return np.sum((phi[pi] - phi[pj]) ** 2, axis=1)
  else:  # "cell_means", or no cell holds two runs: each run against its cell's mean
    err2 = (yc - c_mean)[ok] ** 2

    def cell_var(dev_SxN):  # each run's variance against its cell's mean, under the draws
      return np.var(np.stack([_centre(d, cells)[0] for d in dev_SxN]), axis=0)[ok]
    var_held, var_final = cell_var(held_dev), cell_var(final_dev)
    noise = ((1.0 - 1.0 / cell_n) * pure_var)[ok] if pe_dof > 0 else None
    size = np.abs(data.w - _cell_means(data.w, cells)[cells]).sum(1)[ok]
    unit = data.groups[ok]

    def disc_var(feats):
      phi = feats(data.w)
      return np.sum((phi - _cell_means(phi, cells)[cells])[ok] ** 2, axis=1)
  var = var_held if spread_setting == "heldout" else var_final
  disc_setting = fit_lib.stack_discrepancy(cfg)
  if disc_setting == "rff":
    split = discrepancy.fit(err2, var, noise, disc_var, data.w, seed)
  else:
    split = discrepancy.Fit(1.0)
  # One conformal factor on the fitted variance a v + b g: the members' spread gets
  # c sqrt(a), the discrepancy's amplitude c sqrt(b).
  var_fit = split.variance(var)
  r = _normalised_errors(err2, var_fit, noise)
  units_setting = fit_lib.conformal_units(cfg)
  n_states = len(np.unique(unit))
  # Pool states as the units need enough of them for a finite bound at the level (9 at
  # 90%); below that only the largest error would do, which one contrast of near-zero
  # spread can blow up, so the contrasts stay the units.
  too_few = n_states < min_pool_states(level)
  by_pools = (units_setting != "pairs" and contrasts_within == "pool states"
              and n_states > 1 and not too_few)

  def factor(r_N, var_N, pools=by_pools):  # the conformal factor of normalised errors
    if pools:
      # A contrast of one mixture with itself (replicate runs) has no spread, so no
      # normalised error: out of the pool states' bound, whose tail it would set.
      spread = var_N > 0
      scale_c, info_c = grouped_conformal_scale(r_N[spread], unit[spread], level)
      return scale_c, {**info_c, "zero_spread_contrasts": int(np.sum(~spread))}
    return _conformal_scale(r_N, level), {}
  c, units_info = factor(r, var_fit)
  if units_setting != "pairs" and not by_pools:
    if n_states < 2:
      why = "the sweep has one pool state"
    elif contrasts_within != "pool states":
      why = f"held-out cells are folds of {n_states} pool states, one mixture each"
    else:
      why = (f"{n_states} pool states; a {level:.0%} bound for a new pool needs "
             f"{min_pool_states(level)}")
    units_info["reason"] = why + ": the contrasts are the units"
  units_info["setting"] = units_setting
  scale, amplitude = float(c * np.sqrt(split.a)), float(c * np.sqrt(split.b))
  # The decisions' factor and the reported figures': with "split" (never with a
  # discrepancy term: check_config), both are fitted against the fold fits' spread, as
  # by default; with "pools_reported", the decisions keep the contrasts as the units
  # (the members' spread and the discrepancy's amplitude alike) while the reports take
  # `scale`'s pool states.
  split_spread = spread_setting == "split"
  r_dec, var_dec = ((_normalised_errors(err2, var_held, noise), var_held)
                    if split_spread else (r, var_fit))
  decide_by_pools = by_pools and units_setting == "pools"
  report_scale = factor(r_dec, var_dec)[0] if split_spread else scale
  optimiser_scale, disc_ratio = scale, 1.0
  if split_spread:
    optimiser_scale = factor(r_dec, var_dec, decide_by_pools)[0]
  elif decide_by_pools != by_pools:
    c_dec = factor(r, var_fit, decide_by_pools)[0]
    optimiser_scale = float(c_dec * np.sqrt(split.a))
    disc_ratio = float(c_dec / c) if c > 0 else 1.0
    units_info["decisions"] = {"units": "contrasts", "scale": float(c_dec)}
  # What the calibration saw, to set beside a test's errors and interval sds: the
  # held-out contrasts' absolute errors (run noise in, unless replicates take it out)
  # and the calibrated sds of the same contrasts.
  calibration = {
      "contrasts": int(len(err2)), "level": level,
      # Pairs of replicate runs left out (surface.replicate_pairs = "drop").
      "replicate_pairs_dropped": n_replicate_pairs,
      "median_abs_error": float(np.median(np.sqrt(err2))),
      "median_sd": float(np.median(c * np.sqrt(var_fit))),
      # What the factor treated as exchangeable (`surface.conformal_units`).
      "units": units_info,
      "coverage": float(np.mean(r <= (central_z(level) * c) ** 2)),
      "by_contrast_size": coverage_by_size(size, r, c, level),
      # Whose spread the factor was fitted against, and the final fit's spread over the
      # fold fits' at the same contrasts (median of the sd ratios).
      "spread": spread_setting,
      "final_over_heldout_sd": _median_sd_ratio(var_final, var_held),
      "run_noise": ("taken out (replicate runs' pure error)" if noise is not None
                    else "left in (no replicate runs)"),
      # The run noise's share of the contrasts' mean squared error (replicates only):
      # near 1, the held-out contrasts barely see the surface's own error.
      "noise_share": (float(np.mean(noise) / max(np.mean(err2), 1e-300))
                      if noise is not None else None)}
  # Pool-level shift: the held-out cells' mean error beyond what the draws spread.
  n_cells = int(cells.max()) + 1
  counts = np.bincount(cells)
  lvl_err = np.bincount(cells, weights=data.y - mean) / counts
  lvl_var = np.var(np.stack([np.bincount(cells, weights=d, minlength=n_cells)
                             for d in dev]) / counts, axis=0) * optimiser_scale ** 2
  if split.features is not None:  # the discrepancy's share of a cell's mean error
    cell_phi = _cell_means(split.features(data.w), cells)
    lvl_var = lvl_var + (amplitude * disc_ratio) ** 2 * np.sum(cell_phi ** 2, axis=1)
  pure_cell = pure_var / counts if pe_dof > 0 else 0.0
  level_sd = float(np.sqrt(max(np.mean(lvl_err ** 2 - lvl_var - pure_cell), 0.0))) \
      if n_cells >= MIN_GROUPS and fold_by != "runs" else 0.0
  # The safe objective's uniform guard, judged on held-out pool states: only where the
  # cells are pool states (a decision for one pool among its own runs).
  # With `decision_calibration = "conformal"` the guard's own query (the pick against
  # uniform) is calibrated on the same cells first, and the guard is judged as scaled.
  dec_setting = fit_lib.decision_calibration(cfg)
  decision = {"setting": dec_setting, "scale": None}
  if fold_by != "runs" and contrasts_within == "pool states":
    heldout_draws = mean + optimiser_scale * dev
    maximize = data.name in runs.maximize
    decision.update(decisions.decision_scale(heldout_draws, data.y, data.w, cells,
                                             maximize, level))
    decision["applied"] = dec_setting == "conformal" and decision["scale"] is not None
    # "report": the factor widens (or narrows) only the reported gain over uniform;
    # the check and the guard decide as with "none".
    decision["reported"] = (dec_setting in ("conformal", "report")
                            and decision["scale"] is not None)
    guard = decisions.guard_evidence(
        heldout_draws, data.y, data.w, cells, maximize, level,
        scale=decision["scale"] if decision["applied"] else 1.0)
  else:
    skipped = f"held-out cells are {contrasts_within}, folds by {fold_by}"
    guard = {"cells": 0, "guard": False, "skipped": skipped}
    decision.update(cells=0, applied=False, reported=False, reason=skipped)
  heldout = {nm: {"contrast_mse": float(np.mean((yc - c) ** 2)),
                  "spearman": float(stats.spearmanr(o.mean(0), data.y).statistic)}
             for nm, c, o in zip(names, contrasts, oofs)}
  noise_sd = float(np.sqrt(sum(a * m.noise_sd ** 2 for a, m in zip(weights, members))))
  rng = np.random.default_rng([seed, 17])
  info = {"method": "stack", "inference": "exact+laplace", "n_runs": int(len(data.y)),
          "members": names,
          "weights": dict(zip(names, weights.tolist())), "folds_by": fold_by,
          "n_folds": int(folds.max()) + 1, "contrasts_within": contrasts_within,
          "conformal_scale": scale, "optimiser_scale": optimiser_scale,
          "report_scale": report_scale, "discrepancy": {
              **split.info(), "amplitude": amplitude,
              "setting": disc_setting}, "calibrated_on": (
              f"{len(pi)} within-cell pairs" if len(pi)
              else f"{int(ok.sum())} runs against their cell means"),
          "calibration": calibration,
          "level_sd": level_sd, "heldout": heldout, "heldout_guard": guard,
          "decision_calibration": decision, "covariate_selection": covariates,
          "stack_focus": focus_info,
          "noise_sd": noise_sd,
          "member_seconds": secs, "member_info": {nm: _summary_info(m.info)
                                                 for nm, m in zip(names, members)},
          # The hyperparameters of the heaviest member that chose any (the trees
          # choose none).
          "chosen": next((members[i].info["chosen"] for i in np.argsort(-weights)
                          if "chosen" in members[i].info), {}),
          "nuisance": members[0].info.get("nuisance"),
          "evidence": members[0].info.get("evidence", {}),
          "pool_calibration": scale}
  info["covariate_extrapolation"] = fit_lib.covariate_extrapolation(cfg)
  x_bounds = hedge = None
  if info["covariate_extrapolation"] != "linear" and len(runs.features):
    x_bounds = (data.x.min(0), data.x.max(0))
    if info["covariate_extrapolation"] == "hedge":
      hedge = discrepancy.centred_normal(np.random.default_rng([seed, 19]), n)
  info["fit_seconds"] = time.time() - t0
  log.info("surface stack on y_%s: weights %s, conformal scale %.2f, discrepancy %.3g "
           "(lengthscale %s), level sd %.3g, %.1fs", data.name, info["weights"], scale,
           amplitude, info["discrepancy"]["lengthscale"], level_sd, info["fit_seconds"])
  if guard["cells"]:
    log.info("surface stack on y_%s: on %d held-out pool states the uniform guard "
             "changed %d decisions; mean observed loss %.4g guarded vs %.4g unguarded",
             data.name, guard["cells"], guard["changed"], guard["loss_guarded"],
             guard["loss_unguarded"])
  return StackedSurface([m for m, k in zip(members, keep) if k], weights[keep], scale,
                        level_sd * discrepancy.centred_normal(rng, n),
                        discrepancy.draw_weights(split.features, amplitude, n,
                                                 len(runs.domains), seed),
                        x_bounds, hedge, optimiser_scale, report_scale=report_scale,
                        decision_disc_ratio=disc_ratio,
                        clip_decisions_only=(
                            info["covariate_extrapolation"] == "clip_decisions"),
                        domains=runs.domains, features=runs.features, outcome=data.name,
                        maximize=data.name in runs.maximize, support_stats=support,
                        info=info)


def _median_sd_ratio(var_a_N: np.ndarray, var_b_N: np.ndarray) -> float | None:
  """Median of sqrt(var_a / var_b) over the entries where both are positive."""
  ok = (var_a_N > 0) & (var_b_N > 0)
  return float(np.median(np.sqrt(var_a_N[ok] / var_b_N[ok]))) if ok.any() else None


def _summary_info(info: dict[str, Any]) -> dict[str, Any]:
  keys = ("method", "chosen", "noise_sd", "fit_seconds", "covariates")
  return {k: info[k] for k in keys if k in info}
