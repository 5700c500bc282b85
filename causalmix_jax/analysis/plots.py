"""Figures of a study, as pure functions `plot_*(data, ax=None) -> Figure`: no file I/O
and no backend switching, so they draw inline in a notebook and headless in a stage
(`artifacts.write_figure` saves them)."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np


def _axes(ax: Any, figsize: tuple[float, float]) -> tuple[Any, Any]:
  if ax is not None:
    return ax.figure, ax
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  return plt.subplots(figsize=figsize)


def plot_pred_vs_actual(cv: Mapping[str, Any], title: str, ax: Any = None) -> Any:
  """Held-out predictions against actual outcomes, with their intervals.

  cv: `surface.diagnostics.cross_validate`'s result (y, pred, lo, hi, r2, spearman).
  """
  fig, ax = _axes(ax, (4.5, 4.5))
  y, pred = np.asarray(cv["y"]), np.asarray(cv["pred"])
  ax.errorbar(y, pred, yerr=[pred - np.asarray(cv["lo"]), np.asarray(cv["hi"]) - pred],
              fmt="o", ms=3, alpha=0.6, elinewidth=0.6)
  lo = float(min(np.min(y), np.min(pred)))
  hi = float(max(np.max(y), np.max(pred)))
  ax.plot([lo, hi], [lo, hi], "k--", lw=1)
  ax.set_xlabel("actual")
  ax.set_ylabel("predicted (held-out fold, 90% interval)")
  ax.set_title(f"{title}\nR^2 {cv['r2']:.3f}, Spearman {cv['spearman']:.3f}")
  fig.tight_layout()
  return fig
