"""Diagnostics of a fitted surface: MCMC convergence (split r-hat, effective sample
size), and predictive checks (held-out R^2, Spearman rank correlation, interval
coverage) computed by K-fold cross-validation of any fitting function."""

from __future__ import annotations

import logging
from typing import Any, Callable

import numpy as np
from scipy import stats

from causalmix_jax.surface import nuisance

log = logging.getLogger(__name__)


def split_rhat(draws_CxS: np.ndarray) -> np.ndarray:
  """Split r-hat per parameter. draws: chains x samples x ... (trailing dims kept)."""
  x = np.asarray(draws_CxS, np.float64)
  if x.ndim == 1:
    x = x[None]
  c, s = x.shape[:2]
  half = s // 2
  if half < 2:
    return np.full(x.shape[2:], np.nan)
  x = np.concatenate([x[:, :half], x[:, half:2 * half]], axis=0)  # 2C x half
  chain_mean = x.mean(1)
  w = x.var(1, ddof=1).mean(0)
  b = half * chain_mean.var(0, ddof=1)
  var = (half - 1) / half * w + b / half
  return np.sqrt(var / np.where(w > 0, w, np.nan))


def ess(draws_CxS: np.ndarray) -> np.ndarray:
  """Effective sample size per parameter (autocorrelations summed over chains to the
  first negative pair, Geyer's initial positive sequence)."""
  x = np.asarray(draws_CxS, np.float64)
  if x.ndim == 1:
    x = x[None]
  c, s = x.shape[:2]
  flat = x.reshape(c, s, -1)
  out = np.empty(flat.shape[2])
  for j in range(flat.shape[2]):
    y = flat[:, :, j] - flat[:, :, j].mean(1, keepdims=True)
    var = y.var()
    if var <= 0:
      out[j] = np.nan
      continue
    f = np.fft.rfft(y, n=2 * s, axis=1)
    acov = np.fft.irfft(f * np.conj(f), axis=1)[:, :s].mean(0) / s
    rho = acov / acov[0]
    total = 0.0
    for t in range(1, s - 1, 2):
      pair = rho[t] + rho[t + 1]
      if pair < 0:
        break
      total += pair
    out[j] = c * s / (1 + 2 * total)
  return out.reshape(x.shape[2:])


def r2(y_true: np.ndarray, y_pred: np.ndarray) -> float:
  y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
  ss = np.sum((y_true - y_true.mean()) ** 2)
  return float(1.0 - np.sum((y_true - y_pred) ** 2) / ss) if ss > 0 else float("nan")


def spearman(a: np.ndarray, b: np.ndarray) -> float:
  return float(stats.spearmanr(np.asarray(a), np.asarray(b)).statistic)


def coverage(lo: np.ndarray, hi: np.ndarray, truth: np.ndarray) -> float:
  t = np.asarray(truth)
  return float(np.mean((np.asarray(lo) <= t) & (t <= np.asarray(hi))))


def cross_validate(runs, outcome: str, fit_fn: Callable[[Any], Any], n_folds: int = 5,
                   seed: int = 0, ci: float = 0.9) -> dict[str, Any]:
  """K-fold CV of `fit_fn(train_runs) -> model` (anything with `predict(w, x)` returning
  a Prediction or an array). Returns held-out predictions and R^2, Spearman, the
  coverage of the predicted interval of the expected outcome (a lower bound when the
  run noise is large) and, for models with `predictive(w, x)` (the outcome of a new
  run, noise included), `predictive_coverage`: the share of held-out outcomes inside
  their predictive interval, which should be near `ci`."""
  name = outcome[2:] if outcome.startswith("y_") else outcome
  y = runs.y(name)
  keep = np.flatnonzero(np.isfinite(y) & np.asarray(runs.ok))
  folds = nuisance.fold_ids(len(keep), n_folds, seed)
  pred = np.full(len(keep), np.nan)
  plo = np.full(len(keep), np.nan)
  phi = np.full(len(keep), np.nan)
  lo = np.full(len(keep), np.nan)
  hi = np.full(len(keep), np.nan)
  w_all, x_all = runs.W[keep], runs.X[keep]
  for k in range(n_folds):
    tr, te = keep[folds != k], folds == k
    model = fit_fn(runs.select(tr))
    out_w, out_x = w_all[te], x_all[te]
    means, los, his = [], [], []
    xs_unique, inv = (np.unique(out_x, axis=0, return_inverse=True) if out_x.shape[1]
                      else (np.zeros((1, 0)), np.zeros(len(out_w), np.int64)))
    inv = np.asarray(inv).reshape(-1)
    m = np.empty(len(out_w))
    l = np.empty(len(out_w))
    h = np.empty(len(out_w))
    for u, xu in enumerate(xs_unique):
      rows = inv == u
      p = model.predict(out_w[rows], xu if out_x.shape[1] else None)
      if hasattr(p, "mean"):
        m[rows], l[rows], h[rows] = p.mean, p.lo, p.hi
      else:
        m[rows] = l[rows] = h[rows] = np.asarray(p)
      if hasattr(model, "predictive"):
        pp = model.predictive(out_w[rows], xu if out_x.shape[1] else None, ci)
        idx = np.flatnonzero(te)[rows]
        plo[idx], phi[idx] = pp.lo, pp.hi
    pred[te], lo[te], hi[te] = m, l, h
    del means, los, his
  yk = y[keep]
  out = {"pred": pred, "lo": lo, "hi": hi, "y": yk, "r2": r2(yk, pred),
         "spearman": spearman(pred, yk), "coverage": coverage(lo, hi, yk)}
  if np.all(np.isfinite(plo)):
    out["predictive_coverage"] = coverage(plo, phi, yk)
  return out


def summary(surface: Any, cv: dict[str, Any] | None,
            n_folds: int | None = None) -> dict[str, Any]:
  """diagnostics.json: the fit's own figures and, when `cv` is given, the held-out
  checks of `cross_validate`."""
  info = surface.info
  if cv is None:
    return {"outcome": surface.outcome, "method": info["method"],
            "n_runs": info["n_runs"], "fit_seconds": info["fit_seconds"],
            "chosen": info["chosen"], "nuisance": info["nuisance"],
            "pool_calibration": info["pool_calibration"]}
  return {"outcome": surface.outcome, "method": info["method"],
          "inference": info["inference"], "n_runs": info["n_runs"],
          "fit_seconds": info["fit_seconds"],
          "rhat_max": info.get("rhat_max"), "ess_min": info.get("ess_min"),
          "heldout_r2": cv["r2"], "heldout_spearman": cv["spearman"],
          "heldout_interval_coverage": cv["coverage"],
          "heldout_predictive_coverage": cv.get("predictive_coverage"),
          "noise_sd": info.get("noise_sd"), "cv_folds": n_folds,
          "chosen": info["chosen"], "nuisance": info["nuisance"],
          "evidence": info["evidence"], "pool_calibration": info["pool_calibration"]}
