"""The CATE interpretation of a fitted surface: how the marginal returns theta_d(x) of each
domain depend on the pool covariates x, as rules, partial dependence and a ranking, held
in a serialisable `Interpretation` (what the report's CATE section shows).

Given a surface (anything with `domains`, `features`, `outcome`, `maximize` and
`theta(x, ci) -> Prediction(mean, lo, hi)`) and covariate rows (the sweep's pool states):

- `theta_over_rows` evaluates theta_d(x) with credible intervals on every row;
- `interpret` fits a CART tree (`analysis.tree`) on the *relative* returns (theta_d minus
  the mean over domains, since on the simplex only differences between domains move the
  outcome) and reads its leaves as "if ...: favour d" rules;
- `partial_dependence` averages theta over the rows with one covariate swept over a grid
  between two of its observed quantiles;
- `rank_covariates` orders the covariates by how far they move the recommended mixture.
  The default recommendation is a multiplicative step from the reference mixture along
  the relative returns (log w_d = log w_ref_d - eta * s * theta_rel_d(x), s = +1 when
  lower is better), eta scaled so the largest step over the rows is one unit of
  log-ratio; callers can pass their own `recommend_fn` (e.g. the optimiser).
  `split_ranking` separates the covariates whose shift is negligible (what the report
  leaves out of its ranking table; the artifact keeps the whole ranking).

Everything is a frozen dataclass of numpy arrays; `Interpretation.to_dict` / `from_dict`
round-trip through JSON (the `analyse` stage writes `analysis/interpretation.json`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Collection, Mapping, Protocol, Sequence

import ml_collections
import numpy as np

from causalmix_jax.analysis import tree as tree_lib

FORMAT_VERSION = 1

NO_COVARIATES = ("The surface has no covariates, so its marginal returns do not depend on "
                 "the pool state.")
NO_ROWS = ("No sweep covariate rows were available, so the interpreter has no pool states "
           "to explain.")


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


def _array(a: Any) -> np.ndarray:
  return np.asarray(a, dtype=np.float64)


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

  def to_dict(self) -> dict[str, Any]:
    return {"domains": list(self.domains), "features": list(self.features),
            "x_NxF": self.x_NxF.tolist(), "mean_NxD": self.mean_NxD.tolist(),
            "lo_NxD": self.lo_NxD.tolist(), "hi_NxD": self.hi_NxD.tolist(),
            "ci": float(self.ci)}

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> ThetaTable:
    return cls(tuple(d["domains"]), tuple(d["features"]), _array(d["x_NxF"]),
               _array(d["mean_NxD"]), _array(d["lo_NxD"]), _array(d["hi_NxD"]),
               float(d["ci"]))


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


def sweep_rows(runs: Any, features: Sequence[str]) -> tuple[np.ndarray | None, list[str]]:
  """The sweep's covariate rows in the surface's feature order (the successful runs', or
  every run's when none succeeded); None and the surface features the runs table lacks.

  runs: a `runs.Runs` table (its `features` are named without the `x_` prefix)."""
  have = {f: i for i, f in enumerate(runs.features)}
  keys = [f[2:] if f.startswith("x_") else f for f in features]
  missing = [f for f, k in zip(features, keys) if k not in have]
  if missing:
    return None, missing
  x = runs.X[:, [have[k] for k in keys]]
  ok = runs.ok
  return (x[ok] if ok.any() else x), []


# ----------------------------------------------------------------------------------------
# partial dependence and ranking


@dataclasses.dataclass(frozen=True)
class DependenceCurve:
  """theta_d averaged over the rows with covariate `feature` set to each grid value, with
  the row-averaged pointwise credible bounds."""
  feature: str
  grid_G: np.ndarray
  mean_GxD: np.ndarray
  lo_GxD: np.ndarray
  hi_GxD: np.ndarray

  @property
  def constant(self) -> bool:
    return bool(self.grid_G[-1] <= self.grid_G[0])

  @property
  def relative_GxD(self) -> np.ndarray:
    return self.mean_GxD - self.mean_GxD.mean(axis=1, keepdims=True)

  def to_dict(self) -> dict[str, Any]:
    return {"feature": self.feature, "grid_G": self.grid_G.tolist(),
            "mean_GxD": self.mean_GxD.tolist(), "lo_GxD": self.lo_GxD.tolist(),
            "hi_GxD": self.hi_GxD.tolist()}

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> DependenceCurve:
    return cls(str(d["feature"]), _array(d["grid_G"]), _array(d["mean_GxD"]),
               _array(d["lo_GxD"]), _array(d["hi_GxD"]))


@dataclasses.dataclass(frozen=True)
class PartialDependence(DependenceCurve):
  """A `DependenceCurve` with the per-row curves (individual conditional expectations)
  its averages come from."""
  ice_GxRxD: np.ndarray

  def curve(self) -> DependenceCurve:
    """The averaged curves alone (what an `Interpretation` keeps)."""
    return DependenceCurve(self.feature, self.grid_G, self.mean_GxD, self.lo_GxD,
                           self.hi_GxD)


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

  def to_dict(self) -> dict[str, Any]:
    return {"feature": self.feature, "mixture_shift": float(self.mixture_shift),
            "theta_range": float(self.theta_range),
            "tree_importance": float(self.tree_importance),
            "favoured_lo": self.favoured_lo, "favoured_hi": self.favoured_hi}

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> CovariateEffect:
    return cls(str(d["feature"]), float(d["mixture_shift"]), float(d["theta_range"]),
               float(d["tree_importance"]), str(d["favoured_lo"]), str(d["favoured_hi"]))


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


# A ranking row is negligible when its mixture shift is below this share of the largest
# shift, or below this total-variation distance at all (the sampler's default smallest
# weight, `optimise.sampler_min_weight`: a smaller move cannot show in a trained mixture).
NEGLIGIBLE_SHIFT_SHARE = 0.01
NEGLIGIBLE_SHIFT_FLOOR = 1e-3


def negligible_shift_cut(ranking: Sequence[CovariateEffect],
                         share: float = NEGLIGIBLE_SHIFT_SHARE,
                         floor: float = NEGLIGIBLE_SHIFT_FLOOR) -> float:
  """The mixture shift below which a ranking row is negligible: the larger of `share`
  times the largest finite shift and `floor`."""
  top = max((e.mixture_shift for e in ranking if np.isfinite(e.mixture_shift)),
            default=0.0)
  return max(share * top, floor)


def split_ranking(ranking: Sequence[CovariateEffect],
                  share: float = NEGLIGIBLE_SHIFT_SHARE,
                  floor: float = NEGLIGIBLE_SHIFT_FLOOR
                  ) -> tuple[tuple[CovariateEffect, ...], tuple[CovariateEffect, ...]]:
  """(notable, negligible) rows of a ranking, each in ranking order: a row is negligible
  when its mixture shift is below `negligible_shift_cut` (or not finite)."""
  cut = negligible_shift_cut(ranking, share, floor)
  notable = tuple(e for e in ranking if e.mixture_shift >= cut)
  return notable, tuple(e for e in ranking if not e.mixture_shift >= cut)


def rank_covariates(pds: Sequence[PartialDependence], *, domains: Sequence[str],
                    lower_is_better: bool, eta: float, w_ref_D: np.ndarray,
                    tree: tree_lib.RegressionTree | None = None,
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


@dataclasses.dataclass(frozen=True, eq=False)
class Interpretation:
  """Everything the interpreter found for one surface and one set of covariate rows:
  what the report's CATE section shows. Two interpretations are equal when their
  serialised forms are.

  skipped: why there was nothing to interpret ("" when interpreted); then theta and
    favour_tree are None and the collections are empty."""
  domains: tuple[str, ...]
  features: tuple[str, ...]
  outcome: str
  lower_is_better: bool
  tree_depth: int  # settings of the favour and per-domain trees
  min_samples_leaf: int
  theta: ThetaTable | None
  favour_tree: tree_lib.RegressionTree | None
  rules: tuple[tree_lib.Rule, ...]
  domain_trees: dict[str, tree_lib.RegressionTree]
  domain_rules: dict[str, tuple[str, ...]]  # each per-domain tree read as rule lines
  partial_dependence: tuple[DependenceCurve, ...]
  ranking: tuple[CovariateEffect, ...]
  eta: float  # log-ratio step per unit relative return used by the default ranking
  n_rows_total: int  # distinct covariate rows before subsampling
  skipped: str = ""

  @property
  def n_rows(self) -> int:
    """Distinct covariate rows interpreted."""
    return 0 if self.theta is None else int(self.theta.x_NxF.shape[0])

  def __eq__(self, other: object) -> bool:
    if not isinstance(other, Interpretation):
      return NotImplemented
    return self.to_dict() == other.to_dict()

  def to_dict(self) -> dict[str, Any]:
    """Plain JSON types (what `analysis/interpretation.json` holds)."""
    return {
        "format_version": FORMAT_VERSION,
        "domains": list(self.domains),
        "features": list(self.features),
        "outcome": self.outcome,
        "lower_is_better": bool(self.lower_is_better),
        "tree_depth": int(self.tree_depth),
        "min_samples_leaf": int(self.min_samples_leaf),
        "skipped": self.skipped,
        "n_rows_total": int(self.n_rows_total),
        "eta": float(self.eta),
        "theta": None if self.theta is None else self.theta.to_dict(),
        "favour_tree": None if self.favour_tree is None else self.favour_tree.to_dict(),
        "rules": [r.to_dict() for r in self.rules],
        "domain_trees": {d: t.to_dict() for d, t in self.domain_trees.items()},
        "domain_rules": {d: list(lines) for d, lines in self.domain_rules.items()},
        "partial_dependence": [c.to_dict() for c in self.partial_dependence],
        "ranking": [e.to_dict() for e in self.ranking],
    }

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> Interpretation:
    version = d.get("format_version")
    if version != FORMAT_VERSION:
      raise ValueError(f"interpretation format_version {version!r}; this code reads "
                       f"{FORMAT_VERSION} (rerun --stage=analyse)")
    return cls(
        domains=tuple(d["domains"]),
        features=tuple(d["features"]),
        outcome=str(d["outcome"]),
        lower_is_better=bool(d["lower_is_better"]),
        tree_depth=int(d["tree_depth"]),
        min_samples_leaf=int(d["min_samples_leaf"]),
        theta=None if d["theta"] is None else ThetaTable.from_dict(d["theta"]),
        favour_tree=(None if d["favour_tree"] is None
                     else tree_lib.RegressionTree.from_dict(d["favour_tree"])),
        rules=tuple(tree_lib.Rule.from_dict(r) for r in d["rules"]),
        domain_trees={k: tree_lib.RegressionTree.from_dict(t)
                      for k, t in d["domain_trees"].items()},
        domain_rules={k: tuple(lines) for k, lines in d["domain_rules"].items()},
        partial_dependence=tuple(DependenceCurve.from_dict(c)
                                 for c in d["partial_dependence"]),
        ranking=tuple(CovariateEffect.from_dict(e) for e in d["ranking"]),
        eta=float(d["eta"]),
        n_rows_total=int(d["n_rows_total"]),
        skipped=str(d.get("skipped", "")))


def check_config(report_cfg: ml_collections.ConfigDict) -> None:
  """Rejects report settings the interpreter cannot use, naming the config key."""
  r = report_cfg
  checks = [("tree_depth", r.tree_depth >= 0, ">= 0"),
            ("min_samples_leaf", r.min_samples_leaf >= 1, ">= 1"),
            ("n_grid", r.n_grid >= 2, ">= 2"),
            ("grid_quantile_lo", 0.0 <= r.grid_quantile_lo <= r.grid_quantile_hi,
             "in [0, report.grid_quantile_hi]"),
            ("grid_quantile_hi", r.grid_quantile_hi <= 1.0, "<= 1"),
            ("max_rows", r.max_rows >= 0, ">= 0 (0 = all)"),
            ("pd_rows", r.pd_rows >= 0, ">= 0 (0 = all)"),
            ("ci", 0.0 < r.ci < 1.0, "in (0, 1)"),
            ("max_pd_plots", r.max_pd_plots >= 0, ">= 0")]
  for key, ok, want in checks:
    if not ok:
      raise ValueError(f"config key report.{key} must be {want}; got {r[key]!r}")


def _skipped(surface: ThetaSurface, report_cfg: ml_collections.ConfigDict,
             why: str) -> Interpretation:
  return Interpretation(tuple(surface.domains), tuple(surface.features), surface.outcome,
                        lower_is_better(surface), int(report_cfg.tree_depth),
                        int(report_cfg.min_samples_leaf), None, None, (), {}, {}, (), (),
                        0.0, 0, skipped=why)


def interpret(surface: ThetaSurface, x_NxF: np.ndarray | None,
              w_ref: Sequence[float] | np.ndarray | None,
              report_cfg: ml_collections.ConfigDict, *,
              recommend_fn: Callable[[np.ndarray], np.ndarray] | None = None,
              progress: bool = False) -> Interpretation:
  """Interprets the surface on the covariate rows `x_NxF` (columns = surface.features),
  with the settings of the config's `report` section (tree_depth, min_samples_leaf,
  n_grid, grid_quantile_lo/hi, ci, max_rows, pd_rows).

  theta and the tree use up to `max_rows` distinct rows; partial dependence and the
  ranking average over up to `pd_rows` of them (each costs n_grid x features theta
  evaluations). `w_ref` is the reference mixture the default ranking steps from
  (uniform when None). A surface without covariates, or fewer than two rows, gives a
  skipped interpretation that says why."""
  if not surface.features:
    return _skipped(surface, report_cfg, NO_COVARIATES)
  if x_NxF is None or np.shape(x_NxF)[0] < 2:
    return _skipped(surface, report_cfg, NO_ROWS)
  tree_depth = int(report_cfg.tree_depth)
  min_samples_leaf = int(report_cfg.min_samples_leaf)
  ci = float(report_cfg.ci)
  domains, features = tuple(surface.domains), tuple(surface.features)
  lib = lower_is_better(surface)
  x_RxF, n_total = select_rows(x_NxF, int(report_cfg.max_rows))
  table = theta_over_rows(surface, x_RxF, ci)
  rel = table.relative_NxD
  min_leaf = max(1, min(min_samples_leaf, x_RxF.shape[0] // 2 or 1))
  favour_tree = tree_lib.fit_tree(x_RxF, rel, max_depth=tree_depth,
                                  min_samples_leaf=min_leaf, feature_names=features,
                                  output_names=domains)
  rules = tree_lib.favour_rules(favour_tree, lower_is_better=lib, outcome=surface.outcome)
  domain_trees = {d: tree_lib.fit_tree(x_RxF, table.mean_NxD[:, k], max_depth=tree_depth,
                                       min_samples_leaf=min_leaf, feature_names=features,
                                       output_names=(d,)) for k, d in enumerate(domains)}
  it: Any = range(len(features))
  if progress:
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel
    it = tqdm(it, desc="partial dependence", unit="covariate")
  x_pd, _ = select_rows(x_RxF, int(report_cfg.pd_rows))
  pds = tuple(partial_dependence(surface, x_pd, j, n_grid=int(report_cfg.n_grid),
                                 q_lo=float(report_cfg.grid_quantile_lo),
                                 q_hi=float(report_cfg.grid_quantile_hi), ci=ci)
              for j in it)
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
  return Interpretation(
      domains, features, surface.outcome, lib, tree_depth, min_samples_leaf, table,
      favour_tree, rules, domain_trees,
      {d: tuple(tree_lib.tree_rule_lines(t)) for d, t in domain_trees.items()},
      tuple(pd.curve() for pd in pds), ranking, eta, n_total)
