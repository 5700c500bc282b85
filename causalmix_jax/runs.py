"""The runs table: one row per proxy run (mixture, pool covariates, outcomes), its schema
and validation, importers for RegMix and Olmix sweeps, and atomic Parquet/CSV writing.

Schema (see docs/architecture.md, "Runs table"): `run_id` (str), `seed` (int),
`w_<domain>` (weights on the simplex), `x_<feature>` (pool covariates), optional
`tokens_<domain>` (unique tokens available), `budget_tokens` (tokens trained), `params`,
`status` ("ok" / "diverged" / ...), and `y_<metric>` outcomes. Every problem raises a
`RunsTableError` naming the file, the column and the row. Outcomes are checked for
NaN/inf only in runs with status "ok", and only those named by `outcomes=` when a
loader is given it (sparse tables: per-task scores where each run has only its own);
`DegenerateRunsError` is raised by the surface fit for a valid table it cannot learn
from (a constant outcome, one mixture, too few runs).
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import re
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from causalmix_jax import artifacts

log = logging.getLogger(__name__)

SIMPLEX_TOL = 1e-6
# Importers (RegMix rounds weights to 3 decimals) renormalise rows this close to 1.
IMPORT_RENORM_TOL = 0.01
_META_KEY = b"causalmix_jax.runs"
_NUMERIC_PREFIXES = ("w_", "x_", "y_", "tokens_")
_NUMERIC_COLUMNS = ("seed", "budget_tokens", "params")
_REGMIX_DOMAIN_PREFIX = "train_the_pile_"
_REGMIX_METRIC = re.compile(r"^metric/the_pile_(.+)_val_loss$")
# Columns named in a warning before "and N more".
_LIST_LIMIT = 5
# (source, constant columns) already warned about in this process: a table is
# revalidated by every `select` / `with_outcome`, and each would warn again.
_WARNED_CONSTANT: set[tuple[str, tuple[str, ...]]] = set()


class RunsTableError(ValueError):
  """A runs table (or an importer's input) is malformed; the message names the file,
  column and row."""


class DegenerateRunsError(ValueError):
  """A well-formed runs table that a surface cannot be fitted to for one outcome (too
  few usable runs, a constant outcome, no variation in the mixtures); the message names
  the table's source and the outcome column."""


def _where(source: str, column: str | None = None, row: int | None = None,
           run_id: Any = None) -> str:
  parts = [str(source)]
  if column is not None:
    parts.append(f"column {column!r}")
  if row is not None:
    parts.append(f"row {row}" + (f" (run_id {run_id!r})" if run_id is not None else ""))
  return ", ".join(parts)


def _rows_text(rows: Sequence[Any], limit: int = _LIST_LIMIT) -> str:
  shown = ", ".join(str(r) for r in rows[:limit])
  return shown + (f" and {len(rows) - limit} more" if len(rows) > limit else "")


def _bare(name: str) -> str:
  return name[2:] if name.startswith("y_") else name


def _domain_hint(meta: dict[str, Any] | None) -> tuple[str, ...]:
  """The domains a table's metadata says it has (a sweep records them), or ()."""
  domains = (meta or {}).get("domains")
  if isinstance(domains, (list, tuple)) and all(isinstance(d, str) for d in domains):
    return tuple(domains)
  return ()


def _warn_constant(source: str, constant: tuple[str, ...]) -> None:
  """Warns once per process for each (source, constant columns)."""
  key = (source, constant)
  if not constant or key in _WARNED_CONSTANT:
    return
  _WARNED_CONSTANT.add(key)
  log.warning("%s: %d constant covariate column(s) carry no information: %s", source,
              len(constant), _rows_text(list(constant)))


def _constant_columns(df: pd.DataFrame) -> tuple[str, ...]:
  """The x_ columns that hold one value in every row."""
  return tuple(sorted(str(c) for c in df.columns if str(c).startswith("x_")
                      and np.ptp(df[c].to_numpy(dtype=np.float64)) == 0.0))


def _validate(df: pd.DataFrame, source: str, outcomes: Sequence[str] | None = None,
              domains: Sequence[str] = (), others: Sequence[str] = ()
              ) -> tuple[pd.DataFrame, tuple[str, ...]]:
  """Checks and canonicalises a runs frame. Returns it and its constant x_ columns.

  outcomes: the outcomes (with or without y_) whose values must be finite in every
    "ok" run; None = every y_ column. Other outcome columns may hold NaN.
  domains: domains the table must have (its metadata's list): a missing w_<domain>
    column is reported as such, as is one whose tokens_<domain> column is present.
  others: domains of the tables loaded with it; one of them without a w_ column here
    is named as the missing column when no row's weights reach 1.
  """
  df = df.reset_index(drop=True).copy()
  for col in ("run_id", "seed"):
    if col not in df.columns:
      raise RunsTableError(
          f"{_where(source, col)}: required column is missing "
          f"(columns present: {', '.join(map(str, df.columns[:12]))}"
          f"{' ...' if len(df.columns) > 12 else ''})")
  w_cols = [c for c in df.columns if str(c).startswith("w_")]
  if not w_cols:
    raise RunsTableError(f"{_where(source, 'w_<domain>')}: no mixture weight columns "
                         "(a runs table needs at least one w_<domain> column)")
  if df.empty:
    raise RunsTableError(f"{source}: the runs table has no rows")
  y_present = [str(c) for c in df.columns if str(c).startswith("y_")]
  if outcomes is None:
    checked = set(y_present)
  else:
    checked = {f"y_{_bare(str(o))}" for o in outcomes}
    absent = sorted(checked - set(y_present))
    if absent:
      raise RunsTableError(
          f"{_where(source, absent[0])}: outcome column is missing (outcomes asked for: "
          f"{sorted(_bare(c) for c in checked)}; present: "
          f"{_rows_text([_bare(c) for c in y_present])})")
  w_domains = {str(c)[2:] for c in w_cols}
  tok_domains = {str(c)[len("tokens_"):] for c in df.columns
                 if str(c).startswith("tokens_")}
  no_w = sorted((set(domains) | tok_domains) - w_domains)
  if no_w:
    why = ("its tokens_ column is present" if no_w[0] in tok_domains else
           "the table's metadata lists this domain")
    raise RunsTableError(
        f"{_where(source, f'w_{no_w[0]}')}: required column is missing ({why}; "
        f"{len(no_w)} weight column(s) missing: {_rows_text([f'w_{d}' for d in no_w])}; "
        f"present: {_rows_text(sorted(map(str, w_cols)))})")
  run_ids = df["run_id"]
  if run_ids.isna().any():
    row = int(np.flatnonzero(run_ids.isna().to_numpy())[0])
    raise RunsTableError(f"{_where(source, 'run_id', row)}: run_id is empty")
  df["run_id"] = run_ids.astype(str)
  ids = df["run_id"].to_numpy()

  numeric = [c for c in df.columns
             if str(c).startswith(_NUMERIC_PREFIXES) or c in _NUMERIC_COLUMNS]
  for col in numeric:
    if not pd.api.types.is_numeric_dtype(df[col]) or pd.api.types.is_bool_dtype(df[col]):
      coerced = pd.to_numeric(df[col], errors="coerce")
      bad = np.flatnonzero(coerced.isna().to_numpy() & df[col].notna().to_numpy())
      if len(bad):
        r = int(bad[0])
        raise RunsTableError(
            f"{_where(source, col, r, ids[r])}: non-numeric value {df[col].iloc[r]!r}")
      df[col] = coerced
    df[col] = df[col].astype(np.float64) if col != "seed" else df[col]

  if "status" in df.columns:
    df["status"] = df["status"].fillna("ok").astype(str)
    ok = (df["status"] == "ok").to_numpy()
  else:
    ok = np.ones(len(df), bool)

  seed = df["seed"].to_numpy(dtype=np.float64)
  bad = np.flatnonzero(~np.isfinite(seed) | (seed != np.round(seed)))
  if len(bad):
    r = int(bad[0])
    raise RunsTableError(
        f"{_where(source, 'seed', r, ids[r])}: seed must be an integer, got {seed[r]!r}")
  df["seed"] = seed.astype(np.int64)

  for col in numeric:
    if col in ("seed", "params"):
      continue
    values = df[col].to_numpy(dtype=np.float64)
    missing = ~np.isfinite(values)
    if str(col).startswith("y_"):
      if col not in checked:
        continue
      missing &= ok
    if missing.any():
      r = int(np.flatnonzero(missing)[0])
      what = "NaN/inf outcome in a run with status 'ok'" if str(col).startswith("y_") \
          else "NaN/inf value"
      raise RunsTableError(f"{_where(source, col, r, ids[r])}: {what} "
                           f"({int(missing.sum())} such rows: "
                           f"{_rows_text(np.flatnonzero(missing).tolist())})")

  W = df[w_cols].to_numpy(dtype=np.float64)
  sums = W.sum(axis=1)
  if np.all(sums < 1.0 - SIMPLEX_TOL) and (W >= 0).all():
    # Every row short of 1: far likelier a dropped column than bad weights.
    short = f"every row's weights sum below 1 (from {sums.min():.6g} to {sums.max():.6g})"
    absent = sorted(set(others) - w_domains)
    if absent:
      raise RunsTableError(
          f"{_where(source, f'w_{absent[0]}')}: required column is missing ({short}; "
          f"the tables loaded with it have {_rows_text([f'w_{d}' for d in absent])}; "
          f"present: {_rows_text(sorted(map(str, w_cols)))})")
    raise RunsTableError(
        f"{_where(source, 'w_*')}: {short}: a w_<domain> column looks missing "
        f"(present: {_rows_text(sorted(map(str, w_cols)))})")
  _check_simplex(W, w_cols, SIMPLEX_TOL, "w_*",
                 lambda col, r: _where(source, col, r, ids[r]))

  for col in [c for c in df.columns if str(c).startswith("tokens_")] + (
      ["budget_tokens"] if "budget_tokens" in df.columns else []):
    values = df[col].to_numpy(dtype=np.float64)
    bad = np.flatnonzero(values <= 0)
    if len(bad):
      r = int(bad[0])
      raise RunsTableError(
          f"{_where(source, col, r, ids[r])}: token counts must be > 0, got {values[r]!r}")
  if tok_domains and tok_domains != w_domains:
    missing_tok = sorted(w_domains - tok_domains)
    extra_tok = sorted(tok_domains - w_domains)
    raise RunsTableError(
        f"{_where(source, 'tokens_*')}: tokens_<domain> columns must match the w_ "
        f"domains (missing: {missing_tok}, without a weight column: {extra_tok})")

  dup = df["run_id"].duplicated(keep=False).to_numpy()
  if dup.any():
    rows = np.flatnonzero(dup).tolist()
    first = df["run_id"].iloc[rows[0]]
    same = np.flatnonzero(ids == first).tolist()
    raise RunsTableError(
        f"{_where(source, 'run_id')}: duplicated run_id {first!r} in rows "
        f"{_rows_text(same)} ({len(rows)} rows carry a repeated run_id)")

  constant = _constant_columns(df)
  _warn_constant(source, constant)
  x_cols = [c for c in df.columns if str(c).startswith("x_")]

  # Canonical column order: ids, sorted weights, sorted covariates, tokens, outcomes.
  domains = sorted(w_domains)
  order = ["run_id", "seed"]
  order += [f"w_{d}" for d in domains]
  order += sorted(str(c) for c in x_cols)
  if tok_domains:
    order += [f"tokens_{d}" for d in domains]
  order += [c for c in ("budget_tokens", "params", "status") if c in df.columns]
  order += [c for c in df.columns if str(c).startswith("y_")]
  order += [c for c in df.columns if c not in order]
  return df[order], constant


class Runs:
  """A validated runs table. Construct with `Runs(frame, source=...)` or a loader."""

  def __init__(self, frame: pd.DataFrame, *, source: str = "<runs frame>",
               maximize: Iterable[str] = (), meta: dict[str, Any] | None = None,
               outcomes: Sequence[str] | None = None, domains: Sequence[str] = ()):
    """outcomes: the outcomes that must be finite in every "ok" run (None: all of
    them); the others may hold NaN (sparse tables) and are checked by the surface fit
    when fitted. domains: domains of tables loaded with this one, named when the
    weights here fall short of 1 for lack of their column (`meta["domains"]`, which a
    sweep writes, must all have a w_ column)."""
    self.source = str(source)
    self.meta: dict[str, Any] = dict(meta or {})
    self._frame, self.constant_features = _validate(
        frame, self.source, outcomes, _domain_hint(self.meta), tuple(domains))
    self.checked_outcomes: tuple[str, ...] | None = (
        None if outcomes is None else tuple(sorted({_bare(str(o)) for o in outcomes})))
    names = {m[2:] if m.startswith("y_") else m for m in maximize}
    unknown = sorted(names - set(self.outcomes))
    if unknown:
      raise RunsTableError(f"{self.source}: maximize names outcomes that are not in the "
                           f"table: {unknown} (outcomes: {self.outcomes})")
    self.maximize: frozenset[str] = frozenset(names)

  # -- columns ------------------------------------------------------------------------
  def _cols(self, prefix: str) -> list[str]:
    return [c for c in self._frame.columns if str(c).startswith(prefix)]

  def _floats(self, cols: list[str]) -> np.ndarray:
    """The columns as a float64 matrix: converted once per table (the table does not
    change after construction; a fit reads W and X many times), a copy per call."""
    cache = self.__dict__.setdefault("_float_cache", {})
    key = tuple(cols)
    if key not in cache:
      cache[key] = self._frame[cols].to_numpy(dtype=np.float64)
    return cache[key].copy()

  @property
  def domains(self) -> list[str]:
    return [c[2:] for c in self._cols("w_")]

  @property
  def features(self) -> list[str]:
    return [c[2:] for c in self._cols("x_")]

  @property
  def outcomes(self) -> list[str]:
    return [c[2:] for c in self._cols("y_")]

  @property
  def run_ids(self) -> np.ndarray:
    return self._frame["run_id"].to_numpy()

  @property
  def seeds(self) -> np.ndarray:
    return self._frame["seed"].to_numpy()

  @property
  def ok(self) -> np.ndarray:
    """Boolean mask of runs with status "ok" (all runs when there is no status)."""
    if "status" not in self._frame.columns:
      return np.ones(len(self), bool)
    return (self._frame["status"] == "ok").to_numpy()

  @property
  def W(self) -> np.ndarray:
    """Mixture weights, N x D, in `domains` order."""
    return self._floats(self._cols("w_"))

  @property
  def X(self) -> np.ndarray:
    """Pool covariates, N x F (F may be 0)."""
    cols = self._cols("x_")
    if not cols:
      return np.zeros((len(self), 0), np.float64)
    return self._floats(cols)

  def y(self, name: str) -> np.ndarray:
    """Outcome `name` (with or without the y_ prefix), length N; NaN for failed runs."""
    col = name if name.startswith("y_") else f"y_{name}"
    if col not in self._frame.columns:
      raise KeyError(f"{self.source}: no outcome {name!r} (outcomes: {self.outcomes})")
    return self._frame[col].to_numpy(dtype=np.float64)

  @property
  def tokens(self) -> np.ndarray | None:
    """Unique tokens available per domain, N x D, or None when unknown."""
    cols = self._cols("tokens_")
    if not cols:
      return None
    return self._floats(cols)

  @property
  def budget(self) -> np.ndarray | None:
    """Tokens trained per run, length N, or None when unknown."""
    if "budget_tokens" not in self._frame.columns:
      return None
    return self._frame["budget_tokens"].to_numpy(dtype=np.float64)

  @property
  def params(self) -> np.ndarray | None:
    """Model size (parameters) per run, length N, or None when unknown."""
    if "params" not in self._frame.columns:
      return None
    return self._frame["params"].to_numpy(dtype=np.float64)

  def scales(self) -> np.ndarray:
    """log10 of the training-scale columns that vary across the table (model size in
    `params`, tokens trained in `budget_tokens`), N x 0-2. Runs at different scales
    are neither replicates nor one pool state, whatever their covariates."""
    out = []
    for name, col in (("params", self.params), ("budget_tokens", self.budget)):
      if col is None or len(np.unique(col)) < 2:
        continue
      bad = np.flatnonzero(~(np.isfinite(col) & (col > 0)))
      if len(bad):
        r = int(bad[0])
        raise RunsTableError(
            f"{_where(self.source, name, r, self.run_ids[r])}: {name} varies across the "
            f"table, so it is read as the training scale, and must be a positive number; "
            f"got {col[r]!r} ({len(bad)} such rows: {_rows_text(bad.tolist())})")
      out.append(np.round(np.log10(col), 6))
    return np.stack(out, axis=1) if out else np.zeros((len(self), 0))

  def epochs(self) -> np.ndarray | None:
    """Passes over each domain's unique tokens, w * budget / tokens (N x D), or None."""
    tokens, budget = self.tokens, self.budget
    if tokens is None or budget is None:
      return None
    return self.W * budget[:, None] / tokens

  # -- derived tables -----------------------------------------------------------------
  def __len__(self) -> int:
    return len(self._frame)

  def __repr__(self) -> str:
    return (f"Runs({len(self)} runs, {len(self.domains)} domains, "
            f"{len(self.features)} features, outcomes={self.outcomes}, "
            f"source={self.source!r})")

  def select(self, mask: np.ndarray | Sequence[int] | Sequence[bool]) -> "Runs":
    """Rows selected by a boolean mask or integer indices, as a new `Runs`."""
    idx = np.asarray(mask)
    if idx.dtype == bool:
      if idx.shape != (len(self),):
        raise ValueError(f"select: boolean mask of shape {idx.shape}, expected "
                         f"({len(self)},)")
      idx = np.flatnonzero(idx)
    if idx.size == 0:
      raise RunsTableError(f"{self.source}: the runs table has no rows (empty selection)")
    # Every check of `_validate` is per row or per column over rows, so a subset of a
    # validated table passes them all: only the constant covariates are recomputed
    # (cross-validation and the stack select many subsets of one table).
    frame = self._frame.iloc[idx].reset_index(drop=True)
    out = object.__new__(Runs)
    out.source, out.meta, out._frame = self.source, dict(self.meta), frame
    out.constant_features = _constant_columns(frame)
    _warn_constant(self.source, out.constant_features)
    out.checked_outcomes, out.maximize = self.checked_outcomes, self.maximize
    return out

  def with_outcome(self, name: str, values: np.ndarray, *,
                   maximize: bool | None = None) -> "Runs":
    """A copy with outcome column y_<name> set to `values` (length N)."""
    name = name[2:] if name.startswith("y_") else name
    values = np.asarray(values, dtype=np.float64)
    if values.shape != (len(self),):
      raise ValueError(f"with_outcome({name!r}): {values.shape} values for "
                       f"{len(self)} runs")
    frame = self._frame.copy()
    frame[f"y_{name}"] = values
    mx = set(self.maximize)
    if maximize is True:
      mx.add(name)
    elif maximize is False:
      mx.discard(name)
    checked = (None if self.checked_outcomes is None
               else self.checked_outcomes + (name,))
    return Runs(frame, source=self.source, maximize=mx, meta=self.meta, outcomes=checked)

  def to_frame(self) -> pd.DataFrame:
    return self._frame.copy()


# -- readers ------------------------------------------------------------------------------
def _read_table(path: pathlib.Path) -> tuple[pd.DataFrame, dict[str, Any]]:
  suffix = path.suffix.lower()
  if suffix == ".parquet":
    import pyarrow as pa
    import pyarrow.parquet as pq
    try:
      table = pq.read_table(path)
      raw = (table.schema.metadata or {}).get(_META_KEY)
      return table.to_pandas(), (json.loads(raw) if raw else {})
    except (OSError, ValueError, pa.ArrowException) as e:
      first = (str(e).strip().splitlines() or [""])[0]
      raise RunsTableError(
          f"{path}: cannot be read as a runs table: the Parquet file is "
          f"{_parquet_damage(path)} ({type(e).__name__}: {first}). If the sweep stage "
          "wrote it, re-run that stage to rewrite it from its finished chunks "
          "(--stage=sweep --force)") from e
  try:
    if suffix in (".csv", ".tsv"):
      return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",",
                         dtype={"run_id": str, "status": str}), {}
  except (OSError, ValueError) as e:
    raise RunsTableError(f"{path}: cannot be read as a runs table: {e}") from e
  raise RunsTableError(f"{path}: unknown runs-table format {suffix!r} "
                       "(expected .parquet, .csv or .tsv)")


def _parquet_damage(path: pathlib.Path) -> str:
  """'truncated' (no Parquet footer), 'corrupt' (a footer, unreadable contents) or
  'unreadable' (the file cannot be opened)."""
  try:
    with open(path, "rb") as f:
      size = f.seek(0, os.SEEK_END)
      if size < 12:
        return "truncated"
      f.seek(size - 4)
      return "corrupt" if f.read(4) == b"PAR1" else "truncated"
  except OSError:
    return "unreadable"


def _table_path(path: pathlib.Path) -> pathlib.Path | None:
  """The runs table file a path stands for (itself, or a directory's runs.parquet /
  runs.csv); None for an importer's directory."""
  if not path.is_dir():
    return path
  for name in ("runs.parquet", "runs.csv"):
    if (path / name).exists():
      return path / name
  return None


def _peek_domains(path: pathlib.Path) -> set[str]:
  """The w_ domains of a runs table file from its header alone (empty if unreadable or
  not a table file: the full read reports the problem)."""
  table = _table_path(path) if path.exists() else None
  if table is None:
    return set()
  try:
    if table.suffix.lower() == ".parquet":
      import pyarrow.parquet as pq
      names = pq.read_schema(table).names
    elif table.suffix.lower() in (".csv", ".tsv"):
      names = pd.read_csv(table, sep="\t" if table.suffix.lower() == ".tsv" else ",",
                          nrows=0).columns
    else:
      return set()
  except (OSError, ValueError):
    return set()
  return {str(c)[2:] for c in names if str(c).startswith("w_")}


def _load_one(path: pathlib.Path, maximize: Iterable[str],
              outcomes: Sequence[str] | None = None,
              domains: Sequence[str] = ()) -> Runs:
  if not path.exists():
    raise RunsTableError(f"{path}: no such file or directory")
  table = _table_path(path)
  if table is None:
    if (path / "ratios.csv").exists() and (path / "metrics.csv").exists():
      return from_olmix(path, maximize=maximize, outcomes=outcomes)
    mixtures = sorted(path.glob("train_mixture_*.csv"))
    losses = sorted(path.glob("train_pile_loss_*.csv"))
    if len(mixtures) == 1 and len(losses) == 1:
      return from_regmix(mixtures[0], losses[0], maximize=maximize, outcomes=outcomes)
    raise RunsTableError(
        f"{path}: directory holds no runs table (looked for runs.parquet, runs.csv, an "
        "Olmix swarm ratios.csv + metrics.csv, or one RegMix pair "
        "train_mixture_*.csv + train_pile_loss_*.csv)")
  frame, meta = _read_table(table)
  mx = set(maximize) | set(meta.get("maximize", []))
  return Runs(frame, source=str(table), maximize=mx, meta=meta.get("meta", {}),
              outcomes=outcomes, domains=domains)


def load_runs(path_or_paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
              *, maximize: Iterable[str] = (),
              outcomes: Sequence[str] | None = None) -> Runs:
  """Loads a runs table from a CSV/Parquet file, a directory (runs.parquet, an Olmix
  swarm or a RegMix CSV pair), or several of these concatenated (same domains).

  outcomes: the outcomes (with or without y_) that must be finite in every run with
  status "ok"; the table's other outcome columns may hold NaN (sparse tables, such as
  per-task scores where each run has only its own task). None checks every outcome.
  """
  if isinstance(path_or_paths, (str, os.PathLike)):
    paths = [pathlib.Path(path_or_paths)]
  else:
    paths = [pathlib.Path(p) for p in path_or_paths]
  if not paths:
    raise RunsTableError("load_runs: no paths given")
  maximize = tuple(maximize)
  if outcomes is not None:
    outcomes = tuple(outcomes)
  # Every table's domains, read from the headers first, so that a table that lacks one
  # is told which w_ column is missing (not that its weights sum short of 1).
  known = sorted(set().union(*map(_peek_domains, paths))) if len(paths) > 1 else []
  parts = [_load_one(p, maximize, outcomes, known) for p in paths]
  if len(parts) == 1:
    return parts[0]
  first = parts[0]
  for part in parts[1:]:
    if part.domains != first.domains:
      missing = sorted(set(first.domains) - set(part.domains))
      extra = sorted(set(part.domains) - set(first.domains))
      col = f"w_{(missing or extra)[0]}"
      raise RunsTableError(
          f"{_where(part.source, col)}: domains differ from {first.source} "
          f"(missing: {missing}, extra: {extra})")
  seen: dict[str, str] = {}
  for part in parts:
    for i, rid in enumerate(part.run_ids):
      if rid in seen:
        raise RunsTableError(
            f"{_where(part.source, 'run_id', i)}: run_id {rid!r} already appears in "
            f"{seen[rid]}")
      seen[rid] = part.source
  frame = pd.concat([p.to_frame() for p in parts], ignore_index=True, sort=False)
  mx = set().union(*(p.maximize for p in parts))
  source = " + ".join(p.source for p in parts)
  return Runs(frame, source=source, maximize=mx,
              meta={"parts": [p.source for p in parts]}, outcomes=outcomes)


def _check_simplex(W: np.ndarray, w_cols: Sequence[str], tol: float, sum_column: str,
                   locate: Callable[[str, int], str]) -> None:
  """Raises RunsTableError on a negative weight or a row whose weights sum to more than
  `tol` away from 1; `locate(column, row)` names the place."""
  if (W < 0).any():
    r, c = (int(v) for v in np.argwhere(W < 0)[0])
    raise RunsTableError(f"{locate(w_cols[c], r)}: negative weight {W[r, c]!r}")
  sums = W.sum(axis=1)
  off = np.flatnonzero(np.abs(sums - 1.0) > tol)
  if len(off):
    r = int(off[0])
    raise RunsTableError(
        f"{locate(sum_column, r)}: weights sum to {sums[r]:.9g}, not 1 (tolerance "
        f"{tol:g}; {len(off)} rows off the simplex: {_rows_text(off.tolist())})")


def _renormalise(frame: pd.DataFrame, w_cols: list[str], source: str,
                 ids: Sequence[Any], id_name: str) -> tuple[pd.DataFrame, int]:
  """Renormalises rows whose weights sum to within IMPORT_RENORM_TOL of 1."""
  W = frame[w_cols].to_numpy(dtype=np.float64)
  if not np.isfinite(W).all():
    r, c = (int(v) for v in np.argwhere(~np.isfinite(W))[0])
    raise RunsTableError(f"{_where(source, w_cols[c], r)} ({id_name} {ids[r]!r}): "
                         "missing or non-numeric weight")
  _check_simplex(W, w_cols, IMPORT_RENORM_TOL, "weights",
                 lambda col, r: f"{_where(source, col, r)} ({id_name} {ids[r]!r})")
  sums = W.sum(axis=1)
  fix = np.abs(sums - 1.0) > 1e-9  # float rounding alone does not count
  out = frame.copy()
  out[w_cols] = W / sums[:, None]
  return out, int(fix.sum())


def from_regmix(mixture_csv: str | os.PathLike[str], loss_csv: str | os.PathLike[str],
                *, maximize: Iterable[str] = (),
                outcomes: Sequence[str] | None = None) -> Runs:
  """Imports RegMix's pair of CSVs (joined on `index`): `train_the_pile_<d>` weights
  become w_<d>, `metric/the_pile_<m>_val_loss` become y_<m>. RegMix rounds weights to
  3 decimals; rows within 0.01 of the simplex are renormalised (count in
  `runs.meta["n_renormalised"]`). Runs without losses (without those in `outcomes`,
  when given) get status "missing"."""
  mixture_csv, loss_csv = pathlib.Path(mixture_csv), pathlib.Path(loss_csv)
  frames = {}
  for path in (mixture_csv, loss_csv):
    if not path.exists():
      raise RunsTableError(f"{path}: RegMix file not found")
    frames[path] = pd.read_csv(path)
    if "index" not in frames[path].columns:
      raise RunsTableError(f"{_where(path, 'index')}: RegMix files join on an 'index' "
                           "column, which is missing")
    dup = frames[path]["index"].duplicated(keep=False).to_numpy()
    if dup.any():
      r = int(np.flatnonzero(dup)[0])
      raise RunsTableError(f"{_where(path, 'index', r)}: duplicated index "
                           f"{frames[path]['index'].iloc[r]!r}")
  mix, loss = frames[mixture_csv], frames[loss_csv]
  w_src = [c for c in mix.columns if c != "index"]
  if not w_src:
    raise RunsTableError(f"{mixture_csv}: no mixture columns besides 'index'")
  rename = {}
  for c in w_src:
    name = c[len(_REGMIX_DOMAIN_PREFIX):] if c.startswith(_REGMIX_DOMAIN_PREFIX) else c
    rename[c] = f"w_{name}"
  y_src = [c for c in loss.columns if c != "index"]
  for c in y_src:
    m = _REGMIX_METRIC.match(c)
    rename[c] = f"y_{m.group(1) if m else _clean_name(c)}"
  mix, n_fixed = _renormalise(mix, w_src, str(mixture_csv), mix["index"].tolist(),
                              "index")
  unknown = sorted(set(loss["index"]) - set(mix["index"]))
  if unknown:
    r = int(np.flatnonzero(loss["index"].isin(unknown).to_numpy())[0])
    raise RunsTableError(f"{_where(loss_csv, 'index', r)}: index {unknown[0]!r} has "
                         f"losses but no mixture in {mixture_csv}")
  frame = mix.merge(loss, on="index", how="left", validate="one_to_one")
  frame = frame.rename(columns=rename)
  y_cols = _required(sorted(rename[c] for c in y_src), outcomes, loss_csv)
  has_y = frame[y_cols].notna().all(axis=1).to_numpy()
  out = pd.DataFrame({"run_id": [f"regmix-{i}" for i in frame["index"]],
                      "seed": np.zeros(len(frame), np.int64)})
  out = pd.concat([out, frame.drop(columns=["index"])], axis=1)
  if not has_y.all():
    out["status"] = np.where(has_y, "ok", "missing")
  if n_fixed:
    log.info("%s: renormalised %d of %d rows onto the simplex", mixture_csv, n_fixed,
             len(out))
  return Runs(out, source=f"{mixture_csv} + {loss_csv}", maximize=maximize,
              meta={"format": "regmix", "n_renormalised": n_fixed}, outcomes=outcomes)


def _required(y_cols: list[str], outcomes: Sequence[str] | None,
              source: Any) -> list[str]:
  """The importer's outcome columns a run needs to count as "ok": `outcomes` (checked
  to exist), or all of them."""
  if outcomes is None:
    return y_cols
  want = [f"y_{_bare(str(o))}" for o in outcomes]
  absent = [c for c in want if c not in y_cols]
  if absent:
    raise RunsTableError(f"{_where(source, absent[0])}: outcome column is missing "
                         f"(present: {_rows_text([_bare(c) for c in y_cols])})")
  return want


def _clean_name(name: str) -> str:
  """Outcome/domain names as column-safe identifiers."""
  cleaned = re.sub(r"[^0-9A-Za-z_.\-]+", "_", str(name)).strip("_")
  return cleaned or "unnamed"


def from_olmix(swarm_dir: str | os.PathLike[str], *,
               maximize: Iterable[str] = (),
               outcomes: Sequence[str] | None = None) -> Runs:
  """Imports an Olmix swarm directory: `ratios.csv` (run_id, optional name, one column
  per domain), `metrics.csv` (run_id, optional name, one column per metric), and a
  `meta.json` (or Olmix's launch `metadata.json`) whose `priors.token_counts` become
  tokens_<domain>; optional keys `budget_tokens`, `maximize`, `seed`.
  Metric names are made column-safe; the original names are in
  `runs.meta["outcome_names"]`. Runs without metrics (without those in `outcomes`,
  cleaned names, when given) get status "missing"."""
  swarm_dir = pathlib.Path(swarm_dir)
  ratios_path, metrics_path = swarm_dir / "ratios.csv", swarm_dir / "metrics.csv"
  for p in (ratios_path, metrics_path):
    if not p.exists():
      raise RunsTableError(f"{p}: Olmix swarm file not found")
  ratios = pd.read_csv(ratios_path, dtype={"run_id": str})
  metrics = pd.read_csv(metrics_path, dtype={"run_id": str})
  for p, f in ((ratios_path, ratios), (metrics_path, metrics)):
    if "run_id" not in f.columns:
      raise RunsTableError(f"{_where(p, 'run_id')}: Olmix swarm files need a 'run_id' "
                           "column")
    dup = f["run_id"].duplicated(keep=False).to_numpy()
    if dup.any():
      r = int(np.flatnonzero(dup)[0])
      raise RunsTableError(f"{_where(p, 'run_id', r)}: duplicated run_id "
                           f"{f['run_id'].iloc[r]!r}")
  meta: dict[str, Any] = {}
  meta_path = next((swarm_dir / n for n in ("meta.json", "metadata.json")
                    if (swarm_dir / n).exists()), None)
  if meta_path is not None:
    try:
      meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
      raise RunsTableError(f"{meta_path}: not valid JSON: {e}") from e
  skip = ("run_id", "name", "index", "run")
  domains = [c for c in ratios.columns if c not in skip]
  metric_cols = [c for c in metrics.columns if c not in skip]
  if not domains:
    raise RunsTableError(f"{ratios_path}: no domain columns")
  if not metric_cols:
    raise RunsTableError(f"{metrics_path}: no metric columns")
  ratios, n_fixed = _renormalise(ratios, domains, str(ratios_path),
                                 ratios["run_id"].tolist(), "run_id")
  missing = sorted(set(metrics["run_id"]) - set(ratios["run_id"]))
  if missing:
    r = int(np.flatnonzero(metrics["run_id"].isin(missing).to_numpy())[0])
    raise RunsTableError(f"{_where(metrics_path, 'run_id', r)}: run {missing[0]!r} has "
                         f"metrics but no ratios in {ratios_path}")
  y_names = {c: _clean_name(c) for c in metric_cols}
  clash = pd.Series(list(y_names.values())).duplicated()
  if clash.any():
    raise RunsTableError(f"{metrics_path}: metric names collide after cleaning: "
                         f"{sorted(set(pd.Series(list(y_names.values()))[clash]))}")
  d_names = {c: _clean_name(c) for c in domains}
  merged = ratios[["run_id"] + domains].merge(
      metrics[["run_id"] + metric_cols], on="run_id", how="left", validate="one_to_one")
  for c in metric_cols:
    merged[c] = pd.to_numeric(merged[c], errors="coerce")
  out = pd.DataFrame({"run_id": merged["run_id"].astype(str),
                      "seed": np.full(len(merged), int(meta.get("seed", 0)), np.int64)})
  for c in domains:
    out[f"w_{d_names[c]}"] = merged[c].to_numpy(np.float64)
  priors = meta.get("priors", meta)
  token_counts = priors.get("token_counts") if isinstance(priors, dict) else None
  if token_counts:
    absent = [c for c in domains if c not in token_counts]
    if absent:
      raise RunsTableError(f"{meta_path}: priors.token_counts lacks domain {absent[0]!r} "
                           f"(a column of {ratios_path})")
    for c in domains:
      out[f"tokens_{d_names[c]}"] = float(token_counts[c])
  budget = meta.get("budget_tokens")
  if budget is None and isinstance(meta.get("config"), dict):
    budget = meta["config"].get("budget_tokens", meta["config"].get("max_tokens"))
  if budget is not None:
    out["budget_tokens"] = float(budget)
  for c in metric_cols:
    out[f"y_{y_names[c]}"] = merged[c].to_numpy(np.float64)
  y_cols = _required(sorted(f"y_{y_names[c]}" for c in metric_cols), outcomes,
                     metrics_path)
  has_y = out[y_cols].notna().all(axis=1).to_numpy()
  if not has_y.all():
    out["status"] = np.where(has_y, "ok", "missing")
  mx = set(maximize) | {y_names.get(m, _clean_name(m)) for m in meta.get("maximize", [])}
  return Runs(out, source=str(swarm_dir), maximize=mx,
              meta={"format": "olmix", "n_renormalised": n_fixed,
                    "outcome_names": {v: k for k, v in y_names.items()},
                    "domain_names": {v: k for k, v in d_names.items()}},
              outcomes=outcomes)


def write_runs(runs: Runs, parquet_path: str | os.PathLike[str]) -> pathlib.Path:
  """Writes the table as Parquet (with `maximize` and `meta` in the schema metadata)
  and as CSV beside it, each atomically. Returns the Parquet path."""
  import pyarrow as pa
  import pyarrow.parquet as pq
  parquet_path = pathlib.Path(parquet_path)
  frame = runs.to_frame()
  table = pa.Table.from_pandas(frame, preserve_index=False)
  info = {"maximize": sorted(runs.maximize), "meta": runs.meta, "source": runs.source}
  table = table.replace_schema_metadata(
      {**(table.schema.metadata or {}), _META_KEY: artifacts.to_json(info, None).encode()})
  csv_path = parquet_path.with_suffix(".csv")
  try:
    with artifacts.atomic_path(parquet_path) as tmp:
      pq.write_table(table, tmp)
  except OSError as e:
    raise _write_error(parquet_path, e) from e
  try:
    with artifacts.atomic_path(csv_path) as tmp:
      frame.to_csv(tmp, index=False, float_format="%.17g")
  except OSError as e:
    raise _write_error(csv_path, e) from e
  return parquet_path


def _write_error(path: pathlib.Path, e: OSError) -> OSError:
  """`e` (disk full, permission denied) again, naming the file whose write failed; the
  previous file, if any, is left as it was."""
  if str(path) in str(e):  # artifacts.atomic_path named it already
    text = e.strerror or str(e)
  else:
    text = (f"could not write {path}: {e.strerror or e} (any previous {path.name} is "
            "intact)")
  return OSError(text) if e.errno is None else OSError(e.errno, text)
