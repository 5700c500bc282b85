"""The safe objective's uniform guard, judged on the sweep's own pool states held out.

The `safe` objective picks the mixture with the best upper bound, and off the sweep's
support also asks the pick to beat uniform at the upper bound of their paired
difference. Whether that guard should also run inside the support is a question about
the decision rule, not the surface: a surface can rank well on average and still pick
badly for pools whose effects move with something it does not see. This module answers
it the way the surface's families are chosen, on pools the fit did not see: in each
held-out (fold, pool state) cell the held-out draws choose among the cell's own runs,
once by the bound alone and once with the guard (the cell's run nearest uniform standing
in for uniform), and the runs' observed outcomes score the two rules.

The same held-out decisions calibrate the guard's own query, the paired difference
between the pick and uniform (`decision_scale`). The stack's conformal step is fitted
on random pairs of a cell's runs, but the guard asks about one particular pair: the
mixture the surface likes best, which is where its errors favour it, against the one
nearest uniform, often at the edge of the sweep. In each held-out cell the bound's pick
and the run nearest uniform give the normalised error of that difference (observed
minus the draws' mean, over the distance from the mean to the upper bound); the
split-conformal quantile of those errors over the cells is the factor by which the
difference's spread around its mean must be scaled for the upper bound to hold at its
level on pools like the sweep's.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# Fewest held-out cells with a decision to make before the evidence counts.
MIN_CELLS = 4


def _cell_decisions(draws_SxN: np.ndarray, y_N: np.ndarray, w_NxD: np.ndarray,
                    cells_N: np.ndarray, maximize: bool, q: float):
  """Per held-out cell with at least two distinct mixtures, in loss units (-y when
  maximised): (the cell's draws S x n, its observed losses n, the bound's pick, the run
  nearest uniform), the last two indices into the cell's runs."""
  sign = -1.0 if maximize else 1.0
  loss_SxN = sign * np.asarray(draws_SxN, np.float64)
  obs_N = sign * np.asarray(y_N, np.float64)
  w_NxD = np.asarray(w_NxD, np.float64)
  uniform_D = np.full(w_NxD.shape[1], 1.0 / w_NxD.shape[1])
  for c in np.unique(cells_N):
    rows = np.flatnonzero(cells_N == c)
    if len(np.unique(np.round(w_NxD[rows], 9), axis=0)) < 2:
      continue
    cell = loss_SxN[:, rows]
    pick = int(np.argmin(np.round(np.quantile(cell, q, axis=0), 12)))
    near = int(np.argmin(np.sum((w_NxD[rows] - uniform_D) ** 2, axis=1)))
    yield cell, obs_N[rows], pick, near


def spread_scaled(diff_SxK: np.ndarray, scale: float = 1.0) -> np.ndarray:
  """Paired-difference draws with their spread around each column's mean multiplied by
  `scale` (the draws themselves when it is 1)."""
  if scale == 1.0:
    return diff_SxK
  m = diff_SxK.mean(0)
  return m + scale * (diff_SxK - m)


def scaled_upper(diff_SxK: np.ndarray, q: float, scale: float = 1.0) -> np.ndarray:
  """The upper q quantile of each column of `spread_scaled` draws."""
  return np.quantile(spread_scaled(diff_SxK, scale), q, axis=0)


def decision_scale(draws_SxN: np.ndarray, y_N: np.ndarray, w_NxD: np.ndarray,
                   cells_N: np.ndarray, maximize: bool, ci: float) -> dict[str, Any]:
  """The split-conformal factor for the guard's paired difference (module docstring).

  Arguments as `guard_evidence`. In each cell where the bound's pick is not the run
  nearest uniform, r = (observed difference - draws' mean) / (upper (1+ci)/2 bound -
  draws' mean), with the difference the pick's loss minus the near-uniform run's (run
  noise stays in: erring wide). Returns the number of such cells ("cells") and "scale":
  the ceil((n + 1) q)-th smallest r, q = (1+ci)/2, or None (with "reason") when n is too
  small for that rank to exist or the quantile is not positive.
  """
  q = 0.5 * (1.0 + float(ci))
  r = []
  for cell, obs, pick, near in _cell_decisions(draws_SxN, y_N, w_NxD, cells_N, maximize,
                                               q):
    if pick == near:
      continue
    d_S = cell[:, pick] - cell[:, near]
    m, half = float(d_S.mean()), float(np.quantile(d_S, q) - d_S.mean())
    if half > 0:
      r.append((obs[pick] - obs[near] - m) / half)
  n = len(r)
  k = int(np.ceil((n + 1) * q))
  out: dict[str, Any] = {"cells": n, "scale": None}
  if k > n:
    need = next(m for m in range(1, 10 ** 6) if np.ceil((m + 1) * q) <= m)
    out["reason"] = f"{n} held-out decisions; a {q:.0%} conformal bound needs {need}"
    return out
  c = float(np.sort(r)[k - 1])
  if c <= 0:
    out["reason"] = f"conformal quantile {c:.3g} is not positive"
    return out
  out["scale"] = c
  return out


def guard_evidence(draws_SxN: np.ndarray, y_N: np.ndarray, w_NxD: np.ndarray,
                   cells_N: np.ndarray, maximize: bool, ci: float,
                   scale: float = 1.0) -> dict[str, Any]:
  """Scores the unguarded and the guarded safe decision on held-out cells.

  draws_SxN: calibrated held-out posterior draws of each run's outcome (each run's
    draws from fits that did not see its cell). y_N: the observed outcomes. w_NxD: the
    runs' mixtures. cells_N: each run's held-out (fold, pool state) cell. maximize:
    whether the outcome is maximised. ci: the credible level of the bounds (the upper
    (1+ci)/2 quantile of a loss is its bound). scale: the guard's paired differences
    have their spread scaled by it (`decision_scale`), as `recommend` does.

  Returns the number of cells with at least two distinct mixtures ("cells"), how many
  the guard changed ("changed"), the mean observed loss of each rule's choice over those
  cells ("loss_unguarded", "loss_guarded"; loss = -y when maximised), the standard
  error of the mean of their per-cell difference ("diff_se", guarded minus unguarded:
  how far the two means may differ by the runs' noise and the cells drawn; None with
  fewer than two cells) and "guard": True when the guarded rule's mean loss is strictly
  lower over at least MIN_CELLS cells.
  """
  q = 0.5 * (1.0 + float(ci))
  unguarded, guarded, changed = [], [], 0
  for cell, obs, pick, near in _cell_decisions(draws_SxN, y_N, w_NxD, cells_N, maximize,
                                               q):
    diff_ub = scaled_upper(cell - cell[:, [near]], q, scale)
    safe = pick if diff_ub[pick] <= 0 else int(np.argmin(np.round(diff_ub, 12)))
    changed += int(safe != pick)
    unguarded.append(obs[pick])
    guarded.append(obs[safe])
  n = len(unguarded)
  diff_N = np.asarray(guarded) - np.asarray(unguarded)
  out = {"cells": n, "changed": changed,
         "loss_unguarded": float(np.mean(unguarded)) if n else None,
         "loss_guarded": float(np.mean(guarded)) if n else None,
         "diff_se": float(np.std(diff_N, ddof=1) / np.sqrt(n)) if n > 1 else None,
         "guard": False}
  if n >= MIN_CELLS:
    out["guard"] = bool(out["loss_guarded"] < out["loss_unguarded"])
  return out
