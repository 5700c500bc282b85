"""Figures of a study, as pure functions `plot_*(data, ax=None) -> Figure`: no file I/O
and no backend switching, so they draw inline in a notebook and headless in a stage
(`artifacts.write_figure` saves them, under `matplotlib.rc_context(SAVE_RC)` for the
figures that are meant to be cropped to their content).

A multi-panel figure takes, as `ax`, a sequence of at least as many axes as it has
panels (filled in order), or draws a figure of its own when `ax` is None.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

if TYPE_CHECKING:
  from causalmix_jax.analysis.interpretation import Interpretation

# rcParams to save the report's and the interpretation's figures with (cropped to what
# is drawn): `with matplotlib.rc_context(SAVE_RC): artifacts.write_figure(path, fig)`.
SAVE_RC = {"savefig.bbox": "tight"}


def _axes(ax: Any, figsize: tuple[float, float]) -> tuple[Any, Any]:
  if ax is not None:
    return ax.figure, ax
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  return plt.subplots(figsize=figsize)


def _panels(ax: Any, n: int, rows: int, cols: int, **subplots_kw: Any) -> tuple[Any, Any]:
  """(figure, flat array of axes) for an n-panel figure: the given axes, or a new
  rows x cols grid."""
  if ax is not None:
    axes = np.ravel(np.asarray(ax, dtype=object))
    if axes.size < n:
      raise ValueError(f"this figure has {n} panels; got {axes.size} axes")
    return axes[0].figure, axes
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, axes = plt.subplots(rows, cols, squeeze=False, **subplots_kw)
  return fig, axes.ravel()


def plot_pred_vs_actual(cv: Mapping[str, Any], title: str, ax: Any = None) -> Any:
  """Held-out predictions against actual outcomes, with their intervals.

  cv: `surface.diagnostics.cross_validate`'s result (y, pred, lo, hi, r2, spearman).
  The prediction is the draws' mean and the interval their central quantiles, so with
  skewed draws a point can lie outside its own interval; each interval is drawn as it is.
  """
  fig, ax = _axes(ax, (4.5, 4.5))
  y, pred = np.asarray(cv["y"]), np.asarray(cv["pred"])
  ax.vlines(y, np.asarray(cv["lo"]), np.asarray(cv["hi"]), lw=0.6, alpha=0.6)
  ax.plot(y, pred, "o", ms=3, alpha=0.6)
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


def plot_mixtures(rows: Sequence[Any], domains: Sequence[str], outcome: str,
                  ax: Any = None) -> Any:
  """Grouped bars of the mixtures, and their predicted outcomes with intervals (two
  panels).

  rows: objects with `name`, `weights_D` and `predicted` ((mean, lo, hi) or None), as the
  report's mixture rows.
  """
  d = len(domains)
  fig, (ax0, ax1) = _panels(ax, 2, 1, 2, figsize=(max(6.0, 0.8 * d + 4), 3.4),
                            gridspec_kw={"width_ratios": [3, 1.3]}, layout="constrained")
  width = 0.8 / len(rows)
  for i, r in enumerate(rows):
    ax0.bar(np.arange(d) + (i - (len(rows) - 1) / 2) * width, r.weights_D, width,
            label=r.name, color=f"C{i}")
  ax0.set_xticks(np.arange(d))
  ax0.set_xticklabels(domains, rotation=30, ha="right")
  ax0.set_ylabel("weight")
  ax0.legend(fontsize=8)
  ax0.set_title("Mixtures")
  for i, r in enumerate(rows):
    if r.predicted is not None:
      m, lo, hi = r.predicted
      ax1.errorbar([i], [m], yerr=[[m - lo], [hi - m]], fmt="o", color=f"C{i}", capsize=4)
  ax1.set_xticks(range(len(rows)))
  ax1.set_xticklabels([r.name for r in rows], rotation=30, ha="right")
  ax1.set_ylabel(f"predicted {outcome}")
  ax1.set_title("Predicted outcome")
  return fig


def plot_losses(series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
                ax: Any = None) -> Any:
  """Loss curves of a training run: one panel for the training losses and one for the
  held-out ones (names with "eval" or starting with "target"), the empty one left out.

  series: loss name -> (steps, values); must not be empty.
  """
  if not series:
    raise ValueError("plot_losses needs at least one loss series")
  held = lambda k: "eval" in k or k.startswith("target")  # noqa: E731
  train = {k: v for k, v in series.items() if not held(k)}
  evals = {k: v for k, v in series.items() if held(k)}
  panels = [(t, s) for t, s in (("training", train), ("evaluation", evals)) if s]
  fig, axes = _panels(ax, len(panels), 1, len(panels),
                      figsize=(5.2 * len(panels), 3.4), layout="constrained")
  for a, (title, s) in zip(axes, panels):
    for k, (xs, ys) in sorted(s.items()):
      a.plot(xs, ys, marker="o" if len(xs) < 20 else None, ms=3, label=k)
    a.set_xlabel("step")
    a.set_ylabel("loss")
    a.set_title(f"Target run: {title} loss")
    a.legend(fontsize=7)
  return fig


# ----------------------------------------------------------------------------------------
# the CATE interpretation (`analysis.interpretation.Interpretation`)


def plot_theta(interp: Interpretation, ax: Any = None) -> Any:
  """Spread of each domain's marginal return over the pool states, with mean intervals."""
  t = interp.theta
  if t is None:
    raise ValueError(f"nothing was interpreted: {interp.skipped}")
  d = len(interp.domains)
  fig, ax = _axes(ax, (max(4.0, 0.9 * d + 2), 3.6))
  ax.boxplot([t.mean_NxD[:, k] for k in range(d)], showfliers=False)
  pos = np.arange(1, d + 1)
  mean = t.mean_NxD.mean(axis=0)
  ax.errorbar(pos + 0.25, mean, yerr=[mean - t.lo_NxD.mean(axis=0),
                                      t.hi_NxD.mean(axis=0) - mean],
              fmt="o", color="C3", ms=4, capsize=3,
              label=f"mean, average {t.ci:.0%} interval")
  ax.axhline(0.0, color="0.6", lw=0.8)
  ax.set_xticks(pos)
  ax.set_xticklabels(interp.domains, rotation=30, ha="right")
  ax.set_ylabel(f"theta: d {interp.outcome} / d log-ratio")
  ax.set_title(f"Marginal return per domain over {t.x_NxF.shape[0]} pool states")
  ax.legend(fontsize=8)
  return fig


def _pd_panels(interp: Interpretation, max_panels: int = 6) -> list[Any]:
  """The curves `plot_partial_dependence` draws: the top-ranked covariates whose grid
  is not a single value and that move some relative return."""
  by_name = {c.feature: c for c in interp.partial_dependence}
  return [by_name[e.feature] for e in interp.ranking
          if not by_name[e.feature].constant and e.theta_range > 0][:max_panels]


def plot_partial_dependence(interp: Interpretation, ax: Any = None,
                            max_panels: int = 6) -> Any:
  """Partial dependence of every domain's theta on the top-ranked covariates, one panel
  per covariate (`_pd_panels`); None when there is none to draw."""
  chosen = _pd_panels(interp, max_panels)
  if not chosen:
    return None
  cols = min(3, len(chosen))
  rows = math.ceil(len(chosen) / cols)
  fig, axes = _panels(ax, len(chosen), rows, cols, figsize=(4.2 * cols, 3.2 * rows),
                      layout="constrained")
  for a, curve in zip(axes, chosen):
    for k, dom in enumerate(interp.domains):
      a.plot(curve.grid_G, curve.mean_GxD[:, k], color=f"C{k % 10}", label=dom)
      a.fill_between(curve.grid_G, curve.lo_GxD[:, k], curve.hi_GxD[:, k],
                     color=f"C{k % 10}", alpha=0.15, lw=0)
    a.set_xlabel(curve.feature)
    a.set_ylabel("theta")
  for a in axes[len(chosen):]:
    a.axis("off")
  axes[0].legend(fontsize=7)
  fig.suptitle(f"Partial dependence of the marginal returns ({interp.outcome})")
  return fig


def plot_ranking(interp: Interpretation, ax: Any = None, max_bars: int = 20) -> Any:
  """Horizontal bars: how far each covariate moves the recommended mixture."""
  eff = list(interp.ranking[:max_bars])[::-1]
  fig, ax = _axes(ax, (6.0, 0.3 * len(eff) + 1.2))
  ax.barh([e.feature for e in eff], [e.mixture_shift for e in eff], color="C0")
  ax.set_xlabel("mixture shift over the covariate's range (total variation)")
  ax.set_title("Covariates ranked by how much they move the mixture")
  return fig
