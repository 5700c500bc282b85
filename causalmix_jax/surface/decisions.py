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
"""

from __future__ import annotations

from typing import Any

import numpy as np

# Fewest held-out cells with a decision to make before the evidence counts.
MIN_CELLS = 4


def guard_evidence(draws_SxN: np.ndarray, y_N: np.ndarray, w_NxD: np.ndarray,
                   cells_N: np.ndarray, maximize: bool, ci: float) -> dict[str, Any]:
  """Scores the unguarded and the guarded safe decision on held-out cells.

  draws_SxN: calibrated held-out posterior draws of each run's outcome (each run's
    draws from fits that did not see its cell). y_N: the observed outcomes. w_NxD: the
    runs' mixtures. cells_N: each run's held-out (fold, pool state) cell. maximize:
    whether the outcome is maximised. ci: the credible level of the bounds (the upper
    (1+ci)/2 quantile of a loss is its bound).

  Returns the number of cells with at least two distinct mixtures ("cells"), how many
  the guard changed ("changed"), the mean observed loss of each rule's choice over those
  cells ("loss_unguarded", "loss_guarded"; loss = -y when maximised) and "guard": True
  when the guarded rule's mean loss is strictly lower over at least MIN_CELLS cells.
  """
  sign = -1.0 if maximize else 1.0
  loss_SxN = sign * np.asarray(draws_SxN, np.float64)
  obs_N = sign * np.asarray(y_N, np.float64)
  w_NxD = np.asarray(w_NxD, np.float64)
  q = 0.5 * (1.0 + float(ci))
  uniform_D = np.full(w_NxD.shape[1], 1.0 / w_NxD.shape[1])
  unguarded, guarded, changed = [], [], 0
  for c in np.unique(cells_N):
    rows = np.flatnonzero(cells_N == c)
    if len(np.unique(np.round(w_NxD[rows], 9), axis=0)) < 2:
      continue
    cell = loss_SxN[:, rows]
    bound = np.quantile(cell, q, axis=0)
    pick = int(np.argmin(np.round(bound, 12)))
    near = int(np.argmin(np.sum((w_NxD[rows] - uniform_D) ** 2, axis=1)))
    diff_ub = np.quantile(cell - cell[:, [near]], q, axis=0)
    safe = pick if diff_ub[pick] <= 0 else int(np.argmin(np.round(diff_ub, 12)))
    changed += int(safe != pick)
    unguarded.append(obs_N[rows[pick]])
    guarded.append(obs_N[rows[safe]])
  n = len(unguarded)
  out = {"cells": n, "changed": changed,
         "loss_unguarded": float(np.mean(unguarded)) if n else None,
         "loss_guarded": float(np.mean(guarded)) if n else None, "guard": False}
  if n >= MIN_CELLS:
    out["guard"] = bool(out["loss_guarded"] < out["loss_unguarded"])
  return out
