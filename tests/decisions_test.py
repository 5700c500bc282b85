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
  # The standard error of the mean per-cell difference (guarded: run 0, unguarded: run
  # 1 in every cell), by hand, with run noise that differs from cell to cell.
  y = y + np.random.default_rng(1).normal(0.0, 0.05, len(y))
  g = decisions.guard_evidence(draws, y, w, cells, maximize=False, ci=0.9)
  diff = y[cells * 3 == np.arange(24)] - y[cells * 3 + 1 == np.arange(24)]
  assert g["changed"] == 8 and g["diff_se"] > 0
  assert g["diff_se"] == pytest.approx(np.std(diff, ddof=1) / np.sqrt(8))
  assert g["loss_guarded"] - g["loss_unguarded"] == pytest.approx(np.mean(diff))


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


def _normalised_errors(draws, y, cells, pick: int = 1, near: int = 0, q: float = 0.95):
  """By hand: each cell's (observed - mean) / (upper q bound - mean) of the difference
  between run `pick` and run `near` (the cells of `_cells`: three runs each)."""
  out = []
  for c in np.unique(cells):
    rows = np.flatnonzero(cells == c)
    d = draws[:, rows[pick]] - draws[:, rows[near]]
    out.append((y[rows[pick]] - y[rows[near]] - d.mean()) / (np.quantile(d, q) - d.mean()))
  return np.sort(out)


def test_decision_scale_is_the_conformal_rank_of_the_guards_errors():
  # Run 1 has the lowest bound in every cell and run 0 is nearest uniform; in truth
  # run 1 is worse than the draws say, so the bound on its difference must widen.
  draws, y, w, cells = _cells(40, np.array([0.0, -0.5, 0.1]), np.full(3, 0.3),
                              np.array([0.0, 0.4, 0.1]))
  out = decisions.decision_scale(draws, y, w, cells, maximize=False, ci=0.9)
  r = _normalised_errors(draws, y, cells)
  assert out["cells"] == 40
  assert out["scale"] == pytest.approx(r[int(np.ceil(41 * 0.95)) - 1])  # the 39th of 40
  assert out["scale"] > 1
  # Maximised outcomes read as gains: the same factor.
  again = decisions.decision_scale(-draws, -y, w, cells, maximize=True, ci=0.9)
  assert again["scale"] == pytest.approx(out["scale"])


def test_decision_scale_is_near_one_where_the_draws_are_right():
  # Observed outcomes drawn from the draws' own distribution: calibrated already.
  rng = np.random.default_rng(5)
  pred = np.array([0.0, -0.5, 0.1])
  draws, y, w, cells = _cells(600, pred, np.full(3, 0.3), pred)
  y = y + rng.standard_normal(len(y)) * 0.3
  out = decisions.decision_scale(draws, y, w, cells, maximize=False, ci=0.9)
  assert out["cells"] == 600 and 0.85 < out["scale"] < 1.15


def test_decision_scale_needs_enough_decisions():
  draws, y, w, cells = _cells(18, np.array([0.0, -0.5, 0.1]), np.full(3, 0.6),
                              np.array([0.0, 0.4, 0.1]))
  out = decisions.decision_scale(draws, y, w, cells, maximize=False, ci=0.9)
  assert out["cells"] == 18 and out["scale"] is None
  assert "needs 19" in out["reason"]
  # Cells where the pick is the near-uniform run have nothing to calibrate.
  draws, y, w, cells = _cells(30, np.array([-0.5, 0.0, 0.1]), np.full(3, 0.01),
                              np.array([-0.5, 0.0, 0.1]))
  out = decisions.decision_scale(draws, y, w, cells, maximize=False, ci=0.9)
  assert out["cells"] == 0 and out["scale"] is None


def test_a_wider_scale_makes_the_guard_fall_back_more():
  # Confident draws: at scale 1 the pick beats the near-uniform run at the bound; a
  # large enough factor on the difference's spread takes that confidence away.
  draws, y, w, cells = _cells(8, np.array([0.0, -0.5, 0.1]), np.full(3, 0.01),
                              np.array([0.0, 0.4, 0.1]))
  assert decisions.guard_evidence(draws, y, w, cells, False, 0.9)["changed"] == 0
  g = decisions.guard_evidence(draws, y, w, cells, False, 0.9, scale=100.0)
  assert g["changed"] == 8 and g["guard"]
  d = draws[:, 1:2] - draws[:, 0:1]
  np.testing.assert_allclose(decisions.scaled_upper(d, 0.95, 3.0),
                             d.mean(0) + 3.0 * (np.quantile(d, 0.95, axis=0) - d.mean(0)))
  np.testing.assert_array_equal(decisions.scaled_upper(d, 0.95), np.quantile(d, 0.95, 0))
