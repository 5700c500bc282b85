"""Cross-fitted nuisance models for double machine learning: E[Y|X] and E[phi(T)|X].

Candidates (ridge, RBF kernel ridge, a small MLP) are scored by K-fold cross-validation
and the best one is kept; its out-of-fold predictions are the cross-fitted nuisances the
final stage regresses on, and its refit on all rows predicts at new covariates. When X
has no varying column (RegMix: one pool for every run) the nuisances are means and the
DML final stage becomes a response surface over the mixture.

Predictors are `(kind, params)`: `predict(kind, params, x_MxF) -> M x K` is pure JAX and
jittable for a fixed kind, so the surface's sampler can call it.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from causalmix_jax.surface.features import array_module

log = logging.getLogger(__name__)

CANDIDATES = ("ridge", "kernel", "mlp")
_RIDGE_LAMBDAS = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # times N
_KERNEL_LS = (0.5, 1.0, 2.0)  # multiples of sqrt(F) on standardised covariates
_KERNEL_LAMBDAS = (1e-3, 1e-2, 1e-1, 1.0)
_MLP_DECAYS = (1e-4, 1e-2)


@dataclasses.dataclass
class Nuisance:
  """A fitted nuisance: `kind`, jittable `params`, out-of-fold predictions `oof_NxK`
  and the cross-validated mean squared error per candidate (`scores`)."""
  kind: str
  params: dict[str, Any]
  oof_NxK: np.ndarray
  scores: dict[str, float]

  def predict(self, x_MxF: np.ndarray) -> np.ndarray:
    return np.asarray(predict(self.kind, self.params, jnp.asarray(x_MxF)))


def fold_ids(n: int, n_folds: int, seed: int) -> np.ndarray:
  """A deterministic assignment of n rows to n_folds folds (balanced)."""
  if n_folds < 2:
    raise ValueError(f"surface: n_folds must be >= 2, got {n_folds}")
  if n < n_folds:
    raise ValueError(f"surface: {n} runs cannot be split into {n_folds} folds")
  perm = np.random.default_rng(seed).permutation(n)
  out = np.empty(n, np.int64)
  out[perm] = np.arange(n) % n_folds
  return out


def varying_columns(x_NxF: np.ndarray, tol: float = 1e-12) -> np.ndarray:
  """Indices of covariate columns that vary across rows."""
  if x_NxF.shape[1] == 0:
    return np.zeros(0, np.int64)
  return np.flatnonzero(np.std(x_NxF, axis=0) > tol)


# -- predictors ---------------------------------------------------------------------------

def _rbf(a_MxF: jnp.ndarray, b_NxF: jnp.ndarray, ls: jnp.ndarray) -> jnp.ndarray:
  xp = array_module(a_MxF, b_NxF, ls)
  d2 = (xp.sum(a_MxF ** 2, 1)[:, None] + xp.sum(b_NxF ** 2, 1)[None, :]
        - 2.0 * a_MxF @ b_NxF.T)
  return xp.exp(-0.5 * xp.maximum(d2, 0.0) / ls ** 2)


def _mlp_apply(layers: Sequence[dict[str, jnp.ndarray]], h: jnp.ndarray) -> jnp.ndarray:
  for i, layer in enumerate(layers):
    h = h @ layer["w"] + layer["b"]
    if i < len(layers) - 1:
      h = array_module(h).tanh(h)
  return h


def predict(kind: str, params: dict[str, Any], x_MxF: jnp.ndarray) -> jnp.ndarray:
  """Nuisance prediction M x K at covariates x (raw units). Pure for a fixed kind;
  NumPy in and NumPy params give NumPy out (no compilation), else jax.numpy."""
  xp = array_module(x_MxF, *jax.tree.leaves(params))
  x_MxF = xp.atleast_2d(x_MxF)
  if kind == "mean":
    return xp.broadcast_to(params["mu_K"], (x_MxF.shape[0], params["mu_K"].shape[0]))
  xs = (x_MxF[:, params["cols"]] - params["x_mu"]) / params["x_sd"]
  if kind == "ridge":
    out = xs @ params["coef_FxK"]
  elif kind == "kernel":
    out = _rbf(xs, params["x_train"], params["ls"]) @ params["alpha_NxK"]
  elif kind == "mlp":
    out = _mlp_apply(params["layers"], xs)
  else:
    raise ValueError(f"unknown nuisance kind {kind!r}")
  return out * params["y_sd"] + params["y_mu"]


# -- closed-form candidates ---------------------------------------------------------------

def _ridge_solve(xs_NxF: np.ndarray, ys_NxK: np.ndarray, lam: float) -> np.ndarray:
  f = xs_NxF.shape[1]
  return np.linalg.solve(xs_NxF.T @ xs_NxF + lam * len(xs_NxF) * np.eye(f),
                         xs_NxF.T @ ys_NxK)


def _kernel_solve(k_NxN: np.ndarray, ys_NxK: np.ndarray, lam: float) -> np.ndarray:
  return np.linalg.solve(k_NxN + lam * np.eye(len(k_NxN)), ys_NxK)


def _np_rbf(a: np.ndarray, b: np.ndarray, ls: float) -> np.ndarray:
  d2 = np.sum(a ** 2, 1)[:, None] + np.sum(b ** 2, 1)[None, :] - 2.0 * a @ b.T
  return np.exp(-0.5 * np.maximum(d2, 0.0) / ls ** 2)


def _cv_closed_form(kind: str, xs: np.ndarray, ys: np.ndarray, folds: np.ndarray,
                    n_folds: int) -> dict[tuple, tuple[float, np.ndarray]]:
  """CV MSE and out-of-fold predictions for every hyperparameter of ridge / kernel."""
  f = xs.shape[1]
  grid = ([(lam,) for lam in _RIDGE_LAMBDAS] if kind == "ridge" else
          [(ls * np.sqrt(f), lam) for ls in _KERNEL_LS for lam in _KERNEL_LAMBDAS])
  out = {}
  for hp in grid:
    oof = np.zeros_like(ys)
    for k in range(n_folds):
      tr, te = folds != k, folds == k
      mu = ys[tr].mean(0)
      if kind == "ridge":
        xm = xs[tr].mean(0)
        coef = _ridge_solve(xs[tr] - xm, ys[tr] - mu, hp[0])
        oof[te] = (xs[te] - xm) @ coef + mu
      else:
        alpha = _kernel_solve(_np_rbf(xs[tr], xs[tr], hp[0]), ys[tr] - mu, hp[1])
        oof[te] = _np_rbf(xs[te], xs[tr], hp[0]) @ alpha + mu
    out[hp] = (float(np.mean((oof - ys) ** 2)), oof)
  return out


# -- the MLP candidate (folds trained together under one vmap) ----------------------------

def _mlp_init(key: jax.Array, f: int, k: int, width: int) -> list[dict[str, jnp.ndarray]]:
  k1, k2 = jax.random.split(key)
  return [{"w": jax.random.normal(k1, (f, width)) / np.sqrt(f), "b": jnp.zeros(width)},
          {"w": jax.random.normal(k2, (width, k)) * 0.1 / np.sqrt(width),
           "b": jnp.zeros(k)}]


def _train_mlps(xs: np.ndarray, ys: np.ndarray, masks_MxN: np.ndarray, decay: float,
                seed: int, steps: int, width: int) -> list[dict[str, jnp.ndarray]]:
  """Trains one MLP per row of `masks_MxN` (1 = train on that row), vmapped."""
  opt = optax.adamw(optax.cosine_decay_schedule(1e-2, steps), weight_decay=decay)
  x, y = jnp.asarray(xs, jnp.float32), jnp.asarray(ys, jnp.float32)

  def loss(layers, mask_N):
    err = jnp.sum((_mlp_apply(layers, x) - y) ** 2, axis=1)
    return jnp.sum(err * mask_N) / jnp.maximum(jnp.sum(mask_N), 1.0)

  def train_one(key, mask_N):
    layers = _mlp_init(key, xs.shape[1], ys.shape[1], width)

    def step(carry, _):
      layers, state = carry
      g = jax.grad(loss)(layers, mask_N)
      upd, state = opt.update(g, state, layers)
      return (optax.apply_updates(layers, upd), state), None

    (layers, _), _ = jax.lax.scan(step, (layers, opt.init(layers)), None, length=steps)
    return layers

  keys = jax.random.split(jax.random.key(seed), masks_MxN.shape[0])
  return jax.jit(jax.vmap(train_one))(keys, jnp.asarray(masks_MxN, jnp.float32))


def _cv_mlp(xs, ys, folds, n_folds, seed, steps, width):
  out = {}
  masks = np.stack([(folds != k).astype(np.float32) for k in range(n_folds)])
  for decay in _MLP_DECAYS:
    layers = _train_mlps(xs, ys, masks, decay, seed, steps, width)
    pred = np.asarray(jax.vmap(lambda l: _mlp_apply(l, jnp.asarray(xs, jnp.float32)))(
        layers))
    oof = np.zeros_like(ys)
    for k in range(n_folds):
      oof[folds == k] = pred[k][folds == k]
    out[(decay,)] = (float(np.mean((oof - ys) ** 2)), oof)
  return out


# -- entry point --------------------------------------------------------------------------

def fit_nuisance(x_NxF: np.ndarray, y_NxK: np.ndarray, *, n_folds: int = 5, seed: int = 0,
                 candidates: Sequence[str] = CANDIDATES, mlp_steps: int = 400,
                 mlp_width: int = 32, what: str = "E[Y|X]") -> Nuisance:
  """Chooses a nuisance model by K-fold CV and returns it with cross-fitted predictions.

  x_NxF: covariates (raw units); y_NxK: targets (K outputs share one model choice)."""
  x_NxF = np.asarray(x_NxF, np.float64)
  y_NxK = np.asarray(y_NxK, np.float64)
  if y_NxK.ndim == 1:
    y_NxK = y_NxK[:, None]
  if not np.all(np.isfinite(y_NxK)) or not np.all(np.isfinite(x_NxF)):
    raise ValueError(f"nuisance {what}: inputs contain NaN or Inf")
  bad = [c for c in candidates if c not in CANDIDATES]
  if bad:
    raise ValueError(f"surface.nuisance_models: unknown model(s) {bad}; "
                     f"known: {list(CANDIDATES)}")
  n = len(y_NxK)
  cols = varying_columns(x_NxF)
  y_mu, y_sd = y_NxK.mean(0), y_NxK.std(0)
  y_sd = np.where(y_sd > 1e-12, y_sd, 1.0)
  if len(cols) == 0 or not candidates:
    return Nuisance("mean", {"mu_K": jnp.asarray(y_mu)},
                    np.broadcast_to(y_mu, y_NxK.shape).copy(), {"mean": float(
                        np.mean(((y_NxK - y_mu) / y_sd) ** 2))})
  x = x_NxF[:, cols]
  x_mu, x_sd = x.mean(0), x.std(0)
  xs = (x - x_mu) / x_sd
  ys = (y_NxK - y_mu) / y_sd
  folds = fold_ids(n, n_folds, seed)
  results: dict[tuple, tuple[float, np.ndarray]] = {}
  for kind in candidates:
    if kind == "mlp":
      res = _cv_mlp(xs, ys, folds, n_folds, seed, mlp_steps, mlp_width)
    else:
      res = _cv_closed_form(kind, xs, ys, folds, n_folds)
    results.update({(kind,) + hp: v for hp, v in res.items()})
  best = min(results, key=lambda k: results[k][0])
  scores = {"/".join(map(str, k)): v[0] for k, v in results.items()}
  log.info("nuisance %s: chose %s (CV MSE %.4g of standardised target)", what, best,
           results[best][0])
  kind = best[0]
  base = {"cols": jnp.asarray(cols), "x_mu": jnp.asarray(x_mu), "x_sd": jnp.asarray(x_sd),
          "y_mu": jnp.asarray(y_mu), "y_sd": jnp.asarray(y_sd)}
  if kind == "ridge":
    coef = _ridge_solve(xs, ys - ys.mean(0), best[1])
    params = {**base, "coef_FxK": jnp.asarray(coef)}
  elif kind == "kernel":
    alpha = _kernel_solve(_np_rbf(xs, xs, best[1]), ys, best[2])
    params = {**base, "x_train": jnp.asarray(xs), "alpha_NxK": jnp.asarray(alpha),
              "ls": jnp.asarray(best[1])}
  else:
    layers = _train_mlps(xs, ys, np.ones((1, n), np.float32), best[1], seed, mlp_steps,
                         mlp_width)
    params = {**base, "layers": jax.tree.map(lambda a: a[0], layers)}
  return Nuisance(kind, params, results[best][1] * y_sd + y_mu, scores)
