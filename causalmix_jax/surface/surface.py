"""A fitted response surface: posterior draws of the expected outcome as a function of
the mixture w and pool covariates x, and the questions it answers (predict, CATE,
theta, support), a pure jittable sampler for the optimiser, and save/load.

The expected outcome under draw s is

  f_s(w, x) = m_y(x) + b0_s + z(w, x) . beta_s,

where m_y is the nuisance E[Y|X] (a constant for the outcome and GP surfaces) and the
design z(w, x) (standardised) has the blocks: covariates (outcome/GP surfaces only),
centred mixture features phi(w) - e(x) (e = E[phi|X] for DML, the sweep mean otherwise),
their products with the standardised covariates, and random Fourier features (GP).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import pathlib
import shutil
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from causalmix_jax import artifacts
from causalmix_jax.surface import covariate_basis as cbasis
from causalmix_jax.surface import features as feats
from causalmix_jax.surface import nuisance as nuis
from causalmix_jax.surface.prediction import Prediction

log = logging.getLogger(__name__)

SamplerFn = Callable[[Any, jnp.ndarray, jnp.ndarray], jnp.ndarray]
FORMAT_VERSION = 1
# Where a saved surface keeps its companion model (surface.companion), if it has one.
COMPANION_DIR = "companion"


@dataclasses.dataclass(frozen=True)
class DesignSpec:
  """The static (hashable) part of a surface's design."""
  features: feats.FeatureSpec
  method: str
  nuis_y: str  # nuisance kind for E[Y|X]
  nuis_phi: str  # nuisance kind for E[phi|X]
  x_main: bool  # covariate main effects in the design
  n_x: int  # covariate components used (scores of the pool states; see fit.py)
  n_rff: int  # random Fourier features (GP), 0 for none
  modifiers: str = "linear"  # effect modifiers of X: "linear" | "quadratic"

  @property
  def n_mod(self) -> int:
    """Columns of the modifier basis m(x)."""
    if self.modifiers == "quadratic":
      return self.n_x + self.n_x * (self.n_x + 1) // 2
    return self.n_x

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["features"] = self.features.to_dict()
    return d

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "DesignSpec":
    d = dict(d)
    d["features"] = feats.FeatureSpec.from_dict(d["features"])
    return cls(**d)


def modifier_basis(modifiers: str, xs_NxF: jnp.ndarray) -> jnp.ndarray:
  """m(x): standardised covariates, plus their squares and products ("quadratic")."""
  if modifiers == "linear" or xs_NxF.shape[1] == 0:
    return xs_NxF
  i, j = np.triu_indices(xs_NxF.shape[1])
  return feats.array_module(xs_NxF).concatenate([xs_NxF, xs_NxF[:, i] * xs_NxF[:, j]], axis=1)


def raw_design(spec: DesignSpec, params: dict[str, Any], w_NxD: jnp.ndarray,
               x_NxF: jnp.ndarray) -> jnp.ndarray:
  """The unstandardised design rows z(w, x), N x Q. Pure for a fixed spec; NumPy
  inputs and params evaluate in NumPy, anything else in jax.numpy."""
  xp = feats.array_module(w_NxD, x_NxF, *jax.tree.leaves(params))
  n = w_NxD.shape[0]
  budget = xp.broadcast_to(params["budget"], (n,))
  tokens = xp.broadcast_to(params["tokens_D"], w_NxD.shape)
  phi = feats.featurize(spec.features, w_NxD, tokens, budget)
  c = nuis.predict(spec.nuis_phi, params["nuis_phi"], x_NxF)
  phic = phi - c
  xs = (x_NxF[:, params["x_cols"]] - params["x_mu"]) / params["x_sd"]
  if "x_proj" in params:  # principal-component scores of the pool states
    xs = xs @ params["x_proj"]
  mx = modifier_basis(spec.modifiers, xs)
  blocks = []
  if spec.x_main:
    blocks.append(mx)
  blocks.append(phic)
  if spec.n_x:
    blocks.append((phic[:, :, None] * mx[:, None, :]).reshape(n, -1))
  if spec.n_rff:
    u = xp.concatenate([feats.ilr(w_NxD, spec.features.floor), xs], axis=1)
    u = (u - params["u_mu"]) / params["u_sd"]
    proj = u @ params["rff_omega"] + params["rff_phase"]
    blocks.append(np.sqrt(2.0 / spec.n_rff) * xp.cos(proj))
  return xp.concatenate(blocks, axis=1)


def surface_fn(spec: DesignSpec, params: dict[str, Any], w_NxD: jnp.ndarray,
               x_F: jnp.ndarray) -> jnp.ndarray:
  """Posterior draws of the expected outcome, S x N, at mixtures w and one pool x."""
  xp = feats.array_module(w_NxD, x_F, *jax.tree.leaves(params))
  w_NxD = xp.asarray(w_NxD, params["beta_SxQ"].dtype)
  x_NxF = xp.broadcast_to(xp.asarray(x_F, w_NxD.dtype), (w_NxD.shape[0], x_F.shape[-1]))
  z = (raw_design(spec, params, w_NxD, x_NxF) - params["z_mu"]) / params["z_sd"]
  m_y = nuis.predict(spec.nuis_y, params["nuis_y"], x_NxF)[:, 0]
  return m_y[None, :] + params["b0_S"][:, None] + params["beta_SxQ"] @ z.T


def _as_rows(a: Any, width: int, what: str) -> np.ndarray:
  arr = np.atleast_2d(np.asarray(a, np.float64))
  if arr.shape[-1] != width:
    raise ValueError(f"surface: {what} must have {width} columns, got shape {arr.shape}")
  return arr


def _jit_pair(fn: SamplerFn) -> tuple[Any, Any]:
  def jac(params, w_D, x_F):  # S x D derivative of the draws at one mixture
    return jax.jacfwd(lambda wv: fn(params, wv[None, :], x_F)[:, 0])(w_D)
  return jax.jit(fn), jax.jit(jac)


# Jitted samplers shared across surfaces, keyed by (function, static spec); bounded
# because each spec holds a fitted model's static structure only.
_SHARED_JIT: dict[Any, tuple[Any, Any]] = {}
_SHARED_JIT_MAX = 64


def _sampler_key(fn: Any) -> Any:
  """A hashable identity of a `functools.partial(pure_fn, static spec...)` sampler, or
  None for closures (which compile per surface)."""
  if not isinstance(fn, functools.partial) or fn.keywords:
    return None
  key = (fn.func,) + tuple(fn.args)
  try:
    hash(key)
  except TypeError:
    return None
  return key


class SurfaceBase:
  """What every fitted surface answers, given a pure jittable sampler: predict, CATE,
  theta, support and the predictive distribution of a new run. Subclasses provide
  `sampler(tokens, budget) -> (fn, params)` (fn(params, w_NxD, x_F) -> draws S x N),
  `n_draws` and `save`; they may override `draws` with a faster path."""

  def __init__(self, *, domains: Sequence[str], features: Sequence[str], outcome: str,
               maximize: bool, support_stats: dict[str, Any],
               info: dict[str, Any] | None = None):
    self.domains = list(domains)
    self.features = list(features)
    self.outcome = outcome
    self.maximize = bool(maximize)
    self.support_stats = support_stats
    self.info = dict(info or {})
    # A second model of the same sweep whose own pick `recommend` averages with the
    # surface's (surface.companion; None: no companion).
    self.companion: SurfaceBase | None = None
    self._jitted: dict[str, Any] = {}
    self._range_warned = False

  def sampler(self, tokens: Any = None, budget: float | None = None
              ) -> tuple[SamplerFn, dict[str, Any]]:
    raise NotImplementedError

  @property
  def n_draws(self) -> int:
    raise NotImplementedError

  def _compiled(self) -> tuple[Any, Any]:
    """(jit(fn), jit(jacobian of the draws at one mixture)), built once per surface, and
    shared by surfaces whose sampler is the same pure function of the same static spec
    (e.g. the members refitted on each cross-validation fold), so that they compile
    once."""
    if "fn" not in self._jitted:
      fn = self.sampler()[0]
      key = _sampler_key(fn)
      pair = _SHARED_JIT.get(key) if key is not None else None
      if pair is None:
        pair = _jit_pair(fn)
        if key is not None:
          if len(_SHARED_JIT) >= _SHARED_JIT_MAX:
            _SHARED_JIT.clear()
          _SHARED_JIT[key] = pair
      self._jitted["fn"], self._jitted["jac"] = pair
    return self._jitted["fn"], self._jitted["jac"]

  # -- defaults -------------------------------------------------------------------------
  @property
  def x_ref(self) -> np.ndarray:
    """Covariates of the sweep's reference pool (their mean)."""
    return np.asarray(self.support_stats["mean"], np.float64)

  @property
  def w_ref(self) -> np.ndarray:
    """The sweep's mean mixture (default reference for theta)."""
    return np.asarray(self.support_stats["w_mean"], np.float64)

  def _x(self, x: Any) -> np.ndarray:
    if x is None:
      return self.x_ref
    if isinstance(x, dict):
      missing = [f for f in self.features if f not in x and f"x_{f}" not in x]
      if missing:
        raise ValueError(f"surface: covariates missing {missing}")
      return np.array([float(x.get(f, x.get(f"x_{f}"))) for f in self.features])
    arr = np.asarray(x, np.float64).reshape(-1)
    if arr.shape[0] != len(self.features):
      raise ValueError(f"surface: x must have {len(self.features)} covariates "
                       f"({self.features}), got {arr.shape[0]}")
    return arr

  def _w(self, w: Any) -> np.ndarray:
    if isinstance(w, dict):
      missing = [d for d in self.domains if d not in w]
      if missing:
        raise ValueError(f"surface: mixture missing domains {missing}")
      w = [float(w[d]) for d in self.domains]
    w = _as_rows(w, len(self.domains), "w")
    if np.any(w < -1e-9):
      raise ValueError("surface: mixture weights must be >= 0")
    return np.maximum(w, 0.0)

  def _warn_outside_range(self, x: Any) -> None:
    """Logs once per surface when x leaves the sweep's per-covariate [min, max]: the
    covariate furthest out, as its standardised distance |x - mean| / sd."""
    if getattr(self, "_range_warned", False) or not self.features or x is None:
      return
    x = self._x(x)
    st = self.support_stats
    lo, hi = np.asarray(st["min"], np.float64), np.asarray(st["max"], np.float64)
    mu, sd = np.asarray(st["mean"], np.float64), np.asarray(st["sd"], np.float64)
    tol = 1e-6 * np.maximum(np.maximum(np.abs(lo), np.abs(hi)), 1.0)
    out = (x < lo - tol) | (x > hi + tol)
    if not out.any():
      return
    self._range_warned = True
    varies = sd > 1e-9 * np.maximum(np.abs(mu), 1.0)
    dist = np.where(varies, np.abs(x - mu) / np.where(varies, sd, 1.0), np.inf)
    i = int(np.argmax(np.where(out, dist, -1.0)))
    far = (f"{dist[i]:.3g} sweep sd from its mean" if np.isfinite(dist[i]) else
           "the sweep held it constant")
    log.warning("surface y_%s: covariates outside the sweep's range in %d of %d features; "
                "furthest: %s = %.6g (sweep range [%.6g, %.6g], %s); predictions "
                "there extrapolate (warned once per surface)", self.outcome,
                int(out.sum()), len(self.features), self.features[i], x[i], lo[i], hi[i],
                far)

  # -- answers --------------------------------------------------------------------------
  def draws(self, w: Any, x: Any = None, *, tokens: Any = None,
            budget: float | None = None) -> np.ndarray:
    """Posterior draws of the expected outcome, S x N (pool size as in `sampler`)."""
    fn, _ = self._compiled()
    params = self.sampler(tokens, budget)[1]
    return np.asarray(fn(params, jnp.asarray(self._w(w), jnp.float32),
                         jnp.asarray(self._x(x), jnp.float32)), np.float64)

  def theta(self, x: Any = None, ci: float = 0.9, w: Any = None, *, tokens: Any = None,
            budget: float | None = None) -> Prediction:
    """Marginal return of each domain at x: the derivative of the expected outcome
    along e_d - w (mass moved into d proportionally from all domains), at w (default
    the sweep's mean mixture). Length D."""
    w0 = self.w_ref if w is None else self._w(w)[0]
    _, jac = self._compiled()
    g = np.asarray(jac(self.sampler(tokens, budget)[1], jnp.asarray(w0, jnp.float32),
                       jnp.asarray(self._x(x), jnp.float32)), np.float64)
    return Prediction.from_samples(g - np.sum(g * w0[None, :], axis=1, keepdims=True), ci)

  def predict(self, w: Any, x: Any = None, ci: float = 0.9, *, tokens: Any = None,
              budget: float | None = None) -> Prediction:
    self._warn_outside_range(x)
    return Prediction.from_samples(self.draws(w, x, tokens=tokens, budget=budget), ci)

  def saved_meta(self, kind: str) -> dict[str, Any]:
    """The surface.json fields a saved scaling, tree or stacked surface shares (`kind`
    tells `load_surface` which reader to use)."""
    return {"format_version": FORMAT_VERSION, "kind": kind, "domains": self.domains,
            "features": self.features, "outcome": self.outcome,
            "maximize": self.maximize, "support": self.support_stats, "info": self.info,
            "n_draws": self.n_draws}

  def save_companion(self, directory: pathlib.Path) -> None:
    """Writes the companion, if the surface has one, to `directory`/companion
    (`load_surface` reads it back)."""
    if self.companion is not None:
      self.companion.save(directory / COMPANION_DIR)
    elif (directory / COMPANION_DIR).exists():  # an earlier save's, no longer ours
      shutil.rmtree(directory / COMPANION_DIR)

  @staticmethod
  def saved_kwargs(meta: dict[str, Any]) -> dict[str, Any]:
    """SurfaceBase's keyword arguments read back from a saved surface.json (`meta`):
    the shared fields every saved surface writes."""
    return dict(domains=meta["domains"], features=meta["features"],
                outcome=meta["outcome"], maximize=meta["maximize"],
                support_stats=meta["support"], info=meta.get("info"))

  @property
  def noise_sd(self) -> float:
    """Standard deviation of a new run's outcome around its expected value (0 when the
    surface does not record it)."""
    return float(self.info.get("noise_sd", 0.0) or 0.0)

  def predictive(self, w: Any, x: Any = None, ci: float = 0.9, *, tokens: Any = None,
                 budget: float | None = None, seed: int = 0) -> Prediction:
    """Posterior predictive of the outcome of a new run at (w, x): the expected
    outcome's draws plus the run noise (`noise_sd`). `predict` is the expected outcome
    (what the optimiser ranks); this is what a single new run should fall in."""
    self._warn_outside_range(x)
    d = self.draws(w, x, tokens=tokens, budget=budget)
    e = np.random.default_rng(seed).standard_normal(d.shape)
    return Prediction.from_samples(d + self.noise_sd * e, ci)

  def cate(self, w: Any, w_ref: Any, x: Any = None, ci: float = 0.9, *,
           tokens: Any = None, budget: float | None = None) -> Prediction:
    """Effect of mixture w against w_ref at pool x (rows of w; w_ref broadcasts)."""
    self._warn_outside_range(x)
    w = self._w(w)
    wr = np.broadcast_to(self._w(w_ref), w.shape)
    kw = {"tokens": tokens, "budget": budget}
    return Prediction.from_samples(self.draws(w, x, **kw) - self.draws(wr, x, **kw), ci)

  def support(self, x: Any, residual_tol: float = 0.1) -> dict[str, Any]:
    """How far x lies outside the sweep's covariate support.

    mahalanobis: distance in the covariate components the surface uses; residual: the
    part of the standardised move off the components' subspace, i.e. along directions
    the sweep never varied; max_abs_z: the largest move of one varying covariate, in
    sweep standard deviations; standardised_distance: the Euclidean norm of that move;
    outside_range: covariates outside the sweep's [min, max] (reported, not a verdict:
    with many covariates a pool drawn like the sweep's usually leaves one range).

    range_excess: the largest move of one varying covariate beyond the sweep's range,
    in sweep standard deviations (0 inside every range).

    outside: any of the four statistics (mahalanobis, residual, max_abs_z,
    range_excess) beyond the largest of the sweep's own pool states measured held out
    (`held_out_limits`, which are in `beyond`; `quantile` is the share of held-out
    states no farther in Mahalanobis distance), or a covariate the sweep held constant
    moved. A pool drawn like the sweep's is flagged about 4 / (states + 1) of the
    time. Surfaces saved without held-out statistics compare with the sweep's
    in-sample maxima (`residual_tol` over its largest residual) and ranges instead."""
    x = self._x(x)
    st = self.support_stats
    if not self.features:
      return {"mahalanobis": 0.0, "max_sweep_mahalanobis": 0.0, "quantile": 0.0,
              "standardised_distance": 0.0, "residual": 0.0, "outside": False, "z": {},
              "outside_range": []}
    mu, sd = np.asarray(st["mean"]), np.asarray(st["sd"])
    # Rounding (float32 storage, summation order) must not count as a move: a covariate
    # varies when its sd exceeds 1e-9 of its scale, and leaves the range by more than
    # 1e-6 of its scale.
    scale = np.maximum(np.abs(mu), 1.0)
    varies = sd > 1e-9 * scale
    z = np.where(varies, (x - mu) / np.where(varies, sd, 1.0), 0.0)
    lo, hi = np.asarray(st["min"]), np.asarray(st["max"])
    tol = 1e-6 * np.maximum(np.maximum(np.abs(lo), np.abs(hi)), 1.0)
    outside = [f for f, v, a, b, t in zip(self.features, x, lo, hi, tol)
               if v < a - t or v > b + t]
    sweep_d = np.asarray(st["sweep_mahalanobis"])
    out = {"z": dict(zip(self.features, map(float, z))), "outside_range": outside,
           "max_sweep_mahalanobis": float(sweep_d.max())}
    if "basis" not in st:  # surfaces written before the component representation
      prec = np.asarray(st["precision"])
      d = float(np.sqrt(max((x - mu) @ prec @ (x - mu), 0.0)))
      out.update(mahalanobis=d, quantile=float(np.mean(sweep_d <= d)),
                 outside=bool(d > sweep_d.max() or outside))
      return out
    cols = np.asarray(st["cols"], np.int64).reshape(-1)
    x_mu, x_sd = np.asarray(st["x_mu"]), np.asarray(st["x_sd"])
    xs = (x[cols] - x_mu) / x_sd
    if len(cols) == 0:  # no covariate varies (or a covariate-blind surface)
      out.update(mahalanobis=0.0, quantile=1.0, standardised_distance=0.0,
                 max_sweep_standardised_distance=0.0, residual=0.0,
                 max_sweep_residual=0.0, outside=bool(outside))
      return out
    basis = np.asarray(st["basis"], np.float64).reshape(len(cols), -1)
    proj = xs @ basis
    scores = proj / np.asarray(st["score_sd"]) if basis.shape[1] else proj
    prec = np.asarray(st["score_precision"], np.float64).reshape(len(scores), -1)
    d = float(np.sqrt(max(scores @ prec @ scores, 0.0))) if len(scores) else 0.0
    resid = float(np.linalg.norm(xs - basis @ proj))
    sweep_std = np.asarray(st["sweep_standardised"])
    out.update(mahalanobis=d, standardised_distance=float(np.linalg.norm(xs)),
               max_sweep_standardised_distance=float(sweep_std.max(initial=0.0)),
               residual=resid, max_sweep_residual=float(st["sweep_residual_max"]),
               max_abs_z=float(np.abs(xs).max(initial=0.0)))
    # Beyond the sweep's range, in the same standardised units.
    out["range_excess"] = float(cbasis.range_excess(
        xs[None, :], (lo[cols] - x_mu) / x_sd, (hi[cols] - x_mu) / x_sd)[0])
    # A covariate the sweep held constant that moves is outside whatever the rest say.
    varying = {self.features[c] for c in cols}
    moved_constant = [f for f in outside if f not in varying]
    held = st.get("held_out")
    if held is not None:
      # Against the sweep's states measured out of sample (see `held_out_support`):
      # beyond the largest held-out statistic, on any of the four.
      limits = {k: float(np.max(v)) for k, v in held.items()}
      # (Surfaces saved before "range_excess" was measured held out test the others.)
      beyond = [k for k in ("mahalanobis", "residual", "max_abs_z", "range_excess")
                if k in limits and out[k] > limits[k] * (1 + 1e-9) + 1e-9]
      out.update(quantile=float(np.mean(np.asarray(held["mahalanobis"]) <= d)),
                 held_out_limits=limits, beyond=beyond,
                 outside=bool(beyond or moved_constant))
      return out
    # Surfaces written before held-out statistics: the sweep's in-sample maxima and
    # ranges (a new pool drawn like the sweep's often exceeds them).
    res_limit = float(st["sweep_residual_max"]) + residual_tol
    out.update(quantile=float(np.mean(sweep_d <= d)),
               outside=bool(d > sweep_d.max() * (1 + 1e-9) + 1e-9 or resid > res_limit
                            or outside))
    return out


class Surface(SurfaceBase):
  """A fitted linear-in-features surface. Construct with `fit_surface` or
  `load_surface`."""

  def __init__(self, spec: DesignSpec, params: dict[str, Any], *, domains: Sequence[str],
               features: Sequence[str], outcome: str, maximize: bool,
               support_stats: dict[str, Any], info: dict[str, Any] | None = None):
    super().__init__(domains=domains, features=features, outcome=outcome,
                     maximize=maximize, support_stats=support_stats, info=info)
    self.spec = spec
    self.params = jax.tree.map(jnp.asarray, params)
    # One object for the life of the surface: jit's cache (SurfaceBase._compiled, the
    # optimiser) stays warm across calls.
    self._sampler_fn = functools.partial(surface_fn, spec)

  # -- answers --------------------------------------------------------------------------
  def _params(self, tokens: Any, budget: Any) -> dict[str, Any]:
    if tokens is None and budget is None:
      return self.params
    return self.sampler(tokens, budget)[1]

  def draws(self, w: Any, x: Any = None, *, tokens: Any = None,
            budget: float | None = None) -> np.ndarray:
    """Posterior draws of the expected outcome, S x N. tokens (length D) and budget
    describe the pool's size for repetition features (default: the sweep's median)."""
    # One-off queries evaluate the same `surface_fn` in NumPy: nothing to compile for
    # each new surface or query shape (the jitted sampler serves the optimiser).
    params = jax.tree.map(np.asarray, self._params(tokens, budget))
    return np.asarray(surface_fn(self.spec, params, self._w(w), self._x(x)))

  def sampler(self, tokens: Any = None, budget: float | None = None
              ) -> tuple[SamplerFn, dict[str, Any]]:
    """(fn, params): fn(params, w_NxD, x_F) -> y_SxN, pure and jittable. tokens (length
    D) and budget set the pool size used by repetition features (default: the sweep's
    median)."""
    params = dict(self.params)
    if tokens is not None:
      params["tokens_D"] = jnp.asarray(np.asarray(tokens, np.float64).reshape(-1))
    if budget is not None:
      params["budget"] = jnp.asarray(float(budget))
    return self._sampler_fn, params

  @property
  def n_draws(self) -> int:
    return int(self.params["beta_SxQ"].shape[0])

  # -- persistence ----------------------------------------------------------------------
  def save(self, directory: str | pathlib.Path) -> pathlib.Path:
    """Writes surface.json (metadata) and posterior.npz (arrays)."""
    directory = pathlib.Path(directory)
    self.save_companion(directory)
    flat, treedef = jax.tree_util.tree_flatten_with_path(self.params)
    arrays = {f"a{i}": np.asarray(v) for i, (_, v) in enumerate(flat)}
    keys = [jax.tree_util.keystr(k) for k, _ in flat]
    artifacts.write_npz(directory / "posterior.npz", **arrays)
    meta = {"format_version": FORMAT_VERSION, "domains": self.domains,
            "features": self.features, "outcome": self.outcome,
            "maximize": self.maximize, "spec": self.spec.to_dict(),
            "param_keys": keys, "param_tree": _tree_skeleton(self.params),
            "support": self.support_stats, "info": self.info,
            "n_draws": self.n_draws}
    return artifacts.write_json(directory / "surface.json", meta)

  def __repr__(self) -> str:
    return (f"Surface({self.spec.method}, outcome={self.outcome!r}, "
            f"{len(self.domains)} domains, {len(self.features)} covariates, "
            f"{self.n_draws} draws)")


def _tree_skeleton(tree: Any) -> Any:
  """JSON-able shape of a params tree: leaves become None."""
  if isinstance(tree, dict):
    return {k: _tree_skeleton(v) for k, v in tree.items()}
  if isinstance(tree, (list, tuple)):
    return [_tree_skeleton(v) for v in tree]
  return None


def _rebuild(skeleton: Any, leaves: list[np.ndarray]) -> Any:
  it = iter(leaves)

  def go(s):
    if isinstance(s, dict):
      return {k: go(s[k]) for k in sorted(s)}  # jax flattens dicts in sorted key order
    if isinstance(s, list):
      return [go(v) for v in s]
    return next(it)

  return go(skeleton)


def load_surface(directory: str | pathlib.Path) -> SurfaceBase:
  """Reads a surface written by a surface's `save` (a directory with surface.json and
  its arrays, or the path of surface.json): linear, scaling-law or stacked, with its
  companion model when it was saved with one."""
  directory = pathlib.Path(directory)
  if directory.name == "surface.json":
    directory = directory.parent
  surface = _load_one(directory)
  if (directory / COMPANION_DIR / "surface.json").exists():
    surface.companion = load_surface(directory / COMPANION_DIR)
  return surface


def _load_one(directory: pathlib.Path) -> SurfaceBase:
  """The surface saved in `directory`, without its companion."""
  meta = artifacts.read_json(directory / "surface.json", "surface")
  if meta.get("format_version") != FORMAT_VERSION:
    raise ValueError(f"{directory / 'surface.json'}: format_version "
                     f"{meta.get('format_version')} is not {FORMAT_VERSION}")
  if meta.get("kind", "linear") != "linear":
    from causalmix_jax.surface import robust  # scaling-law and stacked surfaces
    return robust.load(directory, meta)
  npz_path = directory / "posterior.npz"
  if not npz_path.exists():
    raise FileNotFoundError(f"surface posterior not found: {npz_path}")
  with np.load(npz_path) as z:
    leaves = [z[f"a{i}"] for i in range(len(meta["param_keys"]))]
  params = _rebuild(meta["param_tree"], leaves)
  return Surface(DesignSpec.from_dict(meta["spec"]), params,
                 **SurfaceBase.saved_kwargs(meta))
