"""The CATE interpreter: explains how a fitted surface's marginal returns theta_d(x) of each
domain depend on the pool covariates x, as rules, partial dependence and a ranking.

Given a surface (anything with `domains`, `features`, `outcome`, `maximize` and
`theta(x, ci) -> Prediction(mean, lo, hi)`) and covariate rows (the sweep's pool states):

- `theta_over_rows` evaluates theta_d(x) with credible intervals on every row;
- `fit_tree` is a small CART regression tree (numpy, multi-output, exhaustive splits with
  a minimum leaf size); `interpret` fits one on the *relative* returns (theta_d minus the
  mean over domains, since on the simplex only differences between domains move the
  outcome) and `favour_rules` reads its leaves as "if ...: favour d" rules;
- `partial_dependence` averages theta over the rows with one covariate swept over a grid
  between two of its observed quantiles;
- `rank_covariates` orders the covariates by how far they move the recommended mixture.
  The default recommendation is a multiplicative step from the reference mixture along
  the relative returns (log w_d = log w_ref_d - eta * s * theta_rel_d(x), s = +1 when
  lower is better), eta scaled so the largest step over the rows is one unit of
  log-ratio; callers can pass their own `recommend_fn` (e.g. the optimiser).

Everything returns frozen dataclasses of numpy arrays; `write_figures` draws PNGs with
matplotlib's Agg backend.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from typing import Any, Callable, Collection, Protocol, Sequence

import numpy as np


class ThetaSurface(Protocol):
  """What the interpreter needs of a fitted surface (see docs/architecture.md)."""
  domains: Sequence[str]
  features: Sequence[str]
  outcome: str

  def theta(self, x: Any = None, ci: float = 0.9) -> Any:
    ...


def lower_is_better(surface: Any) -> bool:
  """True unless the surface's outcome is marked as maximised."""
  m = getattr(surface, "maximize", False)
  if isinstance(m, (bool, np.bool_)):
    return not bool(m)
  if isinstance(m, Collection) and not isinstance(m, str):
    return surface.outcome not in m
  return not bool(m)


# ----------------------------------------------------------------------------------------
# theta over covariate rows


@dataclasses.dataclass(frozen=True)
class ThetaTable:
  """theta_d(x) at covariate rows: posterior mean and credible bounds, N x D each."""
  domains: tuple[str, ...]
  features: tuple[str, ...]
  x_NxF: np.ndarray
  mean_NxD: np.ndarray
  lo_NxD: np.ndarray
  hi_NxD: np.ndarray
  ci: float

  @property
  def relative_NxD(self) -> np.ndarray:
    """theta minus its mean over domains (what moves the outcome on the simplex)."""
    return self.mean_NxD - self.mean_NxD.mean(axis=1, keepdims=True)


def _as_rows(a: Any, n: int, d: int, what: str) -> np.ndarray:
  arr = np.asarray(a, dtype=np.float64)
  if arr.shape == (d,) and n == 1:
    arr = arr[None]
  if arr.shape != (n, d):
    raise ValueError(f"surface.theta returned {what} of shape {arr.shape}; "
                     f"expected ({n}, {d}) for {n} covariate rows and {d} domains")
  return arr


def _theta_batch(surface: ThetaSurface, x_NxF: np.ndarray,
                 ci: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """theta at many rows: one batched call when the surface takes N x F rows (checked
  against a one-row call on the first row), else one call per row."""
  n, d = x_NxF.shape[0], len(surface.domains)
  if n > 1:
    try:
      p = surface.theta(x_NxF, ci=ci)
      batched = np.shape(p.mean) == (n, d)
    except (TypeError, ValueError, IndexError):
      batched = False  # the surface takes one covariate vector at a time
    if batched:
      first = _as_rows(surface.theta(x_NxF[0], ci=ci).mean, 1, d, "mean")[0]
      mean = _as_rows(p.mean, n, d, "mean")
      tol = 1e-6 * max(1.0, float(np.abs(first).max()))
      if np.allclose(mean[0], first, rtol=1e-4, atol=tol):
        return mean, _as_rows(p.lo, n, d, "lo"), _as_rows(p.hi, n, d, "hi")
  means, los, his = [], [], []
  for row in x_NxF:
    p = surface.theta(row, ci=ci)
    means.append(_as_rows(p.mean, 1, d, "mean")[0])
    los.append(_as_rows(p.lo, 1, d, "lo")[0])
    his.append(_as_rows(p.hi, 1, d, "hi")[0])
  return np.stack(means), np.stack(los), np.stack(his)


def theta_over_rows(surface: ThetaSurface, x_NxF: np.ndarray,
                    ci: float = 0.9) -> ThetaTable:
  """Evaluates the surface's marginal returns at every covariate row."""
  x_NxF = np.asarray(x_NxF, dtype=np.float64)
  features = tuple(surface.features)
  if x_NxF.ndim != 2 or x_NxF.shape[1] != len(features):
    raise ValueError(f"covariate rows have shape {x_NxF.shape}; the surface has "
                     f"{len(features)} features {list(features)}")
  if not np.all(np.isfinite(x_NxF)):
    bad = sorted({features[j] for j in np.nonzero(~np.isfinite(x_NxF))[1]})
    raise ValueError(f"covariate rows contain NaN/Inf in feature(s) {bad}")
  mean, lo, hi = _theta_batch(surface, x_NxF, ci)
  return ThetaTable(tuple(surface.domains), features, x_NxF, mean, lo, hi, ci)


# ----------------------------------------------------------------------------------------
# CART


@dataclasses.dataclass(frozen=True)
class TreeNode:
  """One node. Internal nodes send x[feature] <= threshold left, the rest right."""
  value: np.ndarray  # (K,) mean target of the rows in the node
  n: int
  sse: float  # sum of squared deviations from `value`
  feature: int = -1
  threshold: float = math.nan
  left: int = -1
  right: int = -1

  @property
  def is_leaf(self) -> bool:
    return self.feature < 0


@dataclasses.dataclass(frozen=True)
class Condition:
  feature: str
  op: str  # "<=" or ">"
  threshold: float

  def text(self) -> str:
    return f"{self.feature} {self.op} {self.threshold:.4g}"


@dataclasses.dataclass(frozen=True)
class RegressionTree:
  """A fitted CART tree; node 0 is the root."""
  nodes: tuple[TreeNode, ...]
  feature_names: tuple[str, ...]
  output_names: tuple[str, ...]

  @property
  def root(self) -> TreeNode:
    return self.nodes[0]

  @property
  def depth(self) -> int:
    def rec(i: int) -> int:
      nd = self.nodes[i]
      return 0 if nd.is_leaf else 1 + max(rec(nd.left), rec(nd.right))
    return rec(0)

  def apply(self, x_NxF: np.ndarray) -> np.ndarray:
    """Index of the leaf each row falls in."""
    x_NxF = np.asarray(x_NxF, dtype=np.float64)
    out = np.zeros(x_NxF.shape[0], dtype=np.int64)
    for r, row in enumerate(x_NxF):
      i = 0
      while not self.nodes[i].is_leaf:
        nd = self.nodes[i]
        i = nd.left if row[nd.feature] <= nd.threshold else nd.right
      out[r] = i
    return out

  def predict(self, x_NxF: np.ndarray) -> np.ndarray:
    """N x K predictions (the mean target of each row's leaf)."""
    return np.stack([self.nodes[i].value for i in self.apply(x_NxF)])

  def leaves(self) -> list[tuple[tuple[Condition, ...], TreeNode]]:
    """Every leaf with the simplified conditions on its path (left to right)."""
    out: list[tuple[tuple[Condition, ...], TreeNode]] = []

    def rec(i: int, path: tuple[tuple[int, str, float], ...]) -> None:
      nd = self.nodes[i]
      if nd.is_leaf:
        out.append((_simplify(path, self.feature_names), nd))
        return
      rec(nd.left, path + ((nd.feature, "<=", nd.threshold),))
      rec(nd.right, path + ((nd.feature, ">", nd.threshold),))
    rec(0, ())
    return out

  def feature_importance(self) -> np.ndarray:
    """Share of the total SSE reduction due to splits on each feature (sums to 1, or 0)."""
    imp = np.zeros(len(self.feature_names))
    for nd in self.nodes:
      if not nd.is_leaf:
        imp[nd.feature] += nd.sse - self.nodes[nd.left].sse - self.nodes[nd.right].sse
    total = imp.sum()
    return imp / total if total > 0 else imp


def _simplify(path: tuple[tuple[int, str, float], ...],
              names: Sequence[str]) -> tuple[Condition, ...]:
  """Keeps the tightest bound per feature and side, in order of first appearance."""
  upper: dict[int, float] = {}
  lower: dict[int, float] = {}
  order: list[tuple[int, str]] = []
  for f, op, t in path:
    if op == "<=":
      upper[f] = min(upper.get(f, math.inf), t)
    else:
      lower[f] = max(lower.get(f, -math.inf), t)
    if (f, op) not in order:
      order.append((f, op))
  return tuple(Condition(names[f], op, upper[f] if op == "<=" else lower[f])
               for f, op in order)


def describe(conditions: Sequence[Condition]) -> str:
  """Readable conjunction; two bounds on one feature read as "lo < feature <= hi"."""
  if not conditions:
    return "always"
  parts: list[str] = []
  seen: set[str] = set()
  for c in conditions:
    if c.feature in seen:
      continue
    seen.add(c.feature)
    mine = {d.op: d.threshold for d in conditions if d.feature == c.feature}
    if len(mine) == 2:
      parts.append(f"{mine['>']:.4g} < {c.feature} <= {mine['<=']:.4g}")
    else:
      parts.append(c.text())
  return " and ".join(parts)


def _best_split(x_nxF: np.ndarray, y_nxK: np.ndarray,
                min_leaf: int) -> tuple[int, float, float]:
  """(feature, threshold, sse reduction) of the best split, feature -1 if none."""
  n = x_nxF.shape[0]
  yc = y_nxK - y_nxK.mean(axis=0)  # centred: stable sums of squares
  total_sse = float((yc ** 2).sum())
  best = (-1, math.nan, 0.0)
  if n < 2 * min_leaf or total_sse <= 0.0:
    return best
  tot = yc.sum(axis=0)
  tot2 = float((yc ** 2).sum())
  for f in range(x_nxF.shape[1]):
    order = np.argsort(x_nxF[:, f], kind="stable")
    xs = x_nxF[order, f]
    ys = yc[order]
    cs = np.cumsum(ys, axis=0)[:-1]  # left sums for left sizes 1..n-1
    cs2 = np.cumsum((ys ** 2).sum(axis=1))[:-1]
    n_left = np.arange(1, n, dtype=np.float64)
    n_right = n - n_left
    sse_left = cs2 - (cs ** 2).sum(axis=1) / n_left
    right = tot - cs
    sse_right = (tot2 - cs2) - (right ** 2).sum(axis=1) / n_right
    gain = total_sse - sse_left - sse_right
    valid = (xs[1:] > xs[:-1]) & (n_left >= min_leaf) & (n_right >= min_leaf)
    if not valid.any():
      continue
    gain = np.where(valid, gain, -np.inf)
    i = int(np.argmax(gain))
    if gain[i] > best[2] * (1 + 1e-12) + 1e-12 * total_sse:
      best = (f, float(0.5 * (xs[i] + xs[i + 1])), float(gain[i]))
  return best


def fit_tree(x_NxF: np.ndarray, y: np.ndarray, *, max_depth: int, min_samples_leaf: int = 1,
             feature_names: Sequence[str] | None = None,
             output_names: Sequence[str] | None = None) -> RegressionTree:
  """Fits a CART regression tree by exhaustive search for the largest drop in summed
  squared error (over all outputs when y is N x K). Ties go to the lower feature index
  and the lower threshold; a split must leave `min_samples_leaf` rows on each side and
  reduce the error by more than 1e-12 of the target's total sum of squares."""
  x_NxF = np.asarray(x_NxF, dtype=np.float64)
  y_NxK = np.asarray(y, dtype=np.float64)
  if y_NxK.ndim == 1:
    y_NxK = y_NxK[:, None]
  if x_NxF.ndim != 2 or y_NxK.ndim != 2 or x_NxF.shape[0] != y_NxK.shape[0]:
    raise ValueError(f"fit_tree needs x (N, F) and y (N,) or (N, K); got {x_NxF.shape} "
                     f"and {np.shape(y)}")
  if x_NxF.shape[0] == 0:
    raise ValueError("fit_tree needs at least one row")
  if max_depth < 0 or min_samples_leaf < 1:
    raise ValueError(f"max_depth must be >= 0 and min_samples_leaf >= 1; got "
                     f"{max_depth}, {min_samples_leaf}")
  if not (np.all(np.isfinite(x_NxF)) and np.all(np.isfinite(y_NxK))):
    raise ValueError("fit_tree inputs contain NaN/Inf")
  fnames = tuple(feature_names or (f"x{j}" for j in range(x_NxF.shape[1])))
  onames = tuple(output_names or (f"y{k}" for k in range(y_NxK.shape[1])))
  if len(fnames) != x_NxF.shape[1] or len(onames) != y_NxK.shape[1]:
    raise ValueError(f"{len(fnames)} feature names for {x_NxF.shape[1]} features or "
                     f"{len(onames)} output names for {y_NxK.shape[1]} outputs")
  nodes: list[dict[str, Any]] = []
  # Splits must explain more than rounding: a target that is constant up to float noise
  # (e.g. a surface whose returns do not depend on x) stays one leaf.
  min_gain = 1e-12 * float((y_NxK ** 2).sum())

  def grow(idx: np.ndarray, depth: int) -> int:
    ys = y_NxK[idx]
    value = ys.mean(axis=0)
    me = len(nodes)
    nodes.append(dict(value=value, n=int(idx.size), sse=float(((ys - value) ** 2).sum())))
    if depth >= max_depth:
      return me
    f, t, gain = _best_split(x_NxF[idx], ys, min_samples_leaf)
    if f < 0 or gain <= min_gain:
      return me
    go_left = x_NxF[idx, f] <= t
    left = grow(idx[go_left], depth + 1)
    right = grow(idx[~go_left], depth + 1)
    nodes[me].update(feature=f, threshold=t, left=left, right=right)
    return me

  grow(np.arange(x_NxF.shape[0]), 0)
  return RegressionTree(tuple(TreeNode(**nd) for nd in nodes), fnames, onames)


# ----------------------------------------------------------------------------------------
# rules


@dataclasses.dataclass(frozen=True)
class Rule:
  """A leaf of the favour tree read as a rule."""
  conditions: tuple[Condition, ...]
  favour: str  # domain with the best relative return in the leaf ("" if all equal)
  favour_effect: float  # its relative return (outcome units per unit log-ratio)
  avoid: str  # domain with the worst relative return ("" if all equal)
  avoid_effect: float
  n: int  # covariate rows in the leaf
  n_total: int
  text: str


def favour_rules(tree: RegressionTree, *, lower_is_better: bool = True,
                 outcome: str = "outcome") -> tuple[Rule, ...]:
  """Reads each leaf of a tree fitted on relative returns (outputs = domains) as
  "if <conditions>: favour <domain>"; the favoured domain is the one whose extra weight
  helps the outcome most relative to the average domain."""
  n_total = tree.root.n
  rules = []
  for conds, leaf in tree.leaves():
    v = leaf.value
    best = int(np.argmin(v) if lower_is_better else np.argmax(v))
    worst = int(np.argmax(v) if lower_is_better else np.argmin(v))
    fav, avo = tree.output_names[best], tree.output_names[worst]
    where = f"if {describe(conds)}" if conds else "always"
    if np.ptp(v) <= 1e-12 * max(1.0, float(np.abs(v).max())):
      fav = avo = ""
      text = (f"{where}: no domain stands out (equal marginal returns) "
              f"[{leaf.n} of {n_total} pool states]")
    else:
      text = (f"{where}: favour {fav} ({v[best]:+.3g} {outcome} per unit log-ratio vs "
              f"the average domain), avoid {avo} ({v[worst]:+.3g}) "
              f"[{leaf.n} of {n_total} pool states]")
    rules.append(Rule(conds, fav, float(v[best]), avo, float(v[worst]), leaf.n, n_total,
                      text))
  return tuple(rules)


def tree_rule_lines(tree: RegressionTree, output: int = 0, unit: str = "") -> list[str]:
  """Plain rules for a (single-output) tree: "if ...: <value>" per leaf."""
  lines = []
  for conds, leaf in tree.leaves():
    where = f"if {describe(conds)}" if conds else "always"
    lines.append(f"{where}: {leaf.value[output]:+.3g}{unit} [{leaf.n} rows]")
  return lines


# ----------------------------------------------------------------------------------------
# partial dependence and ranking


@dataclasses.dataclass(frozen=True)
class PartialDependence:
  """theta_d averaged over the rows with covariate `feature` set to each grid value.

  lo/hi are the row-averaged pointwise credible bounds. `ice_GxRxD` keeps the per-row
  curves (individual conditional expectations) the averages come from."""
  feature: str
  grid_G: np.ndarray
  mean_GxD: np.ndarray
  lo_GxD: np.ndarray
  hi_GxD: np.ndarray
  ice_GxRxD: np.ndarray

  @property
  def constant(self) -> bool:
    return bool(self.grid_G[-1] <= self.grid_G[0])

  @property
  def relative_GxD(self) -> np.ndarray:
    return self.mean_GxD - self.mean_GxD.mean(axis=1, keepdims=True)


def covariate_grid(x_N: np.ndarray, n_grid: int, q_lo: float = 0.05,
                   q_hi: float = 0.95) -> np.ndarray:
  """n_grid evenly spaced values between two observed quantiles of a covariate."""
  if not 0.0 <= q_lo <= q_hi <= 1.0:
    raise ValueError(f"grid quantiles must satisfy 0 <= lo <= hi <= 1; got {q_lo}, {q_hi}")
  if n_grid < 2:
    raise ValueError(f"n_grid must be >= 2; got {n_grid}")
  lo, hi = np.quantile(np.asarray(x_N, dtype=np.float64), [q_lo, q_hi])
  return np.linspace(lo, hi, n_grid)


def partial_dependence(surface: ThetaSurface, x_RxF: np.ndarray, feature: int | str, *,
                       n_grid: int = 25, q_lo: float = 0.05, q_hi: float = 0.95,
                       ci: float = 0.9) -> PartialDependence:
  """1-D partial dependence of every theta_d on one covariate."""
  x_RxF = np.asarray(x_RxF, dtype=np.float64)
  names = tuple(surface.features)
  j = names.index(feature) if isinstance(feature, str) else int(feature)
  if not 0 <= j < len(names):
    raise ValueError(f"feature index {j} out of range for features {list(names)}")
  grid = covariate_grid(x_RxF[:, j], n_grid, q_lo, q_hi)
  r = x_RxF.shape[0]
  x_all = np.repeat(x_RxF[None], grid.size, axis=0)  # G x R x F
  x_all[:, :, j] = grid[:, None]
  mean, lo, hi = _theta_batch(surface, x_all.reshape(-1, x_RxF.shape[1]), ci)
  d = mean.shape[1]
  ice = mean.reshape(grid.size, r, d)
  return PartialDependence(names[j], grid, ice.mean(axis=1),
                           lo.reshape(grid.size, r, d).mean(axis=1),
                           hi.reshape(grid.size, r, d).mean(axis=1), ice)


@dataclasses.dataclass(frozen=True)
class CovariateEffect:
  """How much one covariate moves the recommendation.

  mixture_shift: mean over rows of the largest total-variation distance between the
    recommended mixtures at any two grid values of the covariate (0..1).
  theta_range: the largest range over the grid of a domain's partial-dependence
    relative return (outcome units per unit log-ratio).
  tree_importance: share of the favour tree's error reduction from splits on it.
  favoured_lo / favoured_hi: the domain with the best relative return at the low / high
    end of the grid (partial dependence)."""
  feature: str
  mixture_shift: float
  theta_range: float
  tree_importance: float
  favoured_lo: str
  favoured_hi: str


def step_recommendation(rel_theta_NxD: np.ndarray, w_ref_D: np.ndarray, eta: float,
                        lower_is_better: bool) -> np.ndarray:
  """Multiplicative step from the reference along the relative returns, N x D."""
  s = 1.0 if lower_is_better else -1.0
  logits = np.log(np.clip(w_ref_D, 1e-12, None))[None] - eta * s * rel_theta_NxD
  logits -= logits.max(axis=1, keepdims=True)
  w = np.exp(logits)
  return w / w.sum(axis=1, keepdims=True)


def _tv_diameter(w_GxRxD: np.ndarray) -> np.ndarray:
  """Per row, the largest total-variation distance between any two grid points (R,)."""
  diff = np.abs(w_GxRxD[:, None] - w_GxRxD[None]).sum(axis=-1) * 0.5  # G x G x R
  return diff.max(axis=(0, 1))


def rank_covariates(pds: Sequence[PartialDependence], *, domains: Sequence[str],
                    lower_is_better: bool, eta: float, w_ref_D: np.ndarray,
                    tree: RegressionTree | None = None,
                    recommend_fn: Callable[[np.ndarray], np.ndarray] | None = None,
                    x_RxF: np.ndarray | None = None,
                    features: Sequence[str] | None = None) -> tuple[CovariateEffect, ...]:
  """Orders covariates by how far they move the recommended mixture (largest first).

  With `recommend_fn` (covariate vector -> weights), the mixtures come from it, evaluated
  on the rows `x_RxF` with the covariate at each grid value; otherwise from
  `step_recommendation` on the partial-dependence curves."""
  imp = tree.feature_importance() if tree is not None else None
  tree_names = list(tree.feature_names) if tree is not None else []
  effects = []
  for pd in pds:
    g, r, d = pd.ice_GxRxD.shape
    if pd.constant:
      shift = 0.0
    elif recommend_fn is not None:
      if x_RxF is None or features is None:
        raise ValueError("rank_covariates with recommend_fn needs x_RxF and features")
      j = list(features).index(pd.feature)
      w = np.empty((g, r, d))
      for gi, v in enumerate(pd.grid_G):
        for ri in range(r):
          row = np.array(x_RxF[ri], dtype=np.float64)
          row[j] = v
          w[gi, ri] = np.asarray(recommend_fn(row), dtype=np.float64)
      shift = float(_tv_diameter(w).mean())
    else:
      rel = pd.ice_GxRxD - pd.ice_GxRxD.mean(axis=-1, keepdims=True)
      w = step_recommendation(rel.reshape(g * r, d), w_ref_D, eta,
                              lower_is_better).reshape(g, r, d)
      shift = float(_tv_diameter(w).mean())
    rel_pd = pd.relative_GxD
    theta_range = float((rel_pd.max(axis=0) - rel_pd.min(axis=0)).max())
    pick = np.argmin if lower_is_better else np.argmax
    effects.append(CovariateEffect(
        pd.feature, shift, theta_range,
        float(imp[tree_names.index(pd.feature)]) if imp is not None and
        pd.feature in tree_names else 0.0,
        domains[int(pick(rel_pd[0]))], domains[int(pick(rel_pd[-1]))]))
  return tuple(sorted(effects, key=lambda e: (-e.mixture_shift, -e.theta_range,
                                              e.feature)))


# ----------------------------------------------------------------------------------------
# the whole interpretation


@dataclasses.dataclass(frozen=True)
class Interpretation:
  """Everything the interpreter found for one surface and one set of covariate rows."""
  domains: tuple[str, ...]
  features: tuple[str, ...]
  outcome: str
  lower_is_better: bool
  theta: ThetaTable
  favour_tree: RegressionTree
  rules: tuple[Rule, ...]
  domain_trees: dict[str, RegressionTree]
  partial_dependence: tuple[PartialDependence, ...]
  ranking: tuple[CovariateEffect, ...]
  eta: float  # log-ratio step per unit relative return used by the default ranking
  n_rows_total: int  # distinct covariate rows before subsampling


def select_rows(x_NxF: np.ndarray, max_rows: int) -> tuple[np.ndarray, int]:
  """Distinct rows in first-appearance order, thinned evenly to at most `max_rows`."""
  x_NxF = np.asarray(x_NxF, dtype=np.float64)
  if x_NxF.ndim != 2 or x_NxF.shape[0] == 0:
    raise ValueError(f"need at least one covariate row (N, F); got shape {x_NxF.shape}")
  _, first = np.unique(x_NxF, axis=0, return_index=True)
  uniq = x_NxF[np.sort(first)]
  n = uniq.shape[0]
  if max_rows > 0 and n > max_rows:
    uniq = uniq[np.linspace(0, n - 1, max_rows).round().astype(int)]
  return uniq, n


def interpret(surface: ThetaSurface, x_NxF: np.ndarray, *, tree_depth: int = 3,
              min_samples_leaf: int = 5, n_grid: int = 25, q_lo: float = 0.05,
              q_hi: float = 0.95, ci: float = 0.9, max_rows: int = 256,
              pd_rows: int = 32, w_ref: Sequence[float] | None = None,
              recommend_fn: Callable[[np.ndarray], np.ndarray] | None = None,
              progress: bool = False) -> Interpretation:
  """Runs the interpreter on the covariate rows `x_NxF` (columns = surface.features).

  theta and the tree use up to `max_rows` distinct rows; partial dependence and the
  ranking average over up to `pd_rows` of them (each costs n_grid x features theta
  evaluations)."""
  domains, features = tuple(surface.domains), tuple(surface.features)
  lib = lower_is_better(surface)
  x_RxF, n_total = select_rows(x_NxF, max_rows)
  table = theta_over_rows(surface, x_RxF, ci)
  rel = table.relative_NxD
  min_leaf = max(1, min(min_samples_leaf, x_RxF.shape[0] // 2 or 1))
  favour_tree = fit_tree(x_RxF, rel, max_depth=tree_depth, min_samples_leaf=min_leaf,
                         feature_names=features, output_names=domains)
  rules = favour_rules(favour_tree, lower_is_better=lib, outcome=surface.outcome)
  domain_trees = {d: fit_tree(x_RxF, table.mean_NxD[:, k], max_depth=tree_depth,
                              min_samples_leaf=min_leaf, feature_names=features,
                              output_names=(d,)) for k, d in enumerate(domains)}
  it = range(len(features))
  if progress:
    from tqdm import tqdm
    it = tqdm(it, desc="partial dependence", unit="covariate")
  x_pd, _ = select_rows(x_RxF, pd_rows)
  pds = tuple(partial_dependence(surface, x_pd, j, n_grid=n_grid, q_lo=q_lo, q_hi=q_hi,
                                 ci=ci) for j in it)
  w_ref_D = (np.full(len(domains), 1.0 / len(domains)) if w_ref is None
             else np.asarray(w_ref, dtype=np.float64))
  if w_ref_D.shape != (len(domains),) or np.any(w_ref_D < 0) or w_ref_D.sum() <= 0:
    raise ValueError(f"reference mixture must be {len(domains)} non-negative weights for "
                     f"{list(domains)}; got {w_ref_D}")
  w_ref_D = w_ref_D / w_ref_D.sum()
  scale = float(np.abs(rel).max()) if rel.size else 0.0
  eta = 1.0 / scale if scale > 0 else 0.0
  ranking = rank_covariates(pds, domains=domains, lower_is_better=lib, eta=eta,
                            w_ref_D=w_ref_D, tree=favour_tree, recommend_fn=recommend_fn,
                            x_RxF=x_pd, features=features)
  return Interpretation(domains, features, surface.outcome, lib, table, favour_tree, rules,
                        domain_trees, pds, ranking, eta, n_total)


# ----------------------------------------------------------------------------------------
# figures


def _pyplot():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def _save(fig: Any, path: pathlib.Path) -> pathlib.Path:
  from causalmix_jax import artifacts
  path.parent.mkdir(parents=True, exist_ok=True)
  with artifacts.atomic_path(path) as tmp:
    with open(tmp, "wb") as f:
      fig.savefig(f, format="png", dpi=110, bbox_inches="tight")
  _pyplot().close(fig)
  return path


def plot_theta(interp: Interpretation, path: pathlib.Path) -> pathlib.Path:
  """Spread of each domain's marginal return over the pool states, with mean intervals."""
  plt = _pyplot()
  t = interp.theta
  d = len(interp.domains)
  fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * d + 2), 3.6))
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
  return _save(fig, path)


def plot_partial_dependence(interp: Interpretation, path: pathlib.Path,
                            max_panels: int = 6) -> pathlib.Path | None:
  """Partial dependence of every domain's theta on the top-ranked covariates."""
  by_name = {pd.feature: pd for pd in interp.partial_dependence}
  chosen = [by_name[e.feature] for e in interp.ranking
            if not by_name[e.feature].constant and e.theta_range > 0][:max_panels]
  if not chosen:
    return None
  plt = _pyplot()
  cols = min(3, len(chosen))
  rows = math.ceil(len(chosen) / cols)
  fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False,
                           layout="constrained")
  for ax, pd in zip(axes.ravel(), chosen):
    for k, dom in enumerate(interp.domains):
      ax.plot(pd.grid_G, pd.mean_GxD[:, k], color=f"C{k % 10}", label=dom)
      ax.fill_between(pd.grid_G, pd.lo_GxD[:, k], pd.hi_GxD[:, k], color=f"C{k % 10}",
                      alpha=0.15, lw=0)
    ax.set_xlabel(pd.feature)
    ax.set_ylabel("theta")
  for ax in axes.ravel()[len(chosen):]:
    ax.axis("off")
  axes[0, 0].legend(fontsize=7)
  fig.suptitle(f"Partial dependence of the marginal returns ({interp.outcome})")
  return _save(fig, path)


def plot_ranking(interp: Interpretation, path: pathlib.Path,
                 max_bars: int = 20) -> pathlib.Path:
  """Horizontal bars: how far each covariate moves the recommended mixture."""
  plt = _pyplot()
  eff = list(interp.ranking[:max_bars])[::-1]
  fig, ax = plt.subplots(figsize=(6.0, 0.3 * len(eff) + 1.2))
  ax.barh([e.feature for e in eff], [e.mixture_shift for e in eff], color="C0")
  ax.set_xlabel("mixture shift over the covariate's range (total variation)")
  ax.set_title("Covariates ranked by how much they move the mixture")
  return _save(fig, path)


def write_figures(interp: Interpretation, out_dir: str | pathlib.Path,
                  max_pd_panels: int = 6) -> dict[str, pathlib.Path]:
  """Writes the interpreter's PNGs into `out_dir`; returns them by name."""
  out_dir = pathlib.Path(out_dir)
  figs = {"theta": plot_theta(interp, out_dir / "cate_theta.png"),
          "ranking": plot_ranking(interp, out_dir / "cate_ranking.png")}
  pd_path = plot_partial_dependence(interp, out_dir / "cate_partial_dependence.png",
                                    max_pd_panels)
  if pd_path is not None:
    figs["partial_dependence"] = pd_path
  return figs
