"""Tests of the held-out judgement of the safe objective's uniform guard
(`surface/decisions.py`)."""

from __future__ import annotations

import numpy as np
import pytest

from causalmix_jax.surface import decisions

D = 3
UNIFORM = np.full(D, 1.0 / D)
# One cell's runs: the first is nearest uniform, the other two lean on one domain each.
CELL_W = np.array([[0.34, 0.33, 0.33], [0.8, 0.1, 0.1], [0.1, 0.8, 0.1]])


def _cells(n_cells: int, pred_N: np.ndarray, sd_N: np.ndarray, obs_N: np.ndarray,
           n_draws: int = 400, seed: int = 0):
  """n_cells copies of one three-run cell: posterior draws around pred (sd per run,
  independent across runs), the observed outcomes obs (plus a per-cell level)."""
  rng = np.random.default_rng(seed)
  level_C = rng.normal(0, 1.0, n_cells)
  draws = (np.tile(pred_N, n_cells)[None] + np.repeat(level_C, 3)[None]
           + rng.standard_normal((n_draws, 3 * n_cells)) * np.tile(sd_N, n_cells)[None])
  y = np.tile(obs_N, n_cells) + np.repeat(level_C, 3)
  return draws, y, np.tile(CELL_W, (n_cells, 1)), np.repeat(np.arange(n_cells), 3)


def test_guard_wins_where_the_confident_looking_pick_is_wrong():
  # The draws favour run 1 (lowest bound) but cannot tell it from uniform's stand-in
  # at the upper bound of the difference; in truth run 1 is the worst.
  draws, y, w, cells = _cells(8, np.array([0.0, -0.5, 0.1]), np.full(3, 0.6),
                              np.array([0.0, 0.4, 0.1]))
  g = decisions.guard_evidence(draws, y, w, cells, maximize=False, ci=0.9)
  assert g["cells"] == 8 and g["changed"] == 8
  assert g["loss_guarded"] == pytest.approx(np.mean(y[cells * 3 == np.arange(24)]))
  assert g["loss_guarded"] < g["loss_unguarded"] and g["guard"]


def test_guard_stays_off_where_the_pick_is_right():
  # Same uncertain draws, but run 1 really is the best: the guard's fallback to the
  # near-uniform run costs, so the evidence says no.
  draws, y, w, cells = _cells(8, np.array([0.0, -0.5, 0.1]), np.full(3, 0.6),
                              np.array([0.0, -0.5, 0.1]))
  g = decisions.guard_evidence(draws, y, w, cells, maximize=False, ci=0.9)
  assert g["changed"] == 8 and not g["guard"]
  # Confident draws: the pick beats the stand-in at the bound, nothing changes.
  draws, y, w, cells = _cells(8, np.array([0.0, -0.5, 0.1]), np.full(3, 0.01),
                              np.array([0.0, 0.4, 0.1]))
  g = decisions.guard_evidence(draws, y, w, cells, maximize=False, ci=0.9)
  assert g["changed"] == 0 and g["loss_guarded"] == g["loss_unguarded"]
  assert not g["guard"]


def test_guard_reads_maximised_outcomes_as_gains():
  # The same case as the first test, in accuracy units (higher is better).
  draws, y, w, cells = _cells(8, np.array([0.0, -0.5, 0.1]), np.full(3, 0.6),
                              np.array([0.0, 0.4, 0.1]))
  g_loss = decisions.guard_evidence(draws, y, w, cells, maximize=False, ci=0.9)
  g_gain = decisions.guard_evidence(-draws, -y, w, cells, maximize=True, ci=0.9)
  assert g_gain == g_loss


def test_guard_needs_enough_cells_with_a_choice():
  draws, y, w, cells = _cells(decisions.MIN_CELLS - 1, np.array([0.0, -0.5, 0.1]),
                              np.full(3, 0.6), np.array([0.0, 0.4, 0.1]))
  g = decisions.guard_evidence(draws, y, w, cells, maximize=False, ci=0.9)
  assert g["cells"] == decisions.MIN_CELLS - 1
  assert g["loss_guarded"] < g["loss_unguarded"] and not g["guard"]
  # A cell whose runs share one mixture has no decision to make and is not counted.
  w_same = np.tile(UNIFORM, (len(y), 1))
  g = decisions.guard_evidence(draws, y, w_same, cells, maximize=False, ci=0.9)
  assert g["cells"] == 0 and g["loss_guarded"] is None and not g["guard"]
