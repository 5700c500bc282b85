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


def plot_validation(rows: Any, outcome: str, ax: Any = None) -> Any:
  """Realized outcome per validated mixture (mean over seeds, with its interval) and,
  where made, the surface's predictive interval beside it.

  rows: the validate stage's table (records or a DataFrame with mixture, mean, lo, hi
  and optionally predicted, predicted_lo, predicted_hi).
  """
  import pandas as pd  # pylint: disable=import-outside-toplevel
  t = pd.DataFrame(rows)
  fig, ax = _axes(ax, (1.0 + 0.7 * len(t), 3.6))
  x = np.arange(len(t))
  mean = t["mean"].to_numpy(float)
  err = np.abs(np.stack([mean - t["lo"].to_numpy(float), t["hi"].to_numpy(float) - mean]))
  ax.bar(x, mean, yerr=np.nan_to_num(err), capsize=3, color="#4c72b0", label="realized")
  if "predicted" in t:
    p = t["predicted"].to_numpy(float)
    ax.errorbar(x + 0.25, p, yerr=np.abs(np.stack([p - t["predicted_lo"].to_numpy(float),
                                                   t["predicted_hi"].to_numpy(float) - p])),
                fmt="o", color="#dd8452", ms=4, label="predicted (one run)")
  lo = np.nanmin(t["lo"].to_numpy(float)) if np.isfinite(t["lo"]).any() else mean.min()
  hi = np.nanmax(t["hi"].to_numpy(float)) if np.isfinite(t["hi"]).any() else mean.max()
  pad = 0.5 * (hi - lo) + 1e-6
  ax.set_ylim(lo - pad, hi + pad)
  ax.set_xticks(x)
  ax.set_xticklabels(t["mixture"], rotation=35, ha="right")
  ax.set_ylabel(outcome)
  ax.legend(fontsize=8)
  fig.tight_layout()
  return fig
