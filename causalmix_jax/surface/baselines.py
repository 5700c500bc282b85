"""Baseline response models behind the surface interface: RegMix's LightGBM regression
with its Monte-Carlo top-k recommendation (and a variant with per-domain epochs
features), linear regression on the weights, and Olmix's log-linear mixing law. Each
answers predict / cate / theta / support / sampler as far as it can, so benchmarks
compare them with the causal surface in one harness.

Intervals: linear uses exact OLS (Student-t) intervals for the mean; log-linear uses a
Laplace (Gauss-Newton) approximation around the least-squares fit; LightGBM uses a
bootstrap ensemble (row resampling, one seed per member) around the full-data model,
so its intervals reflect the spread of refits, not a posterior.
"""

from __future__ import annotations

import copy
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize
import scipy.stats

from causalmix_jax.runs import Runs
from causalmix_jax.surface.prediction import Prediction

# RegMix's regression settings (LightGBM defaults otherwise: 31 leaves, 20 rows per
# leaf, no bagging); RegMix early-stopped on held-out runs, which we do not.
REGMIX_LGBM_PARAMS: dict[str, Any] = {
    "objective": "regression",
    "boosting_type": "gbdt",
    "learning_rate": 0.01,
    "num_leaves": 31,
    "min_data_in_leaf": 20,
    "verbosity": -1,
    "num_threads": 1,  # 512 x 17 rows: threads cost more than they save
    "force_col_wise": True,
    "deterministic": True,
}
REGMIX_NUM_TREES = 1000
# RegMix draws mixtures from Dirichlet(prior * c) with c log-spaced over [0.1, 5].
REGMIX_STRENGTHS = (0.1, 5.0)

SamplerFn = Callable[[Any, jax.Array, jax.Array], jax.Array]


def _as_rows(a: np.ndarray | Any, width: int, what: str) -> np.ndarray:
  a = np.asarray(a, dtype=np.float64)
  if a.ndim == 1:
    a = a[None, :]
  if a.ndim != 2 or a.shape[1] != width:
    raise ValueError(f"{what}: expected shape (N, {width}) or ({width},), got {a.shape}")
  return a


class _Baseline:
  """Shared plumbing: names, reference mixture and covariates, support, CATE."""

  kind = "baseline"

  def __init__(self, runs: Runs, outcome: str, use_covariates: bool):
    name = outcome[2:] if outcome.startswith("y_") else outcome
    if name not in runs.outcomes:
      raise KeyError(f"{runs.source}: no outcome {name!r} (outcomes: {runs.outcomes})")
    self.domains = list(runs.domains)
    self.features = list(runs.features) if use_covariates else []
    self.all_features = list(runs.features)
    self.outcome = name
    self.maximize = name in runs.maximize
    self.use_covariates = use_covariates
    X = runs.X
    self.x_ref = X.mean(0) if X.shape[1] else np.zeros(0)
    self._x_lo = X.min(0) if X.shape[1] else np.zeros(0)
    self._x_hi = X.max(0) if X.shape[1] else np.zeros(0)
    self._x_sd = X.std(0) if X.shape[1] else np.zeros(0)
    self.w_ref = runs.W.mean(0)
    self.fit_time = float("nan")

  def _train_rows(self, runs: Runs) -> tuple[np.ndarray, np.ndarray]:
    ok = runs.ok & np.isfinite(runs.y(self.outcome))
    if ok.sum() < 3:
      raise ValueError(f"{runs.source}: only {int(ok.sum())} usable runs for "
                       f"{self.outcome!r}")
    return np.flatnonzero(ok), runs.y(self.outcome)[ok]

  def _x_rows(self, x: Any, n: int) -> np.ndarray:
    """Covariates for n query rows (F used by the model), defaulting to the mean pool."""
    if not self.features:
      return np.zeros((n, 0))
    if x is None:
      x = self.x_ref
    x = _as_rows(x, len(self.all_features), "x")
    if x.shape[0] == 1:
      x = np.repeat(x, n, axis=0)
    if x.shape[0] != n:
      raise ValueError(f"x has {x.shape[0]} rows for {n} mixtures")
    return x

  def _design(self, w: np.ndarray, x: np.ndarray) -> np.ndarray:
    return np.concatenate([w, x], axis=1) if x.shape[1] else w

  # -- interface ------------------------------------------------------------------------
  def draws(self, w: Any, x: Any = None) -> np.ndarray:
    """Draws of the expected outcome, S x N."""
    raise NotImplementedError

  def predict(self, w: Any, x: Any = None, ci: float = 0.9) -> Prediction:
    w = _as_rows(w, len(self.domains), "w")
    return self._summarise(self.point(w, x), self.draws(w, x), ci)

  def point(self, w: Any, x: Any = None) -> np.ndarray:
    return self.draws(w, x).mean(0)

  def _summarise(self, mean: np.ndarray, draws: np.ndarray, ci: float) -> Prediction:
    q = (1.0 - ci) / 2.0
    lo = np.minimum(np.quantile(draws, q, axis=0), mean)
    hi = np.maximum(np.quantile(draws, 1.0 - q, axis=0), mean)
    return Prediction(mean, lo, hi, draws, ci)

  def cate(self, w: Any, w_ref: Any, x: Any = None, ci: float = 0.9) -> Prediction:
    """Effect of mixture w versus w_ref at covariates x (rows broadcast)."""
    w = _as_rows(w, len(self.domains), "w")
    w_ref = _as_rows(w_ref, len(self.domains), "w_ref")
    if w_ref.shape[0] == 1:
      w_ref = np.repeat(w_ref, w.shape[0], axis=0)
    mean = self.point(w, x) - self.point(w_ref, x)
    return self._summarise(mean, self.draws(w, x) - self.draws(w_ref, x), ci)

  def theta(self, x: Any = None, ci: float = 0.9, w: Any = None,
            step: float = 5e-2) -> Prediction:
    """Marginal return of each domain at covariates x: the derivative of the expected
    outcome along e_d - w (moving mass into domain d from all others proportionally)
    at the reference mixture w (default: the sweep's mean mixture); length D.
    Finite differences of size `step` unless a subclass has the exact gradient."""
    w0 = self.w_ref if w is None else np.asarray(w, np.float64).reshape(-1)
    D = len(self.domains)
    moved = (1.0 - step) * w0[None, :] + step * np.eye(D)
    x_rows = None if x is None else np.repeat(_as_rows(x, len(self.all_features), "x"),
                                              D + 1, axis=0)
    pts = np.concatenate([w0[None, :], moved], axis=0)
    d = self.draws(pts, x_rows)
    diff = (d[:, 1:] - d[:, :1]) / step
    p = self.point(pts, x_rows)
    return self._summarise((p[1:] - p[0]) / step, diff, ci)

  def support(self, x: Any) -> dict[str, Any]:
    """How far covariates x lie outside the sweep's range, in sweep standard deviations
    per feature (0 inside the observed [min, max])."""
    if not self.all_features:
      return {"inside": True, "max_distance_sd": 0.0, "distance_sd": {},
              "outside": []}
    x = np.asarray(x, np.float64).reshape(-1)
    sd = np.where(self._x_sd > 0, self._x_sd, 1.0)
    dist = np.maximum(np.maximum(self._x_lo - x, x - self._x_hi), 0.0) / sd
    out = [f for f, v in zip(self.all_features, dist) if v > 0]
    return {"inside": not out, "max_distance_sd": float(dist.max()),
            "distance_sd": dict(zip(self.all_features, dist.tolist())), "outside": out}

  def sampler(self) -> tuple[SamplerFn, Any]:
    raise NotImplementedError


# -- LightGBM (RegMix) ------------------------------------------------------------------
class LGBMBaseline(_Baseline):
  """RegMix's regression: gradient-boosted trees on the weights (and covariates when
  `use_covariates`). `boosters[0]` is the full-data model (the point prediction);
  the rest are bootstrap refits that give the intervals."""

  kind = "regmix_lgbm"

  def __init__(self, runs: Runs, outcome: str, *, seed: int = 0,
               num_trees: int = REGMIX_NUM_TREES, n_boot: int = 8,
               use_covariates: bool = True, params: dict[str, Any] | None = None):
    import lightgbm as lgb
    super().__init__(runs, outcome, use_covariates)
    rows, y = self._train_rows(runs)
    X = self._train_design(runs, rows)
    self.params = {**REGMIX_LGBM_PARAMS, **(params or {}), "seed": int(seed)}
    self.num_trees = int(num_trees)
    t0 = time.perf_counter()
    self.boosters = [lgb.train(self.params, lgb.Dataset(X, y), num_boost_round=num_trees)]
    self.fit_time = time.perf_counter() - t0
    rng = np.random.default_rng(seed)
    for b in range(n_boot):
      idx = rng.integers(0, len(y), len(y))
      self.boosters.append(lgb.train({**self.params, "seed": int(seed) + 1 + b},
                                     lgb.Dataset(X[idx], y[idx]),
                                     num_boost_round=num_trees))
    self.fit_time_total = time.perf_counter() - t0

  def _train_design(self, runs: Runs, rows: np.ndarray) -> np.ndarray:
    """The training design of the runs `rows`: weights, then covariates if used."""
    x = runs.X[rows] if self.features else np.zeros((len(rows), 0))
    return self._design(runs.W[rows], x)

  def _features(self, w: Any, x: Any) -> np.ndarray:
    w = _as_rows(w, len(self.domains), "w")
    return self._design(w, self._x_rows(x, w.shape[0]))

  def point(self, w: Any, x: Any = None) -> np.ndarray:
    return self.boosters[0].predict(self._features(w, x))

  def draws(self, w: Any, x: Any = None) -> np.ndarray:
    feats = self._features(w, x)
    members = self.boosters[1:] or self.boosters
    return np.stack([b.predict(feats) for b in members])

  def sampler(self) -> tuple[SamplerFn, Any]:
    """A jittable (not differentiable) function via jax.pure_callback."""
    n_draws = max(len(self.boosters) - 1, 1)

    def host(w_NxD, x_F):
      w = np.asarray(w_NxD, np.float64)
      x = np.repeat(np.asarray(x_F, np.float64)[None, :], w.shape[0], axis=0)
      return self.draws(w, x if self.features else None).astype(np.float32)

    def fn(params, w_NxD, x_F):
      del params
      shape = jax.ShapeDtypeStruct((n_draws, w_NxD.shape[0]), jnp.float32)
      return jax.pure_callback(host, shape, w_NxD, x_F)

    return fn, {}


def fit_regmix_lgbm(runs: Runs, outcome: str, seed: int = 0, *,
                    num_trees: int = REGMIX_NUM_TREES, n_boot: int = 8,
                    use_covariates: bool = True) -> LGBMBaseline:
  """RegMix's LightGBM regression (1000 trees, lr 0.01, 31 leaves, no early stopping).
  `fit_time` times the full-data model; `fit_time_total` adds the bootstrap members."""
  return LGBMBaseline(runs, outcome, seed=seed, num_trees=num_trees, n_boot=n_boot,
                      use_covariates=use_covariates)


class LGBMEpochsBaseline(LGBMBaseline):
  """RegMix's LightGBM with one more feature per domain: epochs, the passes over the
  domain's unique tokens, w_d * budget / tokens_d. Queries are for one pool's tokens
  and budget: the sweep's median pool unless set by `at_pool`."""

  kind = "lgbm_epochs"

  def __init__(self, runs: Runs, outcome: str, **kwargs: Any):
    if runs.tokens is None or runs.budget is None:
      raise ValueError(f"{runs.source}: epochs features need tokens_<domain> and "
                       "budget_tokens columns")
    self.tokens_D = np.median(runs.tokens, axis=0)
    self.budget = float(np.median(runs.budget))
    super().__init__(runs, outcome, **kwargs)

  def _train_design(self, runs: Runs, rows: np.ndarray) -> np.ndarray:
    return np.concatenate([super()._train_design(runs, rows), runs.epochs()[rows]], axis=1)

  def _features(self, w: Any, x: Any) -> np.ndarray:
    w = _as_rows(w, len(self.domains), "w")
    epochs_NxD = w * self.budget / self.tokens_D[None, :]
    return np.concatenate([super()._features(w, x), epochs_NxD], axis=1)

  def at_pool(self, tokens_D: Any, budget: float) -> "LGBMEpochsBaseline":
    """The same boosters, answering for a pool with these unique tokens per domain
    (length D) and this training budget."""
    tokens_D = np.asarray(tokens_D, np.float64).reshape(-1)
    if tokens_D.shape != (len(self.domains),) or np.any(tokens_D <= 0) or not budget > 0:
      raise ValueError(f"at_pool: need {len(self.domains)} positive token counts and a "
                       f"positive budget, got {tokens_D.shape} tokens, budget {budget!r}")
    view = copy.copy(self)
    view.tokens_D, view.budget = tokens_D, float(budget)
    return view


def fit_lgbm_epochs(runs: Runs, outcome: str, seed: int = 0, *,
                    num_trees: int = REGMIX_NUM_TREES, n_boot: int = 8,
                    use_covariates: bool = True) -> LGBMEpochsBaseline:
  """RegMix's LightGBM on weights (+ covariates) and per-domain epochs
  w * budget / tokens; the runs need tokens_<domain> and budget_tokens."""
  return LGBMEpochsBaseline(runs, outcome, seed=seed, num_trees=num_trees, n_boot=n_boot,
                            use_covariates=use_covariates)


def sample_regmix_candidates(prior: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
  """RegMix's candidate mixtures: Dirichlet(prior * c), with c drawn log-uniformly in
  REGMIX_STRENGTHS per candidate (RegMix picks among 15 log-spaced strengths)."""
  rng = np.random.default_rng(seed)
  prior = np.asarray(prior, np.float64)
  prior = np.maximum(prior / prior.sum(), 1e-6)
  lo, hi = np.log(REGMIX_STRENGTHS[0]), np.log(REGMIX_STRENGTHS[1])
  strengths = np.exp(rng.uniform(lo, hi, size=(n, 1)))
  g = rng.standard_gamma(prior[None, :] * strengths)
  g = np.where(g.sum(1, keepdims=True) > 0, g, rng.dirichlet(np.ones(len(prior)), n))
  return g / g.sum(1, keepdims=True)


def regmix_recommend(model: _Baseline, n_candidates: int = 100_000, top_k: int = 128,
                     prior: np.ndarray | None = None, seed: int = 0, x: Any = None,
                     batch: int = 50_000) -> dict[str, Any]:
  """RegMix's Monte-Carlo recommendation: sample candidates around `prior` (default: the
  sweep's mean mixture; pass token shares when known), predict each, and average the
  top_k best (lowest outcome unless the outcome is maximised)."""
  prior = model.w_ref if prior is None else np.asarray(prior, np.float64)
  cands = sample_regmix_candidates(prior, n_candidates, seed)
  x_rows = None if x is None else np.asarray(x, np.float64).reshape(1, -1)
  preds = np.concatenate([model.point(cands[i:i + batch], x_rows)
                          for i in range(0, len(cands), batch)])
  order = np.argsort(-preds if model.maximize else preds, kind="stable")
  top = cands[order[:top_k]]
  w = top.mean(0)
  w = w / w.sum()
  return {"weights": w, "domains": model.domains,
          "predicted": model.predict(w, x_rows),
          "top_k_predicted": preds[order[:top_k]], "n_candidates": n_candidates}


# -- linear regression on the weights --------------------------------------------------
class LinearBaseline(_Baseline):
  """y = w . beta (+ x . gamma when `use_covariates`), OLS with Student-t intervals for
  the mean; draws come from the multivariate-t posterior under a flat prior."""

  kind = "linear"

  def __init__(self, runs: Runs, outcome: str, *, use_covariates: bool = False,
               n_draws: int = 400, seed: int = 0, ridge: float = 1e-8):
    super().__init__(runs, outcome, use_covariates)
    rows, y = self._train_rows(runs)
    t0 = time.perf_counter()
    xs = runs.X[rows] if self.features else np.zeros((len(rows), 0))
    if self.features:
      self._x_mu, self._x_scale = xs.mean(0), np.where(xs.std(0) > 0, xs.std(0), 1.0)
    else:
      self._x_mu, self._x_scale = np.zeros(0), np.ones(0)
    A = self._design(runs.W[rows], (xs - self._x_mu) / self._x_scale)
    n, p = A.shape
    gram = A.T @ A + ridge * np.trace(A.T @ A) / p * np.eye(p)
    self.coef = np.linalg.solve(gram, A.T @ y)
    resid = y - A @ self.coef
    self.dof = max(n - p, 1)
    self.sigma2 = float(resid @ resid / self.dof)
    self.cov = self.sigma2 * np.linalg.inv(gram)
    self.fit_time = time.perf_counter() - t0
    rng = np.random.default_rng(seed)
    chol = np.linalg.cholesky(self.cov + 1e-14 * np.eye(p))
    z = rng.standard_normal((n_draws, p)) @ chol.T
    scale = np.sqrt(self.dof / rng.chisquare(self.dof, size=(n_draws, 1)))
    self.coef_draws = self.coef[None, :] + z * scale

  def _A(self, w: Any, x: Any) -> np.ndarray:
    w = _as_rows(w, len(self.domains), "w")
    xr = self._x_rows(x, w.shape[0])
    if xr.shape[1]:
      xr = (xr - self._x_mu) / self._x_scale
    return self._design(w, xr)

  def point(self, w: Any, x: Any = None) -> np.ndarray:
    return self._A(w, x) @ self.coef

  def draws(self, w: Any, x: Any = None) -> np.ndarray:
    return self.coef_draws @ self._A(w, x).T

  def _exact(self, A: np.ndarray, ci: float) -> Prediction:
    mean = A @ self.coef
    se = np.sqrt(np.einsum("np,pq,nq->n", A, self.cov, A))
    t = scipy.stats.t.ppf(0.5 + ci / 2.0, self.dof)
    return Prediction(mean, mean - t * se, mean + t * se, self.coef_draws @ A.T, ci)

  def predict(self, w: Any, x: Any = None, ci: float = 0.9) -> Prediction:
    return self._exact(self._A(w, x), ci)

  def cate(self, w: Any, w_ref: Any, x: Any = None, ci: float = 0.9) -> Prediction:
    w = _as_rows(w, len(self.domains), "w")
    w_ref = np.broadcast_to(_as_rows(w_ref, len(self.domains), "w_ref"), w.shape)
    return self._exact(self._A(w, x) - self._A(w_ref, x), ci)

  def theta(self, x: Any = None, ci: float = 0.9, w: Any = None,
            step: float = 1e-2) -> Prediction:
    del x, step  # linear in w: the same at every x and exact
    w0 = self.w_ref if w is None else np.asarray(w, np.float64).reshape(-1)
    D = len(self.domains)
    A = np.zeros((D, len(self.coef)))
    A[:, :D] = np.eye(D) - w0[None, :]
    return self._exact(A, ci)

  def sampler(self) -> tuple[SamplerFn, Any]:
    D = len(self.domains)
    params = {"beta_SxD": jnp.asarray(self.coef_draws[:, :D], jnp.float32),
              "gamma_SxF": jnp.asarray(self.coef_draws[:, D:], jnp.float32),
              "x_mu": jnp.asarray(self._x_mu, jnp.float32),
              "x_scale": jnp.asarray(self._x_scale, jnp.float32)}

    def fn(p, w_NxD, x_F):
      out_SxN = p["beta_SxD"] @ w_NxD.T
      if p["gamma_SxF"].shape[1]:
        xz_F = (x_F - p["x_mu"]) / p["x_scale"]
        out_SxN = out_SxN + (p["gamma_SxF"] @ xz_F)[:, None]
      return out_SxN

    return fn, params


def fit_linear(runs: Runs, outcome: str, *, use_covariates: bool = False,
               seed: int = 0) -> LinearBaseline:
  """Linear regression of the outcome on the mixture weights (OLS, t intervals)."""
  return LinearBaseline(runs, outcome, use_covariates=use_covariates, seed=seed)


# -- log-linear mixing law (Olmix default) ---------------------------------------------
def _loglinear_fn(params_P: np.ndarray, w_NxD: np.ndarray) -> np.ndarray:
  return np.exp(params_P[0]) + np.exp(w_NxD @ params_P[1:])


class LogLinearBaseline(_Baseline):
  """Olmix's default regression, the log-linear mixing law y = exp(c) + exp(w . t):
  robust (Huber) least squares from a grid of starts, keeping the best; intervals from
  a Laplace approximation (Gauss-Newton covariance) around the optimum."""

  kind = "loglinear"

  def __init__(self, runs: Runs, outcome: str, *, seed: int = 0, n_starts: int = 8,
               huber_delta: float = 0.02, n_draws: int = 400):
    super().__init__(runs, outcome, use_covariates=False)
    rows, y = self._train_rows(runs)
    W = runs.W[rows]
    D = W.shape[1]
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    best = None
    y_min = float(np.min(y))
    # Huber scale: Olmix's 0.02 on losses of RegMix's spread, wider for wider outcomes.
    f_scale = max(huber_delta, 0.1 * float(np.std(y)))
    for log_c in np.linspace(-2.0, 1.5, max(n_starts // 2, 1)):
      for _ in range(2):
        # start the exponent at the level left over after the constant
        level = np.log(max(y.mean() - np.exp(log_c), 1e-3 + 0.01 * abs(y_min)))
        t_init = level + 0.1 * rng.standard_normal(D)
        x0 = np.concatenate([[log_c], t_init])
        res = scipy.optimize.least_squares(
            lambda p: _loglinear_fn(p, W) - y, x0, loss="huber", f_scale=f_scale,
            method="trf", x_scale="jac", max_nfev=50 * (D + 1))
        if best is None or res.cost < best.cost:
          best = res
    self.params = best.x
    J = best.jac
    resid = _loglinear_fn(self.params, W) - y
    self.dof = max(len(y) - len(self.params), 1)
    sigma2 = float(resid @ resid / self.dof)
    jtj = J.T @ J
    self.cov = sigma2 * np.linalg.inv(jtj + 1e-6 * np.trace(jtj) / len(jtj) * np.eye(len(jtj)))
    self.fit_time = time.perf_counter() - t0
    evals, evecs = np.linalg.eigh((self.cov + self.cov.T) / 2)
    root = evecs * np.sqrt(np.clip(evals, 0, None))
    self.param_draws = self.params[None, :] + rng.standard_normal(
        (n_draws, len(self.params))) @ root.T

  def point(self, w: Any, x: Any = None) -> np.ndarray:
    return _loglinear_fn(self.params, _as_rows(w, len(self.domains), "w"))

  def draws(self, w: Any, x: Any = None) -> np.ndarray:
    w = _as_rows(w, len(self.domains), "w")
    p = self.param_draws
    return np.exp(p[:, :1]) + np.exp(p[:, 1:] @ w.T)

  def sampler(self) -> tuple[SamplerFn, Any]:
    params = {"log_c_S": jnp.asarray(self.param_draws[:, 0], jnp.float32),
              "t_SxD": jnp.asarray(self.param_draws[:, 1:], jnp.float32)}

    def fn(p, w_NxD, x_F):
      del x_F
      return jnp.exp(p["log_c_S"])[:, None] + jnp.exp(p["t_SxD"] @ w_NxD.T)

    return fn, params


def fit_loglinear(runs: Runs, outcome: str, *, seed: int = 0) -> LogLinearBaseline:
  """Olmix's log-linear mixing law y = exp(c) + exp(w . t) on the weights."""
  return LogLinearBaseline(runs, outcome, seed=seed)
