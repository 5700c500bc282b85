"""The evaluation harness of response surfaces against their baselines: each method is
fitted once on a synthetic world's sweep and scored on new and shifted pools (rank
correlation with the true expected loss, coverage of its 90% intervals for the expected
loss and for effects, regret of the mixture it recommends), scored for prediction on
the real peer sweeps (RegMix, Olmix), and the rows are summarised as Markdown.

Methods see pools and mixtures in the runs table's order (domains and features sorted
by name, as `Runs` stores them); the harness maps them to and from the world's order.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import importlib
import logging
import math
import pathlib
import tempfile
import time
import warnings
import zlib
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from causalmix_jax import runs as runs_lib
from causalmix_jax.optimise import constraints as cons
from causalmix_jax.optimise.recommend import SAFE_SETTINGS
from causalmix_jax.optimise.recommend import check_safe_setting
from causalmix_jax.optimise.recommend import recommend as optimise_recommend
from causalmix_jax.runs import Runs
from causalmix_jax.surface import baselines
from causalmix_jax.surface import diagnostics
from causalmix_jax.surface import fit as fit_lib
from causalmix_jax.surface import robust
from causalmix_jax.surface.prediction import Prediction
from causalmix_jax.surface.prediction import central_z
from causalmix_jax.surface.worlds import N_DOMAINS
from causalmix_jax.surface.worlds import SWEEP_DESIGNS
from causalmix_jax.validation import pooled_gain

if TYPE_CHECKING:
  from causalmix_jax.surface.worlds import Pool, World

log = logging.getLogger(__name__)

OUTCOME = "loss"  # the worlds' outcome column (lower is better)
SPLITS = ("new", "shifted")
CI = 0.9
ARGMIN_CANDIDATES = 4096  # candidates per pool for `argmin_regret`
# Test mixtures per pool: Dirichlet(c * natural shares) with c log-uniform in this range,
# plus FLAT_SHARE of them from the flat Dirichlet(1).
TEST_CONCENTRATION = (0.3, 5.0)
FLAT_SHARE = 0.2
# Monte-Carlo candidates of the regression baselines' recommendations (RegMix's recipe,
# scaled down from its 100k-1M candidates to keep the study affordable).
N_CANDIDATES = 20_000
TOP_K = 32
TRUST_RADIUS = 0.5  # L1 step of the EconML trust-region recommendation
COVERAGE_BAND = (0.80, 0.97)  # where a 90% interval's coverage counts as calibrated
LGBM_BOOT = 8

METHOD_NAMES = ("ours", "lightgbm", "lightgbm_epochs", "regmix", "linear", "loglinear",
                "uniform", "natural", "econml")

REGMIX_OUTCOME = "pile_cc"
REGMIX_FILES = ("train_mixture_1m.csv", "train_pile_loss_1m.csv")
OLMIX_SWARMS = ("dclm", "full_recomputation", "full_reuse_update_5_seed_0")
OLMIX_OUTCOME = "mean_bpb"  # mean bits-per-byte over all of a swarm's metrics
N_FOLDS = 5
HELDOUT_SHARE = 0.2

WORLD_KEYS = ("world", "split", "method", "spearman", "pred_coverage90",
              "effect_coverage90", "regret", "regret_sd", "fit_s", "recommend_s",
              "n_pools", "safe_check_ran", "safe_check_replaced", "gain_moved",
              "gain_below", "gain_above", "gain_claims", "gain_false_claims",
              "known_pools", "known_below", "known_worse", "known_claims",
              "known_false_claims", "covariate_set", "argmin_regret", "status")
# argmin_regret: the regret of the mixture with the best point prediction among
# ARGMIN_CANDIDATES of RegMix's Monte-Carlo candidates around the pool's natural mixture,
# the same candidates for every method: how well a fit ranks the good mixtures, apart
# from its decision rule (None for methods without predictions).
# covariate_set: which covariate set a stacked surface kept ("aware", "blind" or "all",
# `info["covariate_selection"]["chosen"]`); None for every other model.
# The gain_* keys test the interval a recommendation reports for its own gain over
# uniform (`Recommendation.improvement_over_uniform`, 90%) against the true gain, on the
# pools where the pick is not uniform: counts of those pools, of true gains below the
# interval (nominal 5%) and above it, of pools where the interval's lower end claims a
# gain (> 0), and of those claims where the pick was in truth worse than uniform.
GAIN_KEYS = ("gain_moved", "gain_below", "gain_above", "gain_claims", "gain_false_claims")
# The known_* keys test the interval of the pick's gain over the sweep's best-known
# mixture (`Recommendation.improvement_over_best_known`) on the test pool, over every
# pool: counts of pools, of true gains below the interval's lower end (the pick did
# worse against the best-known mixture than the interval says; nominal 5%), of pools
# where the pick was in truth worse than the best-known mixture, of the interval's
# claims of a gain (lower end > 0) and of those claims that were false.
KNOWN_KEYS = ("known_pools", "known_below", "known_worse", "known_claims",
              "known_false_claims")
REAL_KEYS = ("dataset", "split", "method", "outcome", "spearman", "r2", "coverage90",
             "n_train", "n_test", "fit_s", "status")


class NotApplicable(Exception):
  """The method cannot run on these data (it needs covariates or token counts they do
  not have): its rows are marked skipped, not failed."""


@dataclasses.dataclass(frozen=True)
class QueryPool:
  """A pool that is only queried (the real sweeps): covariates, and token counts and
  the training budget when known. Duck-types `worlds.Pool` for the methods."""
  x_F: np.ndarray
  tokens_D: np.ndarray | None = None
  budget: float | None = None
  latent: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
  kind: str = "real"


@dataclasses.dataclass(frozen=True)
class Method:
  """One contender. fit(runs, outcome) -> model (None for fixed mixtures);
  predict(model, w_NxD, pool) -> the expected outcome with a 90% interval;
  effect(model, w_NxD, w_ref_D, pool) -> the effect of each mixture against w_ref;
  recommend(model, pool, runs) -> a mixture (length D), or a `Recommendation` (its
  safe objective's check is then counted: `safe_check_ran` / `safe_check_replaced`,
  shares of the pools, and its interval of the gain over uniform is tested: the
  GAIN_KEYS counts). predict / effect are None when the method cannot answer them;
  `skipped` says why a method cannot run at all."""
  name: str
  fit: Callable[[Runs, str], Any]
  predict: Callable[[Any, np.ndarray, Any], Prediction] | None
  effect: Callable[[Any, np.ndarray, np.ndarray, Any], Prediction] | None
  recommend: Callable[[Any, Any, Runs], np.ndarray]
  skipped: str | None = None


# -- pools and mixtures ------------------------------------------------------------------

def natural_mixture(pool: Any, runs: Runs | None = None) -> np.ndarray:
  """The pool's token shares; the sweep's mean mixture when the pool's tokens are
  unknown."""
  tokens = getattr(pool, "tokens_D", None)
  if tokens is None:
    if runs is None:
      raise ValueError("natural_mixture: the pool has no tokens and no runs were given")
    w = runs.W.mean(0)
  else:
    w = np.asarray(tokens, np.float64)
  return w / w.sum()


def _pool_seed(pool: Any) -> int:
  """A seed from the pool's contents: the same candidates for every method."""
  parts = [np.ascontiguousarray(pool.x_F, np.float64).tobytes()]
  if getattr(pool, "tokens_D", None) is not None:
    parts.append(np.ascontiguousarray(pool.tokens_D, np.float64).tobytes())
  return zlib.crc32(b"".join(parts))


def _x(pool: Any) -> np.ndarray | None:
  x = np.asarray(pool.x_F, np.float64).reshape(-1)
  return x if x.size else None


def _as_mixture(w: Any, n_domains: int) -> np.ndarray:
  w = np.asarray(w, np.float64).reshape(-1)
  if w.shape != (n_domains,) or not np.all(np.isfinite(w)):
    raise ValueError(f"recommended mixture must be {n_domains} finite weights, got {w!r}")
  w = np.maximum(w, 0.0)
  if w.sum() <= 0:
    raise ValueError("recommended mixture has no positive weight")
  return w / w.sum()


def sample_test_mixtures(shares_D: np.ndarray, n: int,
                         rng: np.random.Generator) -> np.ndarray:
  """n mixtures around the natural shares: Dirichlet(c * shares), c log-uniform in
  TEST_CONCENTRATION, and FLAT_SHARE of them from Dirichlet(1)."""
  shares_D = np.maximum(np.asarray(shares_D, np.float64), 1e-6)
  shares_D = shares_D / shares_D.sum()
  dn = len(shares_D)
  n_flat = int(round(FLAT_SHARE * n))
  n_local = n - n_flat
  c_N = np.exp(rng.uniform(*np.log(TEST_CONCENTRATION), size=(n_local, 1)))
  g_NxD = rng.standard_gamma(shares_D[None, :] * c_N)
  empty = g_NxD.sum(1) <= 0
  g_NxD[empty] = rng.dirichlet(np.ones(dn), int(empty.sum()))
  local_NxD = g_NxD / g_NxD.sum(1, keepdims=True)
  return np.concatenate([local_NxD, rng.dirichlet(np.ones(dn), n_flat)], axis=0)


@dataclasses.dataclass(frozen=True)
class _Alignment:
  """Runs-table domain j is world domain d_idx[j]; likewise features."""
  d_idx: np.ndarray
  f_idx: np.ndarray

  def pool(self, pool: Pool) -> Pool:
    return dataclasses.replace(pool, x_F=np.asarray(pool.x_F)[self.f_idx],
                               tokens_D=np.asarray(pool.tokens_D)[self.d_idx])

  def to_runs(self, w_NxD: np.ndarray) -> np.ndarray:
    return np.asarray(w_NxD)[..., self.d_idx]

  def to_world(self, w_NxD: np.ndarray) -> np.ndarray:
    w_NxD = np.asarray(w_NxD)
    out = np.empty_like(w_NxD)
    out[..., self.d_idx] = w_NxD
    return out


def _align(world: World, runs: Runs) -> _Alignment:
  def index(world_names: Sequence[str], runs_names: Sequence[str], what: str):
    pos = {n: i for i, n in enumerate(world_names)}
    if sorted(pos) != sorted(runs_names):
      raise ValueError(f"{world.name}: the sweep's {what} {list(runs_names)} differ from "
                       f"the world's {list(world_names)}")
    return np.asarray([pos[n] for n in runs_names], np.int64)
  return _Alignment(index(world.domains, runs.domains, "domains"),
                    index(world.features, runs.features, "features"))


@dataclasses.dataclass(frozen=True)
class _Case:
  """One test pool: the world's pool, its view in runs order, test mixtures (runs
  order), the natural mixture, the true expected losses and effects, and the candidates
  every method's `argmin_regret` chooses among (runs order)."""
  pool: Any
  view: Any
  w_NxD: np.ndarray
  w_nat_D: np.ndarray
  truth_N: np.ndarray
  effect_N: np.ndarray
  cands_CxD: np.ndarray


def _cases(world: World, pools: Sequence[Pool], align: _Alignment, n_mixtures: int,
           rng: np.random.Generator) -> list[_Case]:
  out = []
  for pool in pools:
    shares_D = natural_mixture(pool)
    w_world = sample_test_mixtures(shares_D, n_mixtures, rng)
    truth_N = np.asarray(world.outcome(w_world, pool), np.float64)
    nat_value = float(np.asarray(world.outcome(shares_D[None, :], pool))[0])
    view, w_nat_D = align.pool(pool), align.to_runs(shares_D)
    out.append(_Case(pool, view, align.to_runs(w_world), w_nat_D, truth_N,
                     truth_N - nat_value, baselines.sample_regmix_candidates(
                         w_nat_D, ARGMIN_CANDIDATES, _pool_seed(view))))
  return out


def _split_cases(world: World, align: _Alignment, n_test_pools: int, n_mixtures: int,
                 seed: int) -> dict[str, list[_Case]]:
  """The test cases of each split: `n_test_pools` new and shifted pools, each with
  `n_mixtures` test mixtures (deterministic given the arguments)."""
  pools = {"new": world.new_pools(n_test_pools, seed=seed),
           "shifted": world.shifted_pools(n_test_pools, seed=seed)}
  return {split: _cases(world, pools[split], align, n_mixtures,
                        np.random.default_rng([seed, i, 17]))
          for i, split in enumerate(SPLITS)}


# -- the methods -------------------------------------------------------------------------

def _no_fit(runs: Runs, outcome: str) -> None:
  del runs, outcome


def _baseline_predict(model: Any, w_NxD: np.ndarray, pool: Any) -> Prediction:
  return model.predict(w_NxD, _x(pool), CI)


def _baseline_effect(model: Any, w_NxD: np.ndarray, w_ref_D: np.ndarray,
                     pool: Any) -> Prediction:
  return model.cate(w_NxD, w_ref_D, _x(pool), CI)


def _top_k_recommend(model: Any, pool: Any, runs: Runs) -> np.ndarray:
  """RegMix: the mean of the top-k of Monte-Carlo candidates around the natural
  mixture, at the pool's covariates."""
  out = baselines.regmix_recommend(model, n_candidates=N_CANDIDATES, top_k=TOP_K,
                                   prior=natural_mixture(pool, runs),
                                   seed=_pool_seed(pool), x=_x(pool))
  return out["weights"]


def _argmin_recommend(model: Any, pool: Any, runs: Runs) -> np.ndarray:
  """The best point prediction among the same Monte-Carlo candidates."""
  cands = baselines.sample_regmix_candidates(natural_mixture(pool, runs), N_CANDIDATES,
                                             _pool_seed(pool))
  pred = model.point(cands, _x(pool))
  return cands[int(np.argmax(pred) if model.maximize else np.argmin(pred))]


def _ours_predict(surface: Any, w_NxD: np.ndarray, pool: Any) -> Prediction:
  return surface.predict(w_NxD, pool.x_F, CI, tokens=pool.tokens_D, budget=pool.budget)


def _ours_effect(surface: Any, w_NxD: np.ndarray, w_ref_D: np.ndarray,
                 pool: Any) -> Prediction:
  return surface.cate(w_NxD, w_ref_D, pool.x_F, CI, tokens=pool.tokens_D,
                      budget=pool.budget)


def _ours_recommend(surface: Any, pool: Any, runs: Runs,
                    **recommend_kw: Any) -> np.ndarray:
  del runs
  limits: dict[str, Any] = {}
  if pool.tokens_D is not None:
    limits["tokens"] = dict(zip(surface.domains, np.asarray(pool.tokens_D).tolist()))
  if pool.budget is not None:
    limits["budget_tokens"] = float(pool.budget)
  return optimise_recommend(surface, covariates=pool.x_F, constraints=limits,
                            **recommend_kw)


def _ours(settings: dict[str, str] | None = None) -> Method:
  """Our causal surface with the library defaults (or with `settings`, surface config
  keys to values, e.g. {"covariate_extrapolation": "clip"} or, for a tuple,
  {"stack_members": "dml+scaling+transfer"}, and recommend's
  SAFE_SETTINGS, passed to it), recommended by `recommend`'s default objective and
  method under the pool's token counts and budget."""
  settings = dict(settings or {})
  recommend_kw = {}  # recommend's own defaults unless a setting names another
  for key in SAFE_SETTINGS:
    if key in settings:
      try:
        recommend_kw[key] = check_safe_setting(key, settings.pop(key))
      except ValueError as e:
        raise ValueError(f"ours settings: {e}") from None
  rec = functools.partial(_ours_recommend, **recommend_kw)
  if not settings:
    return Method("ours", lambda runs, outcome: fit_lib.fit_surface(runs, outcome),
                  _ours_predict, _ours_effect, rec)
  cfg = surface_config(settings)
  return Method("ours", lambda runs, outcome: fit_lib.fit_surface(runs, outcome,
                                                                  config=cfg),
                _ours_predict, _ours_effect, rec)


def surface_config(settings: dict[str, str]):
  """The surface's default config with `settings` (surface config keys to values as
  text; "a+b" for a tuple) applied and checked; ValueError naming a bad key or value."""
  cfg = fit_lib.default_config()
  for key, value in settings.items():
    if key not in cfg:
      raise ValueError(f"ours settings: surface.{key} is not a surface config key")
    if isinstance(cfg[key], tuple):  # "a+b" for a tuple: commas separate settings
      setattr(cfg, key, tuple(v.strip() for v in value.split("+") if v.strip()))
    else:
      setattr(cfg, key, type(cfg[key])(value))
  fit_lib.check_config(str(cfg.method), cfg)
  return cfg


def _lightgbm(name: str, use_covariates: bool) -> Method:
  def fit_fn(runs: Runs, outcome: str) -> Any:
    return baselines.fit_regmix_lgbm(runs, outcome, n_boot=LGBM_BOOT,
                                     use_covariates=use_covariates)
  return Method(name, fit_fn, _baseline_predict, _baseline_effect, _top_k_recommend)


def _at_pool(model: Any, pool: Any) -> Any:
  if pool.tokens_D is None or pool.budget is None:
    return model
  return model.at_pool(pool.tokens_D, pool.budget)


def _lightgbm_epochs() -> Method:
  """LightGBM on weights, covariates and per-domain epochs w * budget / tokens."""
  def fit_fn(runs: Runs, outcome: str) -> Any:
    if runs.tokens is None or runs.budget is None:
      raise NotApplicable("no token counts / budget in the runs")
    return baselines.fit_lgbm_epochs(runs, outcome, n_boot=LGBM_BOOT)
  return Method(
      "lightgbm_epochs", fit_fn,
      lambda m, w, pool: _baseline_predict(_at_pool(m, pool), w, pool),
      lambda m, w, w_ref, pool: _baseline_effect(_at_pool(m, pool), w, w_ref, pool),
      lambda m, pool, runs: _top_k_recommend(_at_pool(m, pool), pool, runs))


def _fixed(name: str, mixture: Callable[[Any, Runs], np.ndarray]) -> Method:
  return Method(name, _no_fit, None, None, lambda m, pool, runs: mixture(pool, runs))


def _import_causal_forest() -> Any:
  """EconML's CausalForestDML (imported only when the method is used)."""
  return importlib.import_module("econml.dml").CausalForestDML


def _econml_unavailable() -> str | None:
  try:
    _import_causal_forest()
  except ImportError:
    return "econml not installed"
  return None


@dataclasses.dataclass(frozen=True)
class _CausalForest:
  """A fitted CausalForestDML with T = the weights of every domain but `base` (the
  sweep's largest-share domain), so the effect is linear in w on the simplex."""
  estimator: Any
  base: int
  keep_D: np.ndarray  # boolean: the treated domains
  n_domains: int


def _lgbm_regressor() -> Any:
  import lightgbm as lgb
  return lgb.LGBMRegressor(n_estimators=200, learning_rate=0.05, num_leaves=15,
                           min_child_samples=10, subsample_freq=0, verbose=-1, n_jobs=1,
                           random_state=0, deterministic=True, force_col_wise=True)


def _econml_fit(runs: Runs, outcome: str) -> _CausalForest:
  if runs.X.shape[1] == 0:
    raise NotApplicable("the causal forest needs pool covariates")
  from sklearn.multioutput import MultiOutputRegressor
  forest_cls = _import_causal_forest()
  y = runs.y(outcome)
  ok = np.isfinite(y) & runs.ok
  w_NxD, x_NxF = runs.W[ok], runs.X[ok]
  base = int(np.argmax(w_NxD.mean(0)))
  keep = np.arange(w_NxD.shape[1]) != base
  est = forest_cls(model_y=_lgbm_regressor(),
                   model_t=MultiOutputRegressor(_lgbm_regressor()),
                   n_estimators=200, min_samples_leaf=5, cv=3, random_state=0, n_jobs=1)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    est.fit(y[ok], w_NxD[:, keep], X=x_NxF)
  return _CausalForest(est, base, keep, w_NxD.shape[1])


def _econml_effect(model: _CausalForest, w_NxD: np.ndarray, w_ref_D: np.ndarray,
                   pool: Any) -> Prediction:
  w_NxD = np.atleast_2d(np.asarray(w_NxD, np.float64))
  n = w_NxD.shape[0]
  x_NxF = np.repeat(np.asarray(pool.x_F, np.float64)[None, :], n, axis=0)
  t1 = w_NxD[:, model.keep_D]
  t0 = np.repeat(np.asarray(w_ref_D, np.float64)[None, model.keep_D], n, axis=0)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    mean = model.estimator.effect(x_NxF, T0=t0, T1=t1)
    lo, hi = model.estimator.effect_interval(x_NxF, T0=t0, T1=t1, alpha=1.0 - CI)
  return Prediction(np.reshape(mean, n), np.reshape(lo, n), np.reshape(hi, n), None, CI)


def _econml_recommend(model: _CausalForest, pool: Any, runs: Runs) -> np.ndarray:
  """Trust-region A step: from the natural mixture, move an L1 distance TRUST_RADIUS
  against the estimated marginal effect at the pool's x, projected onto the simplex."""
  w0_D = natural_mixture(pool, runs)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    theta = model.estimator.const_marginal_effect(
        np.asarray(pool.x_F, np.float64)[None, :])
  g_D = np.zeros(model.n_domains)
  g_D[model.keep_D] = np.reshape(theta, -1)
  g_D -= g_D.mean()  # the tangent of the simplex
  if runs is not None and OUTCOME in runs.maximize:
    g_D = -g_D
  size = np.abs(g_D).sum()
  if not np.isfinite(size) or size <= 0:
    return w0_D
  step_D = w0_D - TRUST_RADIUS * g_D / size
  dn = model.n_domains
  return cons.project_box_simplex(step_D, np.zeros(dn), np.ones(dn))


def econml_method() -> Method:
  """EconML's CausalForestDML (Y = loss, T = the weights of every domain but the
  sweep's largest-share one, X = the pool covariates, LightGBM nuisances) with a
  trust-region A step from the pool's natural mixture. It answers effects, not
  expected outcomes. EconML is a benchmark-only dependency (requirements-bench.txt):
  without it the method is reported as skipped."""
  reason = _econml_unavailable()
  return Method("econml", _econml_fit, None, _econml_effect, _econml_recommend,
                skipped=reason)


def parse_ours_settings(text: str) -> dict[str, str]:
  """"key=value,..." (a zoo config's `ours_surface`) as a dict; ValueError naming the
  item that is not key=value."""
  out = {}
  for item in filter(None, (i.strip() for i in str(text).split(","))):
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
      raise ValueError(f"--config.ours_surface: {item!r} is not key=value")
    out[key.strip()] = value.strip()
  return out


def domain_count(n_domains: Any) -> int:
  """A zoo config's `n_domains` as an int; ValueError naming the key where it is not a
  whole number of at least 2 (checked before any world is fitted)."""
  number = (isinstance(n_domains, (int, float, np.integer))
            and not isinstance(n_domains, bool))
  if not (number and float(n_domains).is_integer() and n_domains >= 2):
    raise ValueError(f"--config.n_domains: every world needs a whole number of at least "
                     f"2 domains, got {n_domains!r}")
  return int(n_domains)


def sweep_design(design: Any, n_runs: Any, n_pools: Any) -> str:
  """A zoo config's `sweep_design` (worlds.SWEEP_DESIGNS); ValueError naming the key
  where it is unknown, or where "pipeline" cannot give every pool state the same
  number of mixtures (checked before any world is fitted)."""
  if design not in SWEEP_DESIGNS:
    raise ValueError(f"--config.sweep_design: unknown {design!r}; known: "
                     f"{SWEEP_DESIGNS}")
  if design == "pipeline" and int(n_runs) % int(n_pools):
    raise ValueError(f"--config.sweep_design='pipeline' gives every pool state "
                     f"n_runs / n_pools mixtures: --config.n_runs={n_runs} is not a "
                     f"multiple of --config.n_pools={n_pools}")
  return str(design)


def sweep_options(uniform_anchors: bool = False, design: str = "shares") -> dict[str, Any]:
  """`World.sweep` keywords for the zoo's sweep options, each only where it is away
  from its default, so a world without the options still runs."""
  return ({"uniform_anchors": True} if uniform_anchors else {}) | (
      {} if design == "shares" else {"design": design})


def domain_key(n_domains: Any) -> dict[str, int]:
  """A zoo cache key's entry for the domain count: none at the worlds' default, so
  results stored before the option existed stay valid."""
  n = domain_count(n_domains)
  return {} if n == N_DOMAINS else {"n_domains": n}


def default_methods(include: Iterable[str] | None = None,
                    ours_settings: dict[str, str] | None = None) -> list[Method]:
  """The contenders by name (default: all of METHOD_NAMES, in that order); "ours" with
  the surface settings `ours_settings` (see `_ours`)."""
  names = METHOD_NAMES if include is None else tuple(include)
  unknown = [n for n in names if n not in METHOD_NAMES]
  if unknown:
    raise ValueError(f"unknown method(s) {unknown}; known: {list(METHOD_NAMES)}")
  builders: dict[str, Callable[[], Method]] = {
      "ours": lambda: _ours(ours_settings),
      "lightgbm": lambda: _lightgbm("lightgbm", True),
      "lightgbm_epochs": _lightgbm_epochs,
      "regmix": lambda: _lightgbm("regmix", False),
      "linear": lambda: Method(
          "linear", lambda runs, o: baselines.fit_linear(runs, o, use_covariates=True),
          _baseline_predict, _baseline_effect, _argmin_recommend),
      "loglinear": lambda: Method("loglinear", baselines.fit_loglinear,
                                  _baseline_predict, _baseline_effect, _argmin_recommend),
      "uniform": lambda: _fixed(
          "uniform", lambda pool, runs: np.full(len(runs.domains), 1.0 / len(runs.domains))),
      "natural": lambda: _fixed("natural", natural_mixture),
      "econml": econml_method,
  }
  return [builders[n]() for n in names]


# -- synthetic worlds --------------------------------------------------------------------

def _finite(v: Any) -> float | None:
  if v is None:
    return None
  v = float(v)
  return v if math.isfinite(v) else None


def _mean(values: Sequence[float]) -> float | None:
  vals = [v for v in values if v is not None and math.isfinite(v)]
  return float(np.mean(vals)) if vals else None


def _status(e: BaseException) -> str:
  if isinstance(e, NotApplicable):
    return f"skipped: {e}"
  return f"error: {type(e).__name__}: {e}"


def _check_finite(p: Prediction, what: str) -> Prediction:
  bad = ~(np.isfinite(p.mean) & np.isfinite(p.lo) & np.isfinite(p.hi))
  if bad.any():
    raise ValueError(f"{int(bad.sum())} of {bad.size} {what} are not finite")
  return p


def _world_row(world: str, split: str, method: str, **values: Any) -> dict[str, Any]:
  row: dict[str, Any] = {k: None for k in WORLD_KEYS}
  row.update(world=world, split=split, method=method, status="ok")
  row.update(values)
  return row


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # constant predictions: NaN, dropped from the mean
    return diagnostics.spearman(a, b)


def _score(method: Method, model: Any, runs: Runs, cases: Sequence[_Case], world: World,
           align: _Alignment) -> dict[str, Any]:
  rho, pred_cov, eff_cov, regrets, seconds, checks = [], [], [], [], [], []
  argmin_regrets = []
  gains: list[tuple[float, float, float]] = []  # (lo, hi, true gain) where the pick moved
  known: list[tuple[float, float, float]] = []  # (lo, hi, true gain) over the best-known
  reported = False  # did the method report an interval of its gain over uniform
  dn = len(runs.domains)
  for case in cases:
    if method.predict is not None:
      p = _check_finite(method.predict(model, case.w_NxD, case.view), "predictions")
      rho.append(_spearman(p.mean, case.truth_N))
      pred_cov.append(float(np.mean(p.covers(case.truth_N))))
      pc = _check_finite(method.predict(model, case.cands_CxD, case.view),
                         "candidate predictions")
      w_best = case.cands_CxD[int(np.argmin(pc.mean))]  # OUTCOME is a loss
      argmin_regrets.append(float(world.regret(align.to_world(w_best), case.pool)))
    if method.effect is not None:
      e = _check_finite(method.effect(model, case.w_NxD, case.w_nat_D, case.view),
                        "effects")
      eff_cov.append(float(np.mean(e.covers(case.effect_N))))
    t0 = time.perf_counter()
    out = method.recommend(model, case.view, runs)
    seconds.append(time.perf_counter() - t0)
    gain = None
    if hasattr(out, "weights"):  # a Recommendation
      check = (getattr(out, "diagnostics", None) or {}).get("safe_check")
      if check is not None:
        checks.append((bool(check["ran"]), bool(check["replaced"])))
      gain = getattr(out, "improvement_over_uniform", None)
      reported = reported or gain is not None
      over_known = getattr(out, "improvement_over_best_known", None)
      w_known = getattr(out, "best_known", None)
      out = [out.weights[d] for d in runs.domains]
    else:
      over_known = w_known = None
    w_D = _as_mixture(out, dn)
    regrets.append(float(world.regret(align.to_world(w_D), case.pool)))
    if over_known is not None and w_known:
      w_known_D = _as_mixture([w_known[d] for d in runs.domains], dn)
      known.append((float(over_known.lo), float(over_known.hi),
                    float(world.regret(align.to_world(w_known_D), case.pool))
                    - regrets[-1]))
    if gain is not None and not np.allclose(w_D, 1.0 / dn, atol=1e-6):
      # Regrets are losses against one oracle, so their difference is the true gain
      # (positive: the pick is better than uniform), in the interval's units.
      uniform = float(world.regret(np.full(dn, 1.0 / dn), case.pool))
      gains.append((float(gain.lo), float(gain.hi), uniform - regrets[-1]))
  return {"spearman": _mean(rho), "pred_coverage90": _mean(pred_cov),
          "effect_coverage90": _mean(eff_cov), "regret": _mean(regrets),
          "regret_sd": _finite(np.std(regrets)) if regrets else None,
          "argmin_regret": _mean(argmin_regrets),
          "recommend_s": _mean(seconds), "n_pools": len(cases),
          "safe_check_ran": _mean([float(r) for r, _ in checks]),
          "safe_check_replaced": _mean([float(x) for _, x in checks]),
          **_gain_counts(gains, reported), **_known_counts(known)}


def _interval_counts(triples: Sequence[tuple[float, float, float]]) -> dict[str, int]:
  """Counts over (lo, hi, true gain) of a reported gain interval: pools ("n"), true
  gains below / above the interval, true losses ("worse": gain < 0), the interval's
  claims of a gain (lo > 0) and its false claims."""
  g = np.asarray(triples, np.float64).reshape(-1, 3)
  lo, hi, true = g[:, 0], g[:, 1], g[:, 2]
  claims = lo > 0
  return {"n": int(len(g)), "below": int(np.sum(true < lo)),
          "above": int(np.sum(true > hi)), "worse": int(np.sum(true < 0)),
          "claims": int(np.sum(claims)), "false_claims": int(np.sum(claims & (true < 0)))}


def _known_counts(known: Sequence[tuple[float, float, float]]) -> dict[str, int | None]:
  """KNOWN_KEYS from (lo, hi, true gain over the best-known mixture) of every pool;
  None when the method reports no such interval."""
  if not known:
    return {k: None for k in KNOWN_KEYS}
  c = _interval_counts(known)
  return {"known_pools": c["n"], **{f"known_{k}": c[k] for k in
                                    ("below", "worse", "claims", "false_claims")}}


def _gain_counts(gains: Sequence[tuple[float, float, float]], applies: bool
                 ) -> dict[str, int | None]:
  """GAIN_KEYS from (lo, hi, true gain) of the pools where the pick moved from uniform;
  None when the method reports no interval of its gain."""
  if not applies:
    return {k: None for k in GAIN_KEYS}
  c = _interval_counts(gains)
  return {"gain_moved": c["n"], **{f"gain_{k}": c[k] for k in
                                   ("below", "above", "claims", "false_claims")}}


def effect_reference_diagnosis(world: World, surface: Any, runs: Runs, *,
                               n_test_pools: int, n_mixtures: int = 200,
                               seed: int = 0) -> dict[str, dict[str, float]]:
  """Where a fitted surface's effect intervals miss, per split: the coverage of the
  zoo's effects (test mixtures against the pool's natural mixture), of the same
  mixtures against the test mixture of median true loss instead, and of the
  predictions; the median over pools of the slope of estimated on true effects
  (below 1: shrunk); and, over every (pool, mixture) of the zoo's effects, the median
  absolute error and the median interval sd (half-width over the normal quantile of
  the level), to set beside the fit's own held-out figures (`info["calibration"]` of a
  stacked surface): an interval that is right on the held-out pairs and misses here
  has a spread whose shape, not its size, is wrong. Where it misses: the lowest and
  highest coverage of one pool, and the coverage per quartile of the effects' size
  (the L1 distance of the test mixture from the natural one), to set beside the
  held-out pairs' `by_contrast_size`. The pools and mixtures are `evaluate_world`'s
  for the same arguments, so "effect_vs_natural" is its ours' effect coverage for
  this surface."""
  cases = _split_cases(world, _align(world, runs), n_test_pools, n_mixtures, seed)
  z = central_z(CI)
  out = {}
  for split in SPLITS:
    natural, median_ref, pred, slope, abs_err, sd = [], [], [], [], [], []
    size, covered = [], []
    for case in cases[split]:
      e = _ours_effect(surface, case.w_NxD, case.w_nat_D, case.view)
      covered.append(np.asarray(e.covers(case.effect_N), np.float64))
      size.append(np.abs(case.w_NxD - case.w_nat_D[None, :]).sum(1))
      natural.append(float(np.mean(covered[-1])))
      abs_err.append(np.abs(e.mean - case.effect_N))
      sd.append((e.hi - e.lo) / (2.0 * z))
      k = int(np.argsort(case.truth_N)[len(case.truth_N) // 2])
      e_k = _ours_effect(surface, case.w_NxD, case.w_NxD[k], case.view)
      median_ref.append(float(np.mean(e_k.covers(case.truth_N - case.truth_N[k]))))
      pred.append(float(np.mean(_ours_predict(surface, case.w_NxD, case.view)
                                .covers(case.truth_N))))
      slope.append(float(np.polyfit(case.effect_N, e.mean, 1)[0]))
    out[split] = {"effect_vs_natural": float(np.mean(natural)),
                  "effect_vs_median_mixture": float(np.mean(median_ref)),
                  "prediction": float(np.mean(pred)),
                  "effect_slope_median": float(np.median(slope)),
                  "effect_median_abs_error": float(np.median(np.concatenate(abs_err))),
                  "effect_median_sd": float(np.median(np.concatenate(sd))),
                  "effect_coverage_pool_min": float(np.min(natural)),
                  "effect_coverage_pool_max": float(np.max(natural)),
                  "effect_coverage_by_size": _coverage_by_size(np.concatenate(size),
                                                               np.concatenate(covered))}
  return out


def _coverage_by_size(size_N: np.ndarray, covered_N: np.ndarray
                      ) -> list[dict[str, float]]:
  """Coverage per quartile of the effects' size (`robust.size_bins`)."""
  return [{"size_lo": float(size_N[m].min()), "size_hi": float(size_N[m].max()),
           "effects": int(m.sum()), "coverage": float(np.mean(covered_N[m]))}
          for m in robust.size_bins(size_N)]


def format_coverage_by_size(bins: Sequence[Mapping[str, Any]]) -> str:
  """One line of coverage per bin of contrast size: "a-b: coverage" per bin of
  `effect_coverage_by_size`, with " (factor f)" where the bin carries one (a stacked
  fit's held-out `by_contrast_size`)."""
  return ", ".join(
      f"{b['size_lo']:.2f}-{b['size_hi']:.2f}: {b['coverage']:.3f}"
      + (f" (factor {b['factor']:.2f})" if "factor" in b else "") for b in bins)


def evaluate_world(world: World, methods: Sequence[Method], *, n_runs: int, n_pools: int,
                   n_test_pools: int, n_mixtures: int = 200, seeds: int = 1, seed: int = 0,
                   uniform_anchors: bool = False, design: str = "shares",
                   progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
  """Fits each method once on `world.sweep(...)` (with a uniform run in every pool
  state if `uniform_anchors`, and the mixtures of `design`, worlds.SWEEP_DESIGNS) and
  scores it on `n_test_pools` new and shifted pools:
  one row per (split, method) with the keys of WORLD_KEYS (None where a metric does not
  apply; `status` is "ok", "skipped: ..." or "error: ..."). Deterministic given the
  arguments, except the timings."""
  say = progress or log.info
  t0 = time.perf_counter()
  runs = world.sweep(n_runs=n_runs, n_pools=n_pools, seeds=seeds, seed=seed,
                     **sweep_options(uniform_anchors, design))
  align = _align(world, runs)
  cases = _split_cases(world, align, n_test_pools, n_mixtures, seed)
  for split_cases in cases.values():
    for case in split_cases:
      world.best_mixture(case.pool)  # the oracle, computed (and cached) before timing
  say(f"{world.name}: sweep of {len(runs)} runs, {n_test_pools} new + {n_test_pools} "
      f"shifted pools, truth and oracle in {time.perf_counter() - t0:.1f}s")
  rows = []
  for method in methods:
    if method.skipped:
      rows += [_world_row(world.name, s, method.name, status=f"skipped: {method.skipped}")
               for s in SPLITS]
      say(f"{world.name} / {method.name}: skipped: {method.skipped}")
      continue
    t0 = time.perf_counter()
    try:
      model = method.fit(runs, OUTCOME)
    except Exception as e:  # pylint: disable=broad-except
      if not isinstance(e, NotApplicable):
        log.exception("%s / %s: fit failed", world.name, method.name)
      rows += [_world_row(world.name, s, method.name, status=_status(e)) for s in SPLITS]
      say(f"{world.name} / {method.name}: {_status(e)}")
      continue
    fit_s = time.perf_counter() - t0
    info = getattr(model, "info", None)
    info = info if isinstance(info, dict) else {}
    kept = (info.get("covariate_selection") or {}).get("chosen")
    done = {}
    for split in SPLITS:
      try:
        values = _score(method, model, runs, cases[split], world, align)
        row = _world_row(world.name, split, method.name, fit_s=fit_s,
                         covariate_set=kept, **values)
      except Exception as e:  # pylint: disable=broad-except
        if not isinstance(e, NotApplicable):
          log.exception("%s / %s / %s: scoring failed", world.name, method.name, split)
        row = _world_row(world.name, split, method.name, fit_s=fit_s, status=_status(e))
      rows.append(row)
      done[split] = row
    weights = info.get("weights")
    say(f"{world.name} / {method.name}: fit {fit_s:.2f}s, recommend "
        f"{_fmt(done['new']['recommend_s'], '{:.3f}')}s per pool, regret new "
        f"{_fmt(done['new']['regret'], '{:.4f}')} shifted "
        f"{_fmt(done['shifted']['regret'], '{:.4f}')}"
        + ("" if not weights else ", stack weights " + ", ".join(
            f"{k} {v:.2f}" for k, v in weights.items())))
  return rows


# -- real sweeps -------------------------------------------------------------------------

def default_data_dir() -> pathlib.Path:
  """`<repo>/../shared/data`, where the peer data sit beside the checkout."""
  return pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "data"


def olmix_runs(olmix_dir: str | pathlib.Path, swarm: str) -> Runs:
  """An Olmix swarm's flat CSVs (`<swarm>_ratios.csv`, `<swarm>_metrics.csv`: `run`,
  `name`, `index`, then domains / metrics) as Runs, through `runs.from_olmix` on a
  staged swarm folder, with the outcome y_mean_bpb: the mean over all metrics."""
  olmix_dir = pathlib.Path(olmix_dir)
  paths = [olmix_dir / f"{swarm}_{part}.csv" for part in ("ratios", "metrics")]
  for p in paths:
    if not p.exists():
      raise FileNotFoundError(f"{p}: Olmix swarm file not found")
  frames = []
  for p in paths:
    f = pd.read_csv(p)
    if "run" not in f.columns:
      raise runs_lib.RunsTableError(f"{p}: Olmix flat files need a 'run' column")
    drop = [c for c in f.columns
            if c in ("run", "name", "index") or str(c).startswith("Unnamed")]
    frames.append(pd.concat([f["run"].astype(str).rename("run_id"),
                             f.drop(columns=drop)], axis=1))
  with tempfile.TemporaryDirectory(prefix=f"olmix_{swarm}_") as tmp:
    for frame, name in zip(frames, ("ratios.csv", "metrics.csv")):
      frame.to_csv(pathlib.Path(tmp) / name, index=False)
    with warnings.catch_warnings():  # the importer adds 110 metric columns one by one
      warnings.simplefilter("ignore", pd.errors.PerformanceWarning)
      staged = runs_lib.from_olmix(tmp)
  table = staged.to_frame()
  metric_cols = [f"y_{o}" for o in staged.outcomes]
  table[f"y_{OLMIX_OUTCOME}"] = table[metric_cols].to_numpy(np.float64).mean(1)
  return Runs(table, source=f"{paths[0]} + {paths[1]}",
              meta={**staged.meta, "swarm": swarm, "n_metrics": len(metric_cols)})


def _real_row(dataset: str, split: str, method: str, outcome: str,
              **values: Any) -> dict[str, Any]:
  row: dict[str, Any] = {k: None for k in REAL_KEYS}
  row.update(dataset=dataset, split=split, method=method, outcome=outcome, status="ok")
  row.update(values)
  return row


class _Predictor:
  """A method's fitted model as `predict(w, x)` (what `diagnostics.cross_validate`
  calls) for pools known only by covariates."""

  def __init__(self, method: Method, model: Any):
    self.method, self.model = method, model

  def predict(self, w_NxD: np.ndarray, x: Any = None) -> Prediction:
    x_F = np.zeros(0) if x is None else np.asarray(x, np.float64).reshape(-1)
    return self.method.predict(self.model, np.asarray(w_NxD, np.float64), QueryPool(x_F))


def _predict_runs(predictor: _Predictor, runs: Runs) -> Prediction:
  """Predictions for each run of `runs` at its own covariates."""
  W, X = runs.W, runs.X
  if X.shape[1] == 0:
    return predictor.predict(W, None)
  keys, inv = np.unique(X, axis=0, return_inverse=True)
  inv = np.asarray(inv).reshape(-1)
  mean, lo, hi = (np.empty(len(W)) for _ in range(3))
  for u, x in enumerate(keys):
    rows = inv == u
    p = predictor.predict(W[rows], x)
    mean[rows], lo[rows], hi[rows] = p.mean, p.lo, p.hi
  return Prediction(mean, lo, hi, None, CI)


def _holdout(method: Method, runs: Runs, outcome: str, train: np.ndarray,
             test: np.ndarray) -> dict[str, Any]:
  t0 = time.perf_counter()
  model = method.fit(runs.select(train), outcome)
  fit_s = time.perf_counter() - t0
  test_runs = runs.select(test)
  y = test_runs.y(outcome)
  ok = np.isfinite(y) & test_runs.ok
  p = _check_finite(_predict_runs(_Predictor(method, model), test_runs.select(ok)),
                    "predictions")
  return {"spearman": _finite(_spearman(p.mean, y[ok])),
          "r2": _finite(diagnostics.r2(y[ok], p.mean)),
          "coverage90": _finite(np.mean(p.covers(y[ok]))),
          "n_train": int(len(train)), "n_test": int(ok.sum()), "fit_s": fit_s}


def _guarded(dataset: str, split: str, method: Method, outcome: str,
             fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
  try:
    return _real_row(dataset, split, method.name, outcome, **fn())
  except Exception as e:  # pylint: disable=broad-except
    if not isinstance(e, NotApplicable):
      log.exception("%s / %s / %s failed", dataset, split, method.name)
    return _real_row(dataset, split, method.name, outcome, status=_status(e))


def _regmix_rows(regmix_dir: pathlib.Path, methods: Sequence[Method],
                 say: Callable[[str], None]) -> list[dict[str, Any]]:
  files = [regmix_dir / f for f in REGMIX_FILES]
  if not all(f.exists() for f in files):
    return [_real_row("regmix", None, None, REGMIX_OUTCOME,
                      status=f"skipped: data not found at {regmix_dir}")]
  runs = runs_lib.from_regmix(*files)
  index_N = np.asarray([int(str(r).rsplit("-", 1)[-1]) for r in runs.run_ids])
  order = np.argsort(index_N, kind="stable")
  n_test = int(math.ceil(HELDOUT_SHARE * len(runs)))
  train, test = np.sort(order[:-n_test]), np.sort(order[-n_test:])
  rows = []
  for method in methods:
    t0 = time.perf_counter()

    def cv(method=method) -> dict[str, Any]:
      t = time.perf_counter()
      out = diagnostics.cross_validate(
          runs, REGMIX_OUTCOME,
          lambda r: _Predictor(method, method.fit(r, REGMIX_OUTCOME)),
          n_folds=N_FOLDS, seed=0, ci=CI)
      _check_finite(Prediction(out["pred"], out["lo"], out["hi"]), "predictions")
      return {"spearman": _finite(out["spearman"]), "r2": _finite(out["r2"]),
              "coverage90": _finite(out["coverage"]),
              "n_train": int(round(len(runs) * (N_FOLDS - 1) / N_FOLDS)),
              "n_test": int(len(runs)), "fit_s": time.perf_counter() - t}

    rows.append(_guarded("regmix", f"cv{N_FOLDS}", method, REGMIX_OUTCOME, cv))
    rows.append(_guarded("regmix", "heldout_last20", method, REGMIX_OUTCOME,
                         lambda m=method: _holdout(m, runs, REGMIX_OUTCOME, train, test)))
    say(f"regmix / {method.name}: CV Spearman {_fmt(rows[-2]['spearman'], '{:.3f}')}, "
        f"held-out {_fmt(rows[-1]['spearman'], '{:.3f}')} "
        f"({time.perf_counter() - t0:.1f}s)")
  return rows


def _olmix_rows(olmix_dir: pathlib.Path, swarm: str, methods: Sequence[Method],
                say: Callable[[str], None]) -> list[dict[str, Any]]:
  dataset = f"olmix_{swarm}"
  if not all((olmix_dir / f"{swarm}_{p}.csv").exists() for p in ("ratios", "metrics")):
    return [_real_row(dataset, None, None, OLMIX_OUTCOME,
                      status=f"skipped: data not found at {olmix_dir}")]
  runs = olmix_runs(olmix_dir, swarm)
  n = len(runs)
  half = n // 2
  perm = np.random.default_rng(0).permutation(n)
  by_support = np.argsort((runs.W > 0).sum(1), kind="stable")
  splits = {"random_half": (np.sort(perm[:half]), np.sort(perm[half:])),
            "extrapolate": (np.sort(by_support[:half]), np.sort(by_support[half:]))}
  rows = []
  for method in methods:
    t0 = time.perf_counter()
    for split, (train, test) in splits.items():
      rows.append(_guarded(dataset, split, method, OLMIX_OUTCOME,
                           lambda tr=train, te=test: _holdout(method, runs, OLMIX_OUTCOME,
                                                              tr, te)))
    say(f"{dataset} / {method.name}: Spearman random half "
        f"{_fmt(rows[-2]['spearman'], '{:.3f}')}, extrapolate "
        f"{_fmt(rows[-1]['spearman'], '{:.3f}')} ({time.perf_counter() - t0:.1f}s)")
  return rows


def fit_seconds(runs: Runs, outcome: str, rounds: int, config=None) -> dict[str, Any]:
  """Seconds to fit all runs, side by side: after an untimed warm-up fit of each (which
  compiles the table's shapes), `rounds` rounds of one fit each of the surface (the
  default, or `config`) and of RegMix's LightGBM (with its LGBM_BOOT bootstrap members,
  timed apart). The fastest and the median of each, their ratios, and the surface's
  last member seconds and chosen design."""
  fit_lib.fit_surface(runs, outcome, config=config)
  baselines.fit_regmix_lgbm(runs, outcome, n_boot=0, use_covariates=False)
  ours, lgbm, lgbm_boot = [], [], []
  surface = None
  for _ in range(max(int(rounds), 1)):
    t0 = time.perf_counter()
    surface = fit_lib.fit_surface(runs, outcome, config=config)
    ours.append(time.perf_counter() - t0)
    model = baselines.fit_regmix_lgbm(runs, outcome, n_boot=LGBM_BOOT,
                                      use_covariates=False)
    lgbm.append(model.fit_time)
    lgbm_boot.append(model.fit_time_total)
  out = {"ours_fit_s": min(ours), "lightgbm_fit_s": min(lgbm),
         "lightgbm_with_bootstrap_fit_s": min(lgbm_boot),
         "ours_fit_median_s": float(np.median(ours)),
         "lightgbm_fit_median_s": float(np.median(lgbm)),
         "lightgbm_with_bootstrap_fit_median_s": float(np.median(lgbm_boot)),
         "lightgbm_bootstrap_members": LGBM_BOOT, "repeats": max(int(rounds), 1),
         "ours_member_s": surface.info.get("member_seconds"),
         "ours_chosen": surface.info.get("chosen")}
  out["fit_time_ratio_ours_over_lgbm"] = out["ours_fit_s"] / out["lightgbm_fit_s"]
  out["fit_time_median_ratio_ours_over_lgbm"] = (out["ours_fit_median_s"]
                                                 / out["lightgbm_fit_median_s"])
  return out


def evaluate_real(data_dir: str | pathlib.Path | None, methods: Sequence[Method],
                  progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
  """Prediction on the peer sweeps for the methods that predict: RegMix (`pile_cc`;
  5-fold CV, and a held-out last 20% of runs by index) and each Olmix swarm (mean
  bits-per-byte; "random_half" and "extrapolate": fit on the runs with the fewest
  non-zero domains, predict the rest). One row per (dataset, split, method) with the
  keys of REAL_KEYS; failures are recorded in `status`, never raised. data_dir: None
  or "" = `default_data_dir()`."""
  say = progress or log.info
  root = pathlib.Path(data_dir) if data_dir else default_data_dir()
  if not root.is_dir():
    return [_real_row("real", None, None, None,
                      status=f"skipped: data not found at {root}")]
  usable = [m for m in methods if m.predict is not None and not m.skipped]
  rows = _regmix_rows(root / "regmix", usable, say)
  for swarm in OLMIX_SWARMS:
    rows += _olmix_rows(root / "olmix", swarm, usable, say)
  return rows


# -- the summary -------------------------------------------------------------------------

def _fmt(v: Any, spec: str) -> str:
  return "–" if v is None else spec.format(v)


def _unique(values: Iterable[Any]) -> list[Any]:
  return list(dict.fromkeys(v for v in values if v is not None))


def _cell(row: dict[str, Any] | None, key: str, spec: str) -> str:
  if row is None:
    return ""
  status = str(row.get("status") or "ok")
  if status.startswith("skipped"):
    return "skip"
  if status.startswith("error"):
    return "err"
  return _fmt(row.get(key), spec)


def _table(header: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
  lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
  return lines + ["| " + " | ".join(r) + " |" for r in body]


def _ok(row: dict[str, Any] | None, key: str) -> float | None:
  if row is None or str(row.get("status") or "ok") != "ok":
    return None
  return row.get(key)


def _world_index(rows: Sequence[dict[str, Any]]) -> dict[tuple[str, str, str], dict]:
  return {(r["world"], r["split"], r["method"]): r for r in rows if "world" in r}


def headline(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
  """The study's headline figures: on how many worlds ours is at or below the best
  baseline's regret (per split), mean regrets of ours and LightGBM, mean coverages of
  ours and how many (world, split) cells fall in COVERAGE_BAND, and ours' Spearman on
  the real sweeps."""
  index = _world_index(rows)
  worlds = _unique(r["world"] for r in rows if "world" in r)
  methods = _unique(r["method"] for r in rows if "world" in r)
  out: dict[str, Any] = {"n_worlds": len(worlds)}
  for split in SPLITS:
    wins, n = 0, 0
    for w in worlds:
      ours = _ok(index.get((w, split, "ours")), "regret")
      others = [_ok(index.get((w, split, m)), "regret") for m in methods if m != "ours"]
      others = [v for v in others if v is not None]
      if ours is None or not others:
        continue
      n += 1
      wins += ours <= min(others) + 1e-12
    out[f"ours_le_best_baseline_{split}"] = f"{wins}/{n}"
    for m in ("ours", "lightgbm"):
      vals = [_ok(index.get((w, split, m)), "regret") for w in worlds]
      out[f"regret_{split}_{m}"] = _mean([v for v in vals if v is not None])
  worse = []
  for w in worlds:
    for split in SPLITS:
      ours = _ok(index.get((w, split, "ours")), "regret")
      uni = _ok(index.get((w, split, "uniform")), "regret")
      if ours is not None and uni is not None and ours > uni + 1e-12:
        worse.append(f"{w}/{split}")
  out["ours_worse_than_uniform"] = worse
  for split in SPLITS:  # how often the safe objective's uniform check ran / replaced
    for key in ("safe_check_ran", "safe_check_replaced"):
      vals = [_ok(index.get((w, split, "ours")), key) for w in worlds]
      vals = [v for v in vals if v is not None]
      if vals:
        out[f"ours_{key}_{split}"] = _mean(vals)
  for split in SPLITS:  # ours' interval of its gain over uniform, pooled over worlds
    gain = pooled_gains([index.get((w, split, "ours")) for w in worlds])
    if gain is not None:
      out[f"ours_gain_{split}"] = gain
    known = pooled_known([index.get((w, split, "ours")) for w in worlds])
    if known is not None:
      out[f"ours_known_{split}"] = known
  ours_s, lgbm_s = out.get("regret_shifted_ours"), out.get("regret_shifted_lightgbm")
  if ours_s is not None and lgbm_s:
    out["regret_shifted_ratio_ours_over_lightgbm"] = ours_s / lgbm_s
  lo, hi = COVERAGE_BAND
  for key in ("pred_coverage90", "effect_coverage90"):
    vals = [_ok(index.get((w, s, "ours")), key) for w in worlds for s in SPLITS]
    vals = [v for v in vals if v is not None]
    out[f"ours_{key}"] = _mean(vals)
    out[f"ours_{key}_in_band"] = f"{sum(lo <= v <= hi for v in vals)}/{len(vals)}"
  real = {f"{r['dataset']}/{r['split']}": r.get("spearman") for r in rows
          if "dataset" in r and r.get("method") == "ours" and r.get("status") == "ok"}
  if real:
    out["real_ours_spearman"] = real
  return out


def _pooled_counts(rows: Sequence[dict[str, Any] | None], keys: Sequence[str]
                   ) -> dict[str, int] | None:
  """The `keys` counts (named without their prefix) summed over rows with status "ok"
  that have them (None when none has)."""
  have = [r for r in rows if r is not None and r.get("status") == "ok"
          and r.get(keys[0]) is not None]
  if not have:
    return None
  return {k.split("_", 1)[1]: int(sum(int(r[k]) for r in have)) for k in keys}


def pooled_gains(rows: Sequence[dict[str, Any] | None]) -> dict[str, int] | None:
  """The GAIN_KEYS counts summed over rows with status "ok" that have them (None when
  none has)."""
  return _pooled_counts(rows, GAIN_KEYS)


def pooled_known(rows: Sequence[dict[str, Any] | None]) -> dict[str, int] | None:
  """The KNOWN_KEYS counts summed likewise."""
  return _pooled_counts(rows, KNOWN_KEYS)


def _share(g: dict[str, int], n: int, key: str) -> str:
  """g[key], with its share of n when n > 0 ("3 (25%)")."""
  return f"{g[key]} ({g[key] / n:.0%})" if n else str(g[key])


def known_text(g: dict[str, int]) -> str:
  """One line on pooled counts of the gain over the best-known mixture (KNOWN_KEYS)."""
  n = g["pools"]
  share = functools.partial(_share, g, n)
  return (f"on {n} pools the true gain over the sweep's best-known mixture fell below "
          f"its 90% interval on {share('below')} (nominal 5%); the pick was in truth "
          f"worse than that mixture on {share('worse')}; the interval claimed a gain on "
          f"{g['claims']}, false on {g['false_claims']}")


def gain_text(g: dict[str, int]) -> str:
  """One line on pooled gain counts (see GAIN_KEYS)."""
  n = g["moved"]
  share = functools.partial(_share, g, n)
  return (f"the pick moved from uniform on {n} pools; the true gain over uniform fell "
          f"below its 90% interval on {share('below')} (nominal 5%) and above it on "
          f"{share('above')}; the interval claimed a gain (lower end > 0) on "
          f"{g['claims']}, and the pick was in truth worse than uniform on "
          f"{g['false_claims']} of those")


def _r2_text(v: float | None) -> str:
  """R^2 for a table: values below -1000 (a fit off by orders of magnitude) as such."""
  if v is not None and np.isfinite(v) and v < -1000:
    return "< -1000"
  return _fmt(v, "{:.2f}")


def summarise(rows: Sequence[dict[str, Any]]) -> str:
  """Markdown: per split, worlds x methods tables of regret, Spearman and effect
  coverage; the real-sweep table (Spearman / R^2); then the headline counts."""
  parts: list[str] = []
  world_rows = [r for r in rows if "world" in r]
  index = _world_index(world_rows)
  worlds = _unique(r["world"] for r in world_rows)
  methods = _unique(r["method"] for r in world_rows)
  metrics = (("regret", "Regret of the recommended mixture (lower is better)", "{:.4f}"),
             ("spearman", "Spearman of predicted vs true expected loss", "{:.3f}"),
             ("effect_coverage90", "Coverage of 90% effect intervals", "{:.2f}"))
  for split in SPLITS:
    if not any(r["split"] == split for r in world_rows):
      continue
    parts.append(f"## {split.capitalize()} pools")
    for key, title, spec in metrics:
      body = [[w] + [_cell(index.get((w, split, m)), key, spec) for m in methods]
              for w in worlds]
      means = [_mean([v for w in worlds
                      if (v := _ok(index.get((w, split, m)), key)) is not None])
               for m in methods]
      body.append(["mean"] + [_fmt(v, spec) for v in means])
      parts += ["", f"{title}:", ""] + _table(["world"] + methods, body)
    parts.append("")
  real_rows = [r for r in rows if "dataset" in r]
  if real_rows:
    parts.append("## Real sweeps (Spearman / R^2 on held-out runs)")
    notes = [r["status"] for r in real_rows if r.get("method") is None]
    scored = [r for r in real_rows if r.get("method") is not None]
    if scored:
      r_methods = _unique(r["method"] for r in scored)
      keys = _unique((r["dataset"], r["split"]) for r in scored)
      r_index = {(r["dataset"], r["split"], r["method"]): r for r in scored}
      body = []
      for dataset, split in keys:
        cells = []
        for m in r_methods:
          r = r_index.get((dataset, split, m))
          cells.append(_cell(r, "spearman", "{:.3f}") if r is None or
                       r.get("status") != "ok" else
                       f"{_fmt(r['spearman'], '{:.3f}')} / {_r2_text(r['r2'])}")
        body.append([dataset, split] + cells)
      parts += [""] + _table(["dataset", "split"] + r_methods, body)
    parts += [""] + [f"- {n}" for n in notes]
    parts.append("")
  if world_rows:
    h = headline(rows)
    lo, hi = COVERAGE_BAND
    parts.append("## Headline")
    parts.append("")
    for split in SPLITS:
      k_n = h[f"ours_le_best_baseline_{split}"]
      k, n = k_n.split("/")
      parts.append(f"- ours at or below the best baseline's regret on {k} of {n} worlds "
                   f"({split} pools)")
    parts.append(f"- mean shifted-pool regret: ours {_fmt(h['regret_shifted_ours'], '{:.4f}')}"
                 f" vs lightgbm {_fmt(h['regret_shifted_lightgbm'], '{:.4f}')}")
    if "regret_shifted_ratio_ours_over_lightgbm" in h:
      parts.append(f"- shifted-pool regret ratio ours / lightgbm: "
                   f"{h['regret_shifted_ratio_ours_over_lightgbm']:.2f}")
    parts.append("- ours worse than uniform on: "
                 + (", ".join(h["ours_worse_than_uniform"]) or "no (world, split)"))
    checks = [f"{h[f'ours_safe_check_ran_{s}']:.0%} of {s} pools (replaced the pick on "
              f"{h[f'ours_safe_check_replaced_{s}']:.0%})" for s in SPLITS
              if f"ours_safe_check_ran_{s}" in h]
    if checks:
      parts.append("- ours' safe check against uniform ran on " + ", ".join(checks))
    for split in SPLITS:
      if f"ours_gain_{split}" in h:
        parts.append(f"- ours' gain over uniform ({split} pools): "
                     + gain_text(h[f"ours_gain_{split}"]))
      if f"ours_known_{split}" in h:
        parts.append(f"- ours' gain over the sweep's best-known mixture ({split} pools): "
                     + known_text(h[f"ours_known_{split}"]))
    band = []
    for m in methods:
      cells = []
      for key, label in (("pred_coverage90", "pred"), ("effect_coverage90", "effect")):
        vals = [_ok(index.get((w, s, m)), key) for w in worlds for s in SPLITS]
        vals = [v for v in vals if v is not None]
        if vals:
          cells.append(f"{label} {sum(lo <= v <= hi for v in vals)}/{len(vals)}")
      if cells:
        band.append(f"{m} " + ", ".join(cells))
    parts.append(f"- coverage in [{lo:.2f}, {hi:.2f}] (nominal {CI:.2f}), (world, split) "
                 "cells: " + ("; ".join(band) if band else "none"))
  return "\n".join(parts).rstrip() + "\n"


# -- replicates: the zoo re-drawn at other world seeds -----------------------------------
# The bands for 90% effect intervals: 85-95% on new pools, at least 80% shifted.
TARGET_EFFECT_COVERAGE = {"new": (0.85, 0.95), "shifted": (0.80, 1.0)}


def replicates(rows_by_seed: Mapping[int, Sequence[dict[str, Any]]]) -> dict[str, Any]:
  """Figures over world seeds (each seed re-draws every world's parameters, sweep and
  pools): per (world, split), each method's regret per seed and its mean; ours' wins
  against the best baseline and losses against uniform as counts of (world, seed)
  cells; ours' effect coverage per cell against TARGET_EFFECT_COVERAGE; the mean
  regret of ours and LightGBM over every cell, and their per-cell difference with a t
  interval over the cells ("regret_below_lightgbm": positive where ours is lower).
  Only rows with status "ok" count."""
  if not rows_by_seed:
    raise ValueError("replicates needs the rows of at least one seed")
  seeds = sorted(rows_by_seed)
  index = {s: _world_index([r for r in rows_by_seed[s] if "world" in r]) for s in seeds}
  all_rows = [r for s in seeds for r in rows_by_seed[s] if "world" in r]
  worlds, methods = _unique(r["world"] for r in all_rows), _unique(r["method"]
                                                                 for r in all_rows)
  cells: dict[str, Any] = {}
  out: dict[str, Any] = {"seeds": seeds, "worlds": worlds, "methods": methods}
  for split in SPLITS:
    wins = n = worse = covered = n_cov = 0
    worse_cells, missed_cells = [], []
    ours_all, lgbm_all = [], []
    lo, hi = TARGET_EFFECT_COVERAGE[split]
    for w in worlds:
      per_method = {m: {s: _ok(index[s].get((w, split, m)), "regret") for s in seeds}
                    for m in methods}
      coverage = {s: _ok(index[s].get((w, split, "ours")), "effect_coverage90")
                  for s in seeds}
      for s in seeds:
        ours = per_method.get("ours", {}).get(s)
        others = [per_method[m][s] for m in methods if m != "ours"
                  and per_method[m][s] is not None]
        if ours is not None and others:
          n += 1
          wins += ours <= min(others) + 1e-12
        uni = per_method.get("uniform", {}).get(s)
        if ours is not None and uni is not None and ours > uni + 1e-12:
          worse += 1
          worse_cells.append(f"{w}/seed{s}")
        lgbm = per_method.get("lightgbm", {}).get(s)
        if ours is not None and lgbm is not None:
          ours_all.append(ours)
          lgbm_all.append(lgbm)
        if coverage[s] is not None:
          n_cov += 1
          if lo <= coverage[s] <= hi:
            covered += 1
          else:
            missed_cells.append(f"{w}/seed{s} ({coverage[s]:.3f})")
      cells[f"{w}/{split}"] = {
          "regret": {m: {str(s): v for s, v in per_method[m].items()} for m in methods},
          "regret_mean": {m: _mean([v for v in per_method[m].values() if v is not None])
                          for m in methods},
          "ours_effect_coverage90": {str(s): v for s, v in coverage.items()}}
    ours_rows = [(s, index[s].get((w, split, "ours"))) for s in seeds for w in worlds]
    false_cells = [f"{r['world']}/seed{s}" for s, r in ours_rows
                   if r is not None and (r.get("gain_false_claims") or 0) > 0]
    ratio = (float(np.mean(ours_all) / np.mean(lgbm_all))
             if ours_all and np.mean(lgbm_all) > 0 else None)
    sets = dict(collections.Counter(r["covariate_set"] for _, r in ours_rows
                                    if r is not None and r.get("covariate_set")))
    out[split] = {"ours_le_best_baseline": f"{wins}/{n}",
                  "ours_worse_than_uniform": f"{worse}/{n}",
                  "ours_worse_than_uniform_cells": worse_cells,
                  "regret_ours": _mean(ours_all), "regret_lightgbm": _mean(lgbm_all),
                  "regret_ratio_ours_over_lightgbm": ratio,
                  # LightGBM's regret minus ours per cell (positive: ours lower), with
                  # a t interval over the cells as independent draws of the worlds.
                  "regret_below_lightgbm": (
                      pooled_gain(np.subtract(lgbm_all, ours_all), CI)
                      if ours_all else None),
                  # Each method's best point prediction among the same candidates
                  # (`argmin_regret`), over the cells where it was measured.
                  "argmin_regret": {m: _mean([v for s in seeds for w in worlds
                                              if (v := _ok(index[s].get((w, split, m)),
                                                           "argmin_regret")) is not None])
                                    for m in ("ours", "lightgbm")},
                  "effect_coverage_in_target": f"{covered}/{n_cov}",
                  "effect_coverage_missed": missed_cells,
                  "ours_gain": pooled_gains([r for _, r in ours_rows]),
                  "ours_known": pooled_known([r for _, r in ours_rows]),
                  "ours_gain_false_claim_cells": false_cells,
                  "ours_covariate_sets": sets}
  out["cells"] = cells
  return out


def _paired_text(d: Mapping[str, Any] | None) -> str:
  """"; per cell, ours' regret below LightGBM's by m [lo, hi] (level)" for a
  `pooled_gain` of the per-cell differences ("" without an interval)."""
  if not d or d.get("lo") is None:
    return ""
  return (f"; per cell, ours' regret below LightGBM's by {d['gain']:+.4f} "
          f"[{d['lo']:+.4f}, {d['hi']:+.4f}] ({CI:.0%} t interval over {d['studies']} "
          f"cells: {d['verdict']})")


def summarise_replicates(rows_by_seed: Mapping[int, Sequence[dict[str, Any]]]) -> str:
  """Markdown of `replicates`: per split, a worlds x methods table of regret (mean over
  seeds, then each seed's value), ours' effect coverage per seed, then the counts."""
  rep = replicates(rows_by_seed)
  seeds, methods = rep["seeds"], rep["methods"]
  parts: list[str] = [f"Seeds: {', '.join(str(s) for s in seeds)}.", ""]
  for split in SPLITS:
    parts += [f"## {split.capitalize()} pools", "",
              "Regret, mean over seeds (per seed in brackets); ours' effect coverage:", ""]
    body = []
    for w in rep["worlds"]:
      cell = rep["cells"][f"{w}/{split}"]
      row = [w]
      for m in methods:
        per_seed = [cell["regret"][m][str(s)] for s in seeds]
        row.append(f"{_fmt(cell['regret_mean'][m], '{:.4f}')} ("
                   + ", ".join(_fmt(v, "{:.3f}") for v in per_seed) + ")")
      row.append(", ".join(_fmt(cell["ours_effect_coverage90"][str(s)], "{:.2f}")
                           for s in seeds))
      body.append(row)
    parts += _table(["world"] + methods + ["ours effect coverage"], body)
    h = rep[split]
    lo, hi = TARGET_EFFECT_COVERAGE[split]
    parts += ["",
              f"- ours at or below the best baseline on {h['ours_le_best_baseline']} "
              "(world, seed) cells",
              f"- ours worse than uniform on {h['ours_worse_than_uniform']} cells"
              + (f": {', '.join(h['ours_worse_than_uniform_cells'])}"
                 if h["ours_worse_than_uniform_cells"] else ""),
              f"- mean regret: ours {_fmt(h['regret_ours'], '{:.4f}')}, lightgbm "
              f"{_fmt(h['regret_lightgbm'], '{:.4f}')}, ratio "
              f"{_fmt(h['regret_ratio_ours_over_lightgbm'], '{:.2f}')}"
              + _paired_text(h["regret_below_lightgbm"]),
              "- mean regret of the best point prediction among the same "
              f"{ARGMIN_CANDIDATES} candidates per pool (the fit near the optimum, apart "
              f"from the decision rule): ours {_fmt(h['argmin_regret']['ours'], '{:.4f}')}"
              f", lightgbm {_fmt(h['argmin_regret']['lightgbm'], '{:.4f}')}",
              f"- ours' effect coverage in [{lo:.2f}, {hi:.2f}] on "
              f"{h['effect_coverage_in_target']} cells"
              + (f"; outside: {', '.join(h['effect_coverage_missed'])}"
                 if h["effect_coverage_missed"] else "")]
    if h["ours_covariate_sets"]:
      parts.append("- the covariate set ours' stack kept, in cells: " + ", ".join(
          f"{k} {v}" for k, v in h["ours_covariate_sets"].items()))
    if h["ours_gain"] is not None:
      parts.append("- ours' gain over uniform, pooled over cells: "
                   + gain_text(h["ours_gain"])
                   + (f" ({', '.join(h['ours_gain_false_claim_cells'])})"
                      if h["ours_gain_false_claim_cells"] else ""))
    if h["ours_known"] is not None:
      parts.append("- ours' gain over the sweep's best-known mixture, pooled over cells: "
                   + known_text(h["ours_known"]))
    parts.append("")
  return "\n".join(parts).rstrip() + "\n"
