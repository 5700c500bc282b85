"""A small CART regression tree and the rules read from its leaves.

`fit_tree` is numpy-only, multi-output, with exhaustive splits and a minimum leaf size;
`favour_rules` reads a tree fitted on relative returns (outputs = domains) as "if ...:
favour d" rules, `tree_rule_lines` reads any single-output tree as "if ...: value".
Trees and rules serialise to plain JSON types (`to_dict` / `from_dict`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import numpy as np


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

  def to_dict(self) -> dict[str, Any]:
    d: dict[str, Any] = {"value": self.value.tolist(), "n": int(self.n),
                         "sse": float(self.sse)}
    if not self.is_leaf:
      d.update(feature=int(self.feature), threshold=float(self.threshold),
               left=int(self.left), right=int(self.right))
    return d

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> TreeNode:
    return cls(np.asarray(d["value"], dtype=np.float64), int(d["n"]), float(d["sse"]),
               int(d.get("feature", -1)), float(d.get("threshold", math.nan)),
               int(d.get("left", -1)), int(d.get("right", -1)))


@dataclasses.dataclass(frozen=True)
class Condition:
  feature: str
  op: str  # "<=" or ">"
  threshold: float

  def text(self) -> str:
    return f"{self.feature} {self.op} {self.threshold:.4g}"

  def to_dict(self) -> dict[str, Any]:
    return {"feature": self.feature, "op": self.op, "threshold": float(self.threshold)}

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> Condition:
    return cls(str(d["feature"]), str(d["op"]), float(d["threshold"]))


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

  def to_dict(self) -> dict[str, Any]:
    return {"feature_names": list(self.feature_names),
            "output_names": list(self.output_names),
            "nodes": [nd.to_dict() for nd in self.nodes]}

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> RegressionTree:
    return cls(tuple(TreeNode.from_dict(nd) for nd in d["nodes"]),
               tuple(d["feature_names"]), tuple(d["output_names"]))


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

  def to_dict(self) -> dict[str, Any]:
    return {"conditions": [c.to_dict() for c in self.conditions], "favour": self.favour,
            "favour_effect": float(self.favour_effect), "avoid": self.avoid,
            "avoid_effect": float(self.avoid_effect), "n": int(self.n),
            "n_total": int(self.n_total), "text": self.text}

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> Rule:
    return cls(tuple(Condition.from_dict(c) for c in d["conditions"]), str(d["favour"]),
               float(d["favour_effect"]), str(d["avoid"]), float(d["avoid_effect"]),
               int(d["n"]), int(d["n_total"]), str(d["text"]))


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
