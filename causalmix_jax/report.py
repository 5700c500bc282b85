"""The report of a study: one Markdown report (and a self-contained HTML copy), from the
pool to the target run, with PNG figures beside it (the `report` stage writes it).

Reads, under the workdir: `surface/` and `optimise/mixture.json` (required: a missing one
fails naming the file); `pool/pool.json`, `pool/covariates.json`, `sweep/runs.parquet`,
`surface/diagnostics.json`, `surface/pred_vs_actual.png`, `validate/summary.json`,
`target/summary.json`, `target/metrics.jsonl` and the analyse stage's
`analysis/interpretation.json` with its `analysis/cate_*.png` figures (optional: a missing
one is stated in the report). Writes `report/report.md`, `report/report.html`,
`report/*.png` and `report/metrics.jsonl`; only process 0 writes.

The report renders artifacts: the CATE section shows the interpretation the analyse
stage computed, and computes none. It is built as a list of blocks (headings,
paragraphs, tables, images) and rendered twice, so the Markdown and the HTML always say
the same thing.

Tables leave out what carries no information, and one sentence says what and how much:
covariates the sweep held constant in every pool state, covariates whose mixture shift
is negligible (`interpretation.split_ranking`; the artifact keeps the whole ranking), and
constraints at the `optimise` config's defaults. Comparisons between mixtures follow one
sign convention, stated at the top of the mixture section: the recommended mixture's
improvement over the other, positive where the recommendation is better.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import logging
import math
import pathlib
import re
import shutil
from typing import Any, Mapping, Sequence

import ml_collections
import numpy as np

from causalmix_jax import artifacts
from causalmix_jax import metrics
from causalmix_jax import study as study_lib
from causalmix_jax.analysis import interpretation
from causalmix_jax.analysis import plots
from causalmix_jax.configs import optimise as optimise_config

log = logging.getLogger(__name__)

REPORT_DIR = study_lib.REPORT_DIR


# ----------------------------------------------------------------------------------------
# blocks and their two renderings


@dataclasses.dataclass(frozen=True)
class Heading:
  text: str
  level: int = 2


@dataclasses.dataclass(frozen=True)
class Para:
  text: str  # plain text; `backticks` mark code


@dataclasses.dataclass(frozen=True)
class Bullets:
  items: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Table:
  header: tuple[str, ...]
  rows: tuple[tuple[str, ...], ...]


@dataclasses.dataclass(frozen=True)
class Image:
  filename: str  # relative to the report directory
  caption: str


Block = Heading | Para | Bullets | Table | Image


def _md_cell(s: str) -> str:
  return str(s).replace("|", "\\|").replace("\n", " ")


def render_markdown(blocks: Sequence[Block]) -> str:
  out: list[str] = []
  for b in blocks:
    if isinstance(b, Heading):
      out.append(f"{'#' * b.level} {b.text}")
    elif isinstance(b, Para):
      out.append(b.text)
    elif isinstance(b, Bullets):
      out.append("\n".join(f"- {it}" for it in b.items))
    elif isinstance(b, Table):
      lines = ["| " + " | ".join(_md_cell(h) for h in b.header) + " |",
               "|" + "|".join("---" for _ in b.header) + "|"]
      lines += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in b.rows]
      out.append("\n".join(lines))
    elif isinstance(b, Image):
      out.append(f"![{b.caption}]({b.filename})\n\n*{b.caption}*")
    else:
      raise TypeError(f"unknown report block {type(b).__name__}")
  return "\n\n".join(out) + "\n"


def _inline_html(s: str) -> str:
  return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(str(s)))


_CSS = ("body{font-family:system-ui,sans-serif;max-width:60em;margin:2em auto;"
        "padding:0 1em;line-height:1.45}table{border-collapse:collapse;margin:.5em 0}"
        "td,th{border:1px solid #bbb;padding:.2em .6em;text-align:left}"
        "th{background:#eee}img{max-width:100%}figcaption{font-style:italic}"
        "code{background:#f3f3f3;padding:0 .2em}")


def render_html(blocks: Sequence[Block], image_dir: pathlib.Path, title: str) -> str:
  """HTML with every image embedded as a data URI (one file, nothing beside it)."""
  out = [f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
         f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"]
  for b in blocks:
    if isinstance(b, Heading):
      out.append(f"<h{b.level}>{_inline_html(b.text)}</h{b.level}>")
    elif isinstance(b, Para):
      out.append(f"<p>{_inline_html(b.text)}</p>")
    elif isinstance(b, Bullets):
      out.append("<ul>" + "".join(f"<li>{_inline_html(i)}</li>" for i in b.items) + "</ul>")
    elif isinstance(b, Table):
      head = "".join(f"<th>{_inline_html(h)}</th>" for h in b.header)
      body = "".join("<tr>" + "".join(f"<td>{_inline_html(c)}</td>" for c in r) + "</tr>"
                     for r in b.rows)
      out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
    elif isinstance(b, Image):
      data = base64.b64encode((image_dir / b.filename).read_bytes()).decode("ascii")
      out.append(f"<figure><img alt='{html.escape(b.caption)}' "
                 f"src='data:image/png;base64,{data}'>"
                 f"<figcaption>{html.escape(b.caption)}</figcaption></figure>")
    else:
      raise TypeError(f"unknown report block {type(b).__name__}")
  out.append("</body></html>\n")
  return "\n".join(out)


# ----------------------------------------------------------------------------------------
# small formatting helpers


def _fmt(v: Any, digits: int = 4) -> str:
  if v is None:
    return "-"
  if isinstance(v, (bool, np.bool_)):
    return str(bool(v))
  if isinstance(v, (int, np.integer)):
    return f"{int(v):,}"
  if isinstance(v, (float, np.floating)):
    f = float(v)
    if math.isnan(f):
      return "nan"
    return f"{f:.{digits}g}"
  if isinstance(v, (list, tuple)):
    if len(v) > 8:
      return "[" + ", ".join(_fmt(x, digits) for x in v[:8]) + f", ... ({len(v)} items)]"
    return "[" + ", ".join(_fmt(x, digits) for x in v) + "]"
  return str(v)


def _flatten(d: Mapping[str, Any], prefix: str = "", depth: int = 3) -> dict[str, Any]:
  out: dict[str, Any] = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, Mapping) and depth > 1:
      out.update(_flatten(v, key + ".", depth - 1))
    else:
      out[key] = v
  return out


def _kv_table(d: Mapping[str, Any], limit: int = 60) -> Table:
  flat = list(_flatten(d).items())
  rows = tuple((k, _fmt(v)) for k, v in flat[:limit])
  if len(flat) > limit:
    rows += ((f"... {len(flat) - limit} more", ""),)
  return Table(("key", "value"), rows)


def _read_optional_json(path: pathlib.Path, what: str, notes: list[str]) -> Any | None:
  if not path.exists():
    notes.append(f"{what} not found ({path}); that section is left out.")
    return None
  return artifacts.read_json(path, what)


# ----------------------------------------------------------------------------------------
# upstream pieces


def _weights_vector(w: Any, domains: Sequence[str], what: str) -> np.ndarray:
  if isinstance(w, Mapping):
    missing = [d for d in domains if d not in w]
    if missing:
      raise ValueError(f"{what} has no weight for domain(s) {missing}")
    return np.array([float(w[d]) for d in domains])
  arr = np.asarray(w, dtype=np.float64)
  if arr.shape != (len(domains),):
    raise ValueError(f"{what} has {arr.shape} weights for {len(domains)} domains")
  return arr


def _as_interval(p: Any) -> tuple[float, float, float] | None:
  if isinstance(p, Mapping) and "mean" in p:
    m = float(np.ravel(p["mean"])[0])
    lo = float(np.ravel(p.get("lo", m))[0])
    hi = float(np.ravel(p.get("hi", m))[0])
    return m, lo, hi
  return None


@dataclasses.dataclass(frozen=True)
class MixtureRow:
  name: str
  weights_D: np.ndarray
  predicted: tuple[float, float, float] | None
  source: str  # "mixture.json" or "surface" (predicted here)


def flat_covariates(cov: Mapping[str, Any]) -> dict[str, float]:
  """covariates.json layout ({"per_domain", "pool"}) or a flat dict -> name: value with
  names `<feature>__<domain>` and `<feature>`, as in the runs table without `x_`."""
  if "per_domain" in cov or "pool" in cov:
    out: dict[str, float] = {}
    for d, feats in (cov.get("per_domain") or {}).items():
      for f, v in feats.items():
        out[f"{f}__{d}"] = v
    for f, v in (cov.get("pool") or {}).items():
      out[f] = v
    return out
  return {(k[2:] if k.startswith("x_") else k): v for k, v in cov.items()
          if isinstance(v, (int, float, np.integer, np.floating))}


def align_covariates(cov: Mapping[str, float],
                     features: Sequence[str]) -> tuple[np.ndarray | None, list[str]]:
  """Covariate vector in the surface's feature order, or None and the missing names."""
  flat = {(k[2:] if k.startswith("x_") else k): v for k, v in cov.items()}
  missing = [f for f in features if (f[2:] if f.startswith("x_") else f) not in flat]
  if missing:
    return None, missing
  return np.array([float(flat[f[2:] if f.startswith("x_") else f]) for f in features]), []


def _predict(surface: Any, w_D: np.ndarray, x_F: np.ndarray | None,
             ci: float) -> tuple[float, float, float]:
  p = surface.predict(w_D[None], x_F, ci=ci)
  return (float(np.ravel(p.mean)[0]), float(np.ravel(p.lo)[0]), float(np.ravel(p.hi)[0]))


def mixture_rows(mix: Mapping[str, Any], surface: Any, x_F: np.ndarray | None,
                 ci: float) -> list[MixtureRow]:
  """Recommended, reference and uniform mixtures with predicted outcomes; predictions
  missing from mixture.json are made with the surface at the mixture's covariates."""
  domains = list(mix.get("domains") or surface.domains)
  if "weights" not in mix:
    raise ValueError("mixture.json has no 'weights'")
  if list(domains) != list(surface.domains):
    raise ValueError(f"mixture.json domains {domains} differ from the surface's "
                     f"{list(surface.domains)}")
  rows = []
  entries: list[tuple[str, Any]] = [("recommended", {"weights": mix["weights"],
                                                     "predicted": mix.get("predicted")})]
  for name in ("reference", "uniform"):
    e = mix.get(name)
    if e is None and name == "uniform":
      e = {"weights": {d: 1.0 / len(domains) for d in domains}}
    if e is None:
      continue
    if isinstance(e, Mapping) and "weights" not in e:
      e = {"weights": e}  # a bare {domain: w}
    entries.append((name, e))
  for name, e in entries:
    w = _weights_vector(e["weights"], domains, f"mixture.json {name} weights")
    pred = _as_interval(e.get("predicted"))
    src = "mixture.json"
    if pred is None:
      pred, src = _predict(surface, w, x_F, ci), "surface"
    rows.append(MixtureRow(name, w, pred, src))
  return rows


# ----------------------------------------------------------------------------------------
# figures


def _write_figure(path: pathlib.Path, fig: Any) -> pathlib.Path:
  """Saves one of the report's own figures, cropped to what is drawn."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  with matplotlib.rc_context(plots.SAVE_RC):
    return artifacts.write_figure(path, fig)


def loss_series(records: Sequence[Mapping[str, Any]]
                ) -> dict[str, tuple[list[float], list[float]]]:
  """Loss curves from a run's metrics.jsonl records: every finite numeric key with
  'loss' in its (flattened) name -> (steps, values)."""
  series: dict[str, tuple[list[float], list[float]]] = {}
  for i, rec in enumerate(records):
    step = rec.get("step", i)
    for k, v in _flatten(rec).items():
      if "loss" in k and isinstance(v, (int, float)) and not isinstance(v, bool) \
          and math.isfinite(v):
        xs, ys = series.setdefault(k, ([], []))
        xs.append(float(step))
        ys.append(float(v))
  return series


# ----------------------------------------------------------------------------------------
# sections


def constant_covariates(runs: Any) -> set[str]:
  """Covariates (named without `x_`) that take one value in every run of the sweep, so
  every pool state it explored shares them (`Runs.constant_features`)."""
  return {c.removeprefix("x_") for c in runs.constant_features}


def _plural(n: int, one: str, many: str) -> str:
  return f"{n} {one if n == 1 else many}"


def _pool_section(workdir: pathlib.Path, runs: Any, notes: list[str]) -> list[Block]:
  """The pool's domains and covariates; covariates the sweep never varied are left out
  of the covariate tables (they cannot explain anything) and counted."""
  blocks: list[Block] = [Heading("Pool")]
  pool = _read_optional_json(workdir / study_lib.POOL_JSON, "pool.json", notes)
  cov = _read_optional_json(workdir / study_lib.COVARIATES_JSON, "covariates.json", notes)
  if pool is None and cov is None:
    blocks.append(Para("The pool's artifacts (`pool/pool.json`, `pool/covariates.json`) "
                       "were not found."))
    return blocks
  if pool is not None:
    per = pool.get("per_domain") or {}
    domains = list(pool.get("domains") or per)
    tokens = {d: (per.get(d) or {}).get("tokens") for d in domains}
    total = sum(t for t in tokens.values() if isinstance(t, (int, float)))
    rows = []
    for d in domains:
      t = tokens[d]
      share = t / total if isinstance(t, (int, float)) and total > 0 else None
      docs = (per.get(d) or {}).get("documents")
      rows.append((d, _fmt(t), _fmt(docs), _fmt(share, 3)))
    blocks.append(Para(f"{len(domains)} domains, {_fmt(total)} training tokens in all."))
    blocks.append(Table(("domain", "tokens", "documents", "token share"), tuple(rows)))
  if cov is not None:
    blocks += _covariate_blocks(cov, runs)
  return blocks


def _reference_section(workdir: pathlib.Path, notes: list[str]) -> list[Block]:
  """The reference model (how it was trained or where it was loaded from) and its
  per-domain scores; nothing when the reference stage is off or has not run."""
  ref = _read_optional_json(workdir / study_lib.REFERENCE_JSON, "reference.json", [])
  if not ref or not ref.get("enabled"):
    return []
  blocks: list[Block] = [Heading("Reference model", 3)]
  train = ref.get("training") or {}
  m = ref.get("model") or {}
  if "loaded_from" in train:
    how = f"loaded from `{train['loaded_from']}`"
  else:
    how = (f"trained here for {train.get('steps')} steps ({_fmt(train.get('tokens'))} "
           f"tokens) on the pool's natural mixture, loss {_fmt(train.get('loss_first'), 3)}"
           f" -> {_fmt(train.get('loss_last'), 3)} nats/token")
  docs = sum((ref.get("documents") or {}).values())
  scored = sum((ref.get("scored_tokens") or {}).values())
  blocks.append(Para(
      f"A {m.get('n_layers')}-layer, {m.get('d_model')}-wide model, {how}, scored "
      f"{_fmt(docs)} documents ({_fmt(scored)} tokens). Its mean loss, predictive entropy "
      "and high-entropy sum (tokens above the pool's top-0.5% entropy threshold, "
      f"{_fmt(ref.get('hes_threshold_bits'), 3)} bits) are covariates of every pool "
      f"state; quality filters keep the documents with the {ref.get('keep')} "
      f"`{ref.get('quality_score')}`."))
  per = ref.get("per_domain") or {}
  blocks.append(Table(("domain", "loss (bits/token)", "entropy (bits)", "HES per 1k tokens"),
                      tuple((d, _fmt(v.get("ref_loss_bits"), 3),
                             _fmt(v.get("ref_entropy_bits"), 3),
                             _fmt(v.get("ref_hes_bits"), 3)) for d, v in per.items())))
  design = _read_optional_json(workdir / study_lib.DESIGN_JSON, "design.json", notes)
  states = (design or {}).get("states") or []
  filtered = [s for s in states if s.get("quality")]
  if filtered:
    verb = "keeps" if len(filtered) == 1 else "keep"
    blocks.append(Para(f"{len(filtered)} of the sweep's {len(states)} pool states {verb} "
                       "only part of some domains' documents by this score."))
  return blocks


def _covariate_blocks(cov: Mapping[str, Any], runs: Any, list_max: int = 8) -> list[Block]:
  """The pool's covariates without those the sweep held constant: a domain or a
  covariate whose values are all constant is left out, a constant value among varying
  ones reads `const`, and one sentence counts what was left out."""
  constant = constant_covariates(runs) if runs is not None else set()
  per = {d: dict(v or {}) for d, v in (cov.get("per_domain") or {}).items()}
  feats = sorted({f for v in per.values() for f in v})
  flat = {(d, f) for d, v in per.items() for f in v if f"{f}__{d}" in constant}
  doms = [d for d in per if any((d, f) not in flat for f in per[d])]
  shown = [f for f in feats if any(f in per[d] and (d, f) not in flat for d in doms)]
  pool_cov = dict(cov.get("pool") or {})
  pool_flat = [k for k in pool_cov if k in constant]
  blocks: list[Block] = []
  if doms and shown:
    blocks.append(Para("Per-domain covariates (the pool state X the surface conditions "
                       "on):"))
    blocks.append(Table(("domain",) + tuple(shown), tuple(
        (d,) + tuple("const" if (d, f) in flat else _fmt(per[d].get(f), 3) for f in shown)
        for d in doms)))
  if len(pool_flat) < len(pool_cov):
    blocks.append(Para("Pool-level covariates:"))
    blocks.append(Table(("covariate", "value"), tuple(
        (k, _fmt(v)) for k, v in pool_cov.items() if k not in constant)))
  n_flat = len(flat) + len(pool_flat)
  if n_flat:
    names = sorted(f"{f}__{d}" for d, f in flat) + pool_flat
    listed = f": {', '.join(names)}" if n_flat <= list_max else ""
    states = _plural(len(np.unique(runs.X, axis=0)), "pool state", "pool states")
    blocks.append(Para(
        f"{_plural(n_flat, 'covariate is', 'covariates are')} constant across the "
        f"sweep's {states} and {'is' if n_flat == 1 else 'are'} not shown (a `const` "
        f"cell is one of them, in a row and a column where others vary){listed}."))
  return blocks


def _read_runs(workdir: pathlib.Path) -> tuple[Any | None, str]:
  """The sweep's runs table, or None and why it could not be read ("" when absent)."""
  from causalmix_jax import runs as runs_lib  # pylint: disable=import-outside-toplevel
  path = workdir / study_lib.RUNS_PARQUET
  if not path.exists():
    return None, ""
  try:
    return runs_lib.load_runs(path), ""
  except (runs_lib.RunsTableError, ValueError, OSError) as e:
    return None, str(e) or type(e).__name__


def _sweep_section(workdir: pathlib.Path, runs: Any, runs_error: str,
                   features: Sequence[str], outcome: str, notes: list[str]) -> list[Block]:
  """The sweep's summary (and whether its runs table has the surface's covariates)."""
  blocks: list[Block] = [Heading("Sweep")]
  path = workdir / study_lib.RUNS_PARQUET
  if runs is None and not runs_error:
    notes.append(f"sweep runs table not found ({path}); the sweep section is left out "
                 "and the CATE interpreter has no pool states to explain.")
    blocks.append(Para(f"The sweep's runs table (`{path}`) was not found."))
    return blocks
  if runs is None:
    notes.append(f"sweep runs table {path} could not be read: {runs_error}")
    blocks.append(Para(f"The sweep's runs table (`{path}`) could not be read: "
                       f"{runs_error}"))
    return blocks
  frame = runs.to_frame()
  ok = runs.ok
  n_states = (len(np.unique(runs.X, axis=0)) if runs.X.shape[1] else 1)
  blocks.append(Para(f"{len(runs)} proxy runs over {len(runs.domains)} domains, "
                     f"{n_states} distinct pool states, "
                     f"{len(np.unique(runs.seeds))} seeds."))
  if "status" in frame.columns:
    counts = frame["status"].value_counts()
    blocks.append(Table(("status", "runs"), tuple((str(k), _fmt(int(v)))
                                                 for k, v in counts.items())))
  rows = []
  for name in runs.outcomes:
    y = runs.y(name)[ok]
    y = y[np.isfinite(y)]
    if y.size == 0:
      rows.append((name, "0") + ("-",) * 6)
      continue
    q = np.quantile(y, [0.0, 0.25, 0.5, 0.75, 1.0])
    mark = " (modelled)" if name == outcome else ""
    rows.append((name + mark, _fmt(int(y.size))) + tuple(_fmt(v) for v in q)
                + (_fmt(float(y.std())),))
  if rows:
    blocks.append(Para("Outcome spread over the successful runs:"))
    blocks.append(Table(("outcome", "runs", "min", "q25", "median", "q75", "max", "std"),
                        tuple(rows)))
  _, missing = interpretation.sweep_rows(runs, features)
  if missing:
    notes.append(f"the runs table {path} lacks the surface's covariate(s) {missing}; the "
                 "CATE interpreter is left out.")
  return blocks


def _surface_section(workdir: pathlib.Path, surface: Any, out_dir: pathlib.Path,
                     notes: list[str]) -> list[Block]:
  blocks: list[Block] = [Heading("Causal response surface")]
  better = "lower" if interpretation.lower_is_better(surface) else "higher"
  blocks.append(Para(f"Outcome `{surface.outcome}` ({better} is "
                     f"better) over {len(surface.domains)} domains and "
                     f"{len(surface.features)} covariates."))
  for line in (covariate_selection_line(getattr(surface, "info", None)),
               extrapolation_line(getattr(surface, "info", None)),
               calibration_line(getattr(surface, "info", None)),
               guard_line(getattr(surface, "info", None))):
    if line:
      blocks.append(Para(line))
  diag = _read_optional_json(workdir / study_lib.SURFACE_DIAGNOSTICS,
                             "surface diagnostics", notes)
  if diag is not None:
    blocks.append(Para("Diagnostics:"))
    blocks.append(_kv_table(diag))
  fig = workdir / study_lib.SURFACE_DIR / "pred_vs_actual.png"
  if fig.exists():
    shutil.copyfile(fig, out_dir / "pred_vs_actual.png")
    blocks.append(Image("pred_vs_actual.png", "Surface: predicted vs actual outcome"))
  else:
    notes.append(f"predicted-vs-actual figure not found ({fig}).")
  return blocks


def covariate_selection_line(info: Mapping[str, Any] | None) -> str | None:
  """Which covariate set the stack kept (`surface.stack_covariates = "select"` or
  "select_all"): the covariate-aware members, their blind copies or their copies on all
  the pool states' components, with the held-out errors that decided; None when no
  selection was made."""
  sel = (info or {}).get("covariate_selection") or {}
  if "aware_mse" not in sel:  # only a selection between sets scores them
    return None
  parts = [f"held-out contrast error {_fmt(sel['aware_mse'])} with the covariates"]
  if "blind_mse" in sel:
    parts.append(f"{_fmt(sel['blind_mse'])} without (summed per pool state, "
                 f"{_fmt(sel['unit_diff_mean'])} +- {_fmt(sel['unit_diff_se'])} lower)")
  if "all_mse" in sel:
    parts.append(f"{_fmt(sel['all_mse'])} on all their components (summed per pool "
                 f"state, {_fmt(sel['all_diff_mean'])} +- {_fmt(sel['all_diff_se'])} "
                 "lower)")
  numbers = "; ".join(parts) + f", over {sel['units']} held-out states"
  rule = ("another set replaces the covariates as capped only when its error is lower "
          "by more than one standard error")
  if sel.get("chosen") == "blind":
    return ("Covariates: the stack dropped them (" + numbers + "). On the sweep's "
            "held-out pool states, one effect for every pool predicted the effects "
            "better than effects that move with the pool's covariates. So the pool's "
            "covariates do not move this recommendation, and the section on what the "
            "pool state changes can show no effect of them.")
  if sel.get("chosen") == "all":
    return ("Covariates: the stack kept every principal component of the pool states ("
            + numbers + "; " + rule + ").")
  return "Covariates: the stack kept them (" + numbers + "; " + rule + ")."


# surface.covariate_extrapolation -> how a stack reads a pool's covariates outside the
# sweep's range ("linear", the default of saved surfaces, is not stated).
EXTRAPOLATION_TEXT = {
    "clip": "every reader (the optimiser, predictions and effects) sees them clipped to "
            "the sweep's range, so intervals off it do not widen with the distance "
            "clipped away",
    "hedge": "the means see them clipped to the sweep's range, and the intervals widen "
             "by the gap to the means that extrapolate them",
    "clip_decisions": "the optimiser decides with them clipped to the sweep's range "
                      "(the pick and the safe check), while the predictions, effects "
                      "and the pick's reported gains shown here extrapolate them"}


def extrapolation_line(info: Mapping[str, Any] | None) -> str | None:
  """How the stack read a pool's covariates outside the sweep's range
  (`info["covariate_extrapolation"]`); None for "linear" or where the fit does not
  say."""
  setting = (info or {}).get("covariate_extrapolation")
  if setting not in EXTRAPOLATION_TEXT:
    return None
  return (f"Covariates outside the sweep's range: {EXTRAPOLATION_TEXT[setting]} "
          f"(surface.covariate_extrapolation = \"{setting}\").")


# The run noise's share of the held-out contrasts' mean squared error from which the
# report says they barely see the surface's own error: half or more.
NOISE_DOMINATES = 0.5


def _spread_sentence(cal: Mapping[str, Any]) -> str:
  """Which spread the conformal factor was fitted against, and what that implies for a
  new pool ("" where the fit does not say)."""
  ratio = cal.get("final_over_heldout_sd")
  if cal.get("spread") == "final":
    return (" The factor was fitted against the final fit's spread "
            "(surface.conformal_spread = \"final\").")
  if cal.get("spread") == "split":
    return (" The intervals' factor was fitted against the final fit's spread, and the "
            "optimiser decides on the factor fitted against the fold fits' "
            "(surface.conformal_spread = \"split\").")
  if ratio is None or not ratio < 1:
    return ""
  return (f" The factor was fitted against the fold fits' spread, and the final fit's is "
          f"{_fmt(ratio)} of it: where the surface's misfit does not shrink with more "
          "runs, a new pool's intervals may have only that share of the width they need "
          "(surface.conformal_spread = \"final\" fits it against the final fit's).")


def calibration_line(info: Mapping[str, Any] | None) -> str | None:
  """What a stacked surface's interval calibration saw on the sweep's held-out
  contrasts (`info["calibration"]`): their coverage at the fitted scale, overall and
  per quartile of contrast size, which way the intervals lean where the smallest and
  largest contrasts fall on opposite sides of the level, and which spread the factor
  was fitted against; None without it."""
  cal = (info or {}).get("calibration") or {}
  if "coverage" not in cal:
    return None
  return _coverage_text(cal) + _spread_sentence(cal) + _units_sentence(cal)


def _units_sentence(cal: Mapping[str, Any]) -> str:
  """What the conformal factor treated as exchangeable, where it was asked to take pool
  states (`surface.conformal_units = "pools"` or "pools_reported", and then which
  factor the optimiser decided on; "" by default)."""
  units = cal.get("units") or {}
  setting = units.get("setting", "pairs")
  if setting == "pairs":
    return ""
  key = f"surface.conformal_units = \"{setting}\""
  if "units" not in units:  # the contrasts stayed the units; the fit says why
    return (f" The contrasts stayed the conformal units ({units.get('reason', '')}; "
            f"{key}).")
  line = (f" The factor took the {units['units']} held-out pool states as its units, "
          f"each weighted equally, at the pooled errors' {_fmt(units['quantile'])} "
          f"quantile ({key})")
  line += f": {units['reason']}." if "reason" in units else "."
  if "decisions" in units:
    line += (" The optimiser decided on the contrasts' factor "
             f"({_fmt(units['decisions']['scale'])}); the intervals and the reported "
             "gains carry the pool states'.")
  return line


def _coverage_text(cal: Mapping[str, Any]) -> str:
  """calibration_line's coverage sentences."""
  level = float(cal.get("level", 0.9))
  bins = cal.get("by_contrast_size") or []
  line = (f"Intervals: calibrated on {cal['contrasts']} held-out contrasts (run noise "
          f"{cal['run_noise']}), they covered {_fmt(cal['coverage'])} of them at the "
          f"{level:.0%} level")
  share = cal.get("noise_share")
  if share is not None:
    line += (f"; run noise is {_fmt(share)} of their mean squared error"
             + (", so they barely see the surface's own error and the intervals' width "
                "rests on the noise's tail" if share >= NOISE_DOMINATES else ""))
  if len(bins) < 2:
    return line + "."
  line += ("; by contrast size (the L1 distance between the two mixtures) "
           + ", ".join(f"{_fmt(b['size_lo'])}-{_fmt(b['size_hi'])}: {_fmt(b['coverage'])}"
                       for b in bins) + ".")
  small, large = bins[0]["coverage"], bins[-1]["coverage"]
  # Noise left in, or taken out where it dominates (subtracting its mean from each
  # squared error leaves its tail): the small contrasts' misses may be noise.
  noisy = (not str(cal["run_noise"]).startswith("taken out")
           or (share is not None and share >= NOISE_DOMINATES))
  noise = (" Part of the small contrasts' misses may be run noise, which an effect's "
           "interval need not cover." if noisy else "")
  if small < level < large:
    return line + (" The intervals of small effects (mixtures close to each other) "
                   "are the more likely too narrow, those of large ones too wide."
                   + noise)
  if large < level < small:
    return line + (" The intervals of large effects (mixtures far apart) are the more "
                   "likely too narrow, those of small ones too wide.")
  return line


def guard_line(info: Mapping[str, Any] | None) -> str | None:
  """What the sweep's held-out pool states said about running the safe objective's
  check against uniform on every pool (`info["heldout_guard"]`, which the default
  trigger "heldout" reads): the two rules' mean observed losses, their difference with
  its standard error, what the trigger does with it, and, where the difference is
  within two standard errors, that the evidence cannot tell the rules apart; None
  without held-out decisions."""
  g = (info or {}).get("heldout_guard") or {}
  if not g.get("cells") or g.get("loss_guarded") is None:
    return None
  diff = g["loss_guarded"] - g["loss_unguarded"]
  se = g.get("diff_se")
  line = (f"Uniform check: on {g['cells']} held-out pool states of the sweep, choosing "
          f"among each state's own runs (the run nearest uniform standing in for "
          f"uniform), the check changed {g['changed']} choices, and the checked rule's "
          f"mean observed loss was {_fmt(g['loss_guarded'])} against "
          f"{_fmt(g['loss_unguarded'])} without it")
  if se is not None:
    line += f" (difference {diff:+.3g} +- {se:.3g})"
  where = "on every pool" if g.get("guard") else "only off the support"
  line += f". So the default trigger (\"heldout\") runs the check {where}."
  if se is not None and abs(diff) < 2.0 * se:
    line += (" The difference is within two standard errors: the held-out runs cannot "
             "tell the two rules apart. Those choices are between the sweep's own "
             "mixtures, while a new pool's pick is set against uniform itself, which "
             "the sweep may not have run near; optimise.off_support_trigger = "
             "\"always\" checks every pick.")
  return line


def _mixture_section(mix: Mapping[str, Any], surface: Any, out_dir: pathlib.Path,
                     ci: float, notes: list[str]) -> list[Block]:
  """The mixture tables and figure."""
  blocks: list[Block] = [Heading("Recommended mixture")]
  x_F = None
  cov = mix.get("covariates")
  if isinstance(cov, Mapping) and cov:
    x_F, missing = align_covariates(flat_covariates(cov), surface.features)
    if missing:
      notes.append(f"mixture.json covariates lack the surface feature(s) {missing}; "
                   "predictions below use the surface's default covariates.")
  rows = mixture_rows(mix, surface, x_F, ci)
  domains = list(surface.domains)
  lower = interpretation.lower_is_better(surface)
  y = f"`{surface.outcome}`"
  blocks.append(Para(
      f"Sign convention: every comparison below, here and in the validation section, is "
      f"the recommended mixture's improvement over the other mixture, positive where the "
      f"recommended mixture is better; {y} is {'lower' if lower else 'higher'}-is-better, "
      "so the improvement is " + (f"the other mixture's {y} minus the recommended's."
                                  if lower else
                                  f"the recommended mixture's {y} minus the other's.")))
  theta = mix.get("theta") if isinstance(mix.get("theta"), Mapping) else {}
  header = ("domain",) + tuple(r.name for r in rows) + (("theta here",) if theta else ())
  table_rows = tuple((d,) + tuple(_fmt(r.weights_D[k], 4) for r in rows)
                     + ((_fmt(theta.get(d)),) if theta else ())
                     for k, d in enumerate(domains))
  blocks.append(Para(
      "Weights per domain (canonical order). The recommended mixture is what the target "
      "stage trains on." + (
          f" 'theta here' is the derivative of the predicted {y} with respect to each "
          "domain's weight where the optimiser started (a change in the outcome, not an "
          f"improvement: {'negative' if lower else 'positive'} favours the domain)."
          if theta else "")))
  blocks.append(Table(header, table_rows))
  rec = rows[0].predicted
  pred_rows = []
  for r in rows:
    m, lo, hi = r.predicted
    gain = (m - rec[0]) if lower else (rec[0] - m)
    pred_rows.append((r.name, _fmt(m), f"[{_fmt(lo)}, {_fmt(hi)}]",
                      "-" if r.name == "recommended" else _fmt(gain), r.source))
  blocks.append(Para(f"Predicted {y} with {ci:.0%} credible intervals, and the "
                     "recommended mixture's improvement in predicted mean:"))
  blocks.append(Table(("mixture", "predicted mean", f"{ci:.0%} interval", "improvement",
                       "from"), tuple(pred_rows)))
  imp = mix.get("improvement")
  if isinstance(imp, Mapping) and imp:
    imp_rows = []
    for name, v in imp.items():
      if isinstance(v, Mapping) and "mean" in v:
        imp_rows.append((name.replace("_", " "), _fmt(v["mean"]),
                         f"[{_fmt(v.get('lo'))}, {_fmt(v.get('hi'))}]",
                         _fmt(v.get("prob_better"), 3)))
    if imp_rows:
      blocks.append(Para(f"Improvement of the recommended mixture over each baseline, in "
                         f"{y}'s units, from joint posterior draws:"))
      blocks.append(Table(("baseline", "improvement", f"{ci:.0%} interval", "P(better)"),
                          tuple(imp_rows)))
  extra = []
  for key in ("method", "objective", "objective_value", "zeroed", "warnings"):
    v = mix.get(key)
    if v is None or (isinstance(v, (Mapping, list)) and not v):
      continue
    if isinstance(v, Mapping):
      extra.append(f"{key}: " + ", ".join(f"{k}={_fmt(x)}" for k, x in _flatten(v).items()))
    else:
      extra.append(f"{key}: {_fmt(v)}")
  sup = mix.get("support")
  if not sup and x_F is not None and hasattr(surface, "support"):
    sup = surface.support(x_F)
  if isinstance(sup, Mapping) and sup:
    extra.append(_support_line(sup))
  check = (mix.get("diagnostics") or {}).get("safe_check")
  if isinstance(check, Mapping) and check.get("ran"):
    extra.append(_safe_check_line(check))
  if isinstance(check, Mapping) and check.get("mean_guard_replaced"):
    to = check.get("mean_guard_reference", "uniform")
    by = check.get("pick_mean_difference_to_guard_reference",
                   check.get("pick_mean_difference_to_uniform", 0.0))
    extra.append(f"mean guard: the safe objective's pick was expected to do worse than "
                 f"{to} (posterior mean, by {_fmt(abs(by))}), so {to} was taken")
  if isinstance(check, Mapping):
    dscale = check.get("decision_scale", 1.0)
    rscale = check.get("report_scale", dscale)
    if rscale != dscale:
      extra.append(f"reported gain over uniform: its spread scaled by {_fmt(rscale)}, "
                   "the decision calibration fitted on the sweep's held-out pool "
                   "states; the safe check decides on the unscaled spread "
                   "(surface.decision_calibration = \"report\")")
  averaged = (mix.get("diagnostics") or {}).get("decision_average")
  if isinstance(averaged, Mapping) and averaged.get("used"):
    extra.append(_decision_average_line(averaged))
  if extra:
    blocks.append(Bullets(tuple(extra)))
  if isinstance(mix.get("constraints"), Mapping) and mix["constraints"]:
    blocks += _constraint_blocks(mix, surface)
  _write_figure(out_dir / "mixture.png",
                plots.plot_mixtures(rows, domains, surface.outcome))
  blocks.append(Image("mixture.png", "Recommended vs reference vs uniform mixture"))
  return blocks


def _per_domain_values(v: Any, domains: Sequence[str], default: float) -> dict[str, float]:
  """A constraint given as a scalar or {domain: value} -> {domain: value}."""
  if isinstance(v, Mapping):
    return {d: float(v.get(d, default)) for d in domains}
  return {d: float(default if v is None else v) for d in domains}


def _safe_caps(mix: Mapping[str, Any], surface: Any,
               domains: Sequence[str]) -> dict[str, float]:
  """The per-domain cap the `safe` objective adds (the largest weight the sweep gave
  the domain, never below the reference's; see optimise/recommend.py); empty when the
  objective is another or the surface does not record the sweep's weights."""
  w_max = (getattr(surface, "support_stats", None) or {}).get("w_max")
  if mix.get("objective") != "safe" or w_max is None:
    return {}
  ref = mix.get("reference")
  ref = ref.get("weights", ref) if isinstance(ref, Mapping) else {}
  return {d: max(float(m), float(ref.get(d, 0.0))) for d, m in zip(domains, w_max)}


def nondefault_constraints(mix: Mapping[str, Any], surface: Any
                           ) -> tuple[list[tuple[str, str]], list[str]]:
  """The constraints of mixture.json that differ from the `optimise` config's defaults,
  as (constraint, value) rows, and the domains whose weight sits at the `safe`
  objective's cap. The pool's token counts and the target's budget are only shown with
  the epoch cap they feed; the trust region's kind only with its radius; a maximum
  weight equal to the safe objective's cap counts as a default (the objective sets
  it, not the user)."""
  defaults = optimise_config.section(frozenset())
  c = mix["constraints"]
  domains = list(surface.domains)
  rows: list[tuple[str, str]] = []
  lo = _per_domain_values(c.get("min_weight"), domains, defaults.min_weight)
  lo_set = {d: v for d, v in lo.items() if v != defaults.min_weight}
  if lo_set:
    rows.append(("min_weight", ", ".join(f"{d}={_fmt(v)}" for d, v in lo_set.items())))
  pinned = {d: float(v) for d, v in (c.get("pinned") or {}).items()}
  caps = _safe_caps(mix, surface, domains)
  hi = _per_domain_values(c.get("max_weight"), domains, defaults.max_weight)
  hi_set = {d: v for d, v in hi.items() if v < defaults.max_weight
            and not math.isclose(v, caps.get(d, math.nan), rel_tol=1e-9, abs_tol=1e-12)
            and not math.isclose(v, pinned.get(d, math.nan), rel_tol=1e-9,
                                 abs_tol=1e-12)}
  if hi_set:
    rows.append(("max_weight", ", ".join(f"{d}={_fmt(v)}" for d, v in hi_set.items())))
  if pinned:
    rows.append(("pinned", ", ".join(f"{d}={_fmt(v)}" for d, v in pinned.items())))
  epochs = float(c.get("max_epochs") or 0.0)
  if epochs != defaults.max_epochs:
    rows.append(("max_epochs", f"{_fmt(epochs)} (target budget "
                               f"{_fmt(c.get('budget_tokens'))} tokens)"))
  radius = float(c.get("trust_radius") or 0.0)
  if radius != defaults.trust_radius:
    rows.append(("trust region", f"{c.get('trust_kind', defaults.trust_kind)} radius "
                                 f"{_fmt(radius)} around the reference"))
  m = c.get("sampler_min_weight")
  if m is not None and float(m) != defaults.sampler_min_weight:
    rows.append(("sampler_min_weight", _fmt(m)))
  known = {"min_weight", "max_weight", "pinned", "max_epochs", "tokens", "budget_tokens",
           "trust_radius", "trust_kind", "sampler_min_weight"}
  rows += [(k, _fmt(v)) for k, v in c.items() if k not in known and v not in (None, {})]
  weights = mix.get("weights") if isinstance(mix.get("weights"), Mapping) else {}
  at_cap = [d for d, cap in caps.items() if d in weights and d not in hi_set
            and float(weights[d]) >= min(cap, hi[d]) - 1e-6]
  return rows, at_cap


def _constraint_blocks(mix: Mapping[str, Any], surface: Any) -> list[Block]:
  """The constraints table when some constraint differs from the defaults, else one
  sentence naming the defaults."""
  d = optimise_config.section(frozenset())
  rows, at_cap = nondefault_constraints(mix, surface)
  safe = ""
  if _safe_caps(mix, surface, list(surface.domains)):
    safe = ("; the safe objective caps each domain at the largest weight the sweep gave "
            "it" + (f", reached by {', '.join(at_cap)}" if at_cap else ""))
  defaults = (f"every weight in [{_fmt(d.min_weight)}, {_fmt(d.max_weight)}], no pinned "
              "domain, no epoch cap, no trust region, the sampler's smallest weight "
              f"{_fmt(d.sampler_min_weight)}{safe}")
  if not rows:
    return [Para(f"No constraints beyond the defaults ({defaults}).")]
  return [Para(f"Constraints that differ from the defaults ({defaults}):"),
          Table(("constraint", "value"), tuple(rows))]


def _support_line(sup: Mapping[str, Any], top: int = 5) -> str:
  """One line on how far the pool's covariates sit from the sweep's: the summary
  distances, and the covariates furthest out (in sweep standard deviations)."""
  scalars = [k for k, v in sup.items()
             if k not in ("z", "outside_range") and not isinstance(v, (Mapping, list))]
  parts = [f"{k}={_fmt(sup[k])}" for k in scalars]
  z = sup.get("z") or {}
  if isinstance(z, Mapping) and z:
    far = sorted(z.items(), key=lambda kv: -abs(float(kv[1])))[:top]
    parts.append("furthest covariates (z): " + ", ".join(f"{k}={_fmt(v)}" for k, v in far))
  outside = sup.get("outside_range") or []
  if outside:
    parts.append(f"{len(outside)} covariate(s) outside the sweep's range: "
                 + ", ".join(map(str, outside[:top])) + (" ..." if len(outside) > top else ""))
  return "support: " + "; ".join(parts)


def _safe_check_line(check: Mapping[str, Any]) -> str:
  """What the safe objective's off-support check did, and why it ran."""
  capped = "baseline_weights" in check
  short = "the capped uniform" if capped else "uniform"
  base = (short + " (uniform with no domain repeated past the sweep's most epochs)"
          if capped else short)
  ub = check.get("bound_pick_difference_to_baseline_upper_bound" if capped else
                 "bound_pick_difference_to_uniform_upper_bound")
  # The safe objective's own pick: lowest bound (default) or lowest mean (safe_score).
  pick = "lowest-mean" if check.get("score") == "mean" else "lowest-bound"
  if check.get("fallback") == "anchors":
    head = ("safe check against the anchors (ran because "
            + "; ".join(check.get("reasons", [])) + "): ")
    worst = _fmt(check.get("anchor_difference_upper_bound"))
    if not check.get("replaced"):
      return head + (f"the {pick} mixture also had the lowest worst-case upper "
                     f"bound against the sweep's best-known mixtures and {base} "
                     f"({worst}), so it was kept")
    took = _took(check)
    return head + (f"the candidate with the lowest worst-case upper bound against the "
                   f"sweep's best-known mixtures and {base} ({worst}) replaced the "
                   f"{pick} mixture ({took})")
  head = (f"safe check against {base} (ran because " + "; ".join(check.get("reasons", []))
          + f"): the {pick} mixture's difference to {'it' if capped else 'uniform'} has "
          f"upper bound {_fmt(ub)}")
  scale = check.get("decision_scale", 1.0)
  if scale != 1.0:
    head += (f" (its spread scaled by {_fmt(scale)}, the decision calibration fitted on "
             "the sweep's held-out pool states)")
  if not check.get("replaced"):
    return head + ", so it was kept"
  # Which candidate the fallback took (recommend's `fallback_score`).
  which = ("the candidate with the lowest posterior mean loss among those whose bound "
           "is at most 0" if check.get("fallback_score") == "mean"
           else "the candidate with the lowest such bound")
  frac = check.get("shrink_fraction")
  if frac is not None:
    return (head + f", not below 0, so the point {frac:.0%} of the way from {short} to "
            f"it, {which}, was taken; the surface is sure of a shorter move toward it, "
            "not of the whole one")
  return (head + f", not below 0, so {which} was taken ({_took(check)}); the surface is "
          f"not sure anything beats {base} for this pool")


# Which of the safe objective's tests a mean taken under each decision_average passed.
_AVERAGE_TESTS = {
    "checked": "the mean passed the safe objective's check and mean guard",
    "guarded": "the mean passed the safe objective's mean guard (the off-support "
               "check applies to the surface's pick)",
    "held": "the mean passed the safe objective's mean guard, and the safe objective "
            "had kept the surface's own pick"}
_AVERAGE_UNCHECKED = ("the safe objective's check applies to the surface's pick, not "
                      "to the mean")


def _decision_average_line(averaged: Mapping[str, Any]) -> str:
  """What recommend's `decision_average` did: the two picks it averaged."""
  def mix(w: Any) -> str:
    return ", ".join(f"{d}={_fmt(v)}" for d, v in (w or {}).items())
  return ("decision average: the recommendation is the mean of the surface's pick ("
          + mix(averaged.get("surface_pick")) + ") and its companion model's pick ("
          + mix(averaged.get("companion_pick")) + ", the best of Monte-Carlo mixtures "
          f"around the {averaged.get('prior', 'token shares')}"
          + (f"; it reads epochs, at {averaged['companion_pool']}"
             if averaged.get("companion_pool") else "") + "); "
          + _AVERAGE_TESTS.get(averaged.get("setting"), _AVERAGE_UNCHECKED))


def _took(check: Mapping[str, Any]) -> str:
  """Which candidate the safe check's fallback took, in words."""
  if check.get("took_baseline"):
    return "the capped uniform itself"
  return "uniform itself" if check.get("took_uniform") else "another candidate"


def _validation_section(workdir: pathlib.Path, out_dir: pathlib.Path, lower: bool,
                        notes: list[str]) -> list[Block]:
  """The validate stage's realized outcomes against its predictions, if it ran. Its
  paired differences (mixture minus recommendation) are shown as the recommendation's
  improvement, the mixture section's convention: as they are when lower is better,
  negated otherwise."""
  summary = _read_optional_json(workdir / study_lib.VALIDATE_SUMMARY, "validation summary",
                                notes)
  if summary is None:
    return []
  rows, pct = summary["table"], f"{summary['ci']:.0%}"
  sign = 1.0 if lower else -1.0
  blocks: list[Block] = [Heading("Validation: the recommendation trained beside its "
                                 "baselines"), Para(
      f"Each mixture trained for {summary['seeds']} seeds (common random numbers) at "
      f"{summary['scale']} scale ({summary['budget_tokens']} tokens per run). Realized "
      f"`{summary['outcome']}`: mean and {pct} interval over seeds; the recommendation's "
      "improvement over each mixture, paired on the same seeds, follows the sign "
      "convention of the mixture section. The recommendation validated: "
      f"{summary.get('recommended_from', 'optimise/mixture.json')}.")]
  has_pred = all("predicted" in r for r in rows)
  header = ("mixture", "realized", f"{pct} interval", "improvement",
            f"{pct} interval") + (("predicted", "predictive interval") if has_pred else ())

  def flip(v: Any) -> Any:  # + 0.0: a negated 0 prints as 0
    return sign * float(v) + 0.0 if isinstance(v, (int, float)) else v

  def gain(r: Mapping[str, Any]) -> tuple[str, str]:
    lo, hi = flip(r["diff_lo"]), flip(r["diff_hi"])
    if not lower:
      lo, hi = hi, lo
    return _fmt(flip(r["diff_vs_recommended"])), f"[{_fmt(lo)}, {_fmt(hi)}]"

  blocks.append(Table(header, tuple(
      (r["mixture"] + (" (best)" if r["best"] else ""), _fmt(r["mean"]),
       f"[{_fmt(r['lo'])}, {_fmt(r['hi'])}]") + gain(r)
      + ((_fmt(r["predicted"]), f"[{_fmt(r['predicted_lo'])}, {_fmt(r['predicted_hi'])}]")
         if has_pred else ()) for r in rows)))
  artifacts.write_figure(out_dir / "validation.png",
                         plots.plot_validation(rows, summary["outcome"]))
  blocks.append(Image("validation.png", "Realized outcome per mixture (bars, interval "
                      "over seeds) and the surface's predictive interval (points)."))
  if has_pred:
    rec = next(r for r in rows if r["mixture"] == "recommended")
    inside = rec["predicted_lo"] <= rec["mean"] <= rec["predicted_hi"]
    blocks.append(Para(
        f"The recommendation was predicted at {_fmt(rec['predicted'])} and realized "
        f"{_fmt(rec['mean'])}: {'inside' if inside else 'OUTSIDE'} the predictive "
        "interval."))
  return blocks


def _range_caveat(mix: Mapping[str, Any], surface: Any) -> list[Block]:
  """A warning for each domain whose recommended weight exceeds the largest weight the
  sweep gave it: the prediction there is an extrapolation."""
  w_max = (getattr(surface, "support_stats", None) or {}).get("w_max")
  weights = mix.get("weights")
  if w_max is None or not isinstance(weights, Mapping):
    return []
  over = [(d, float(weights[d]), float(m)) for d, m in zip(surface.domains, w_max)
          if d in weights and float(weights[d]) > float(m) + 1e-6]
  if not over:
    return []
  return [Para("Warning: the recommended mixture leaves the range the sweep tried: " +
               "; ".join(f"{d} {w:.3f} (sweep's largest {m:.3f})" for d, w, m in over) +
               ". Its prediction there is an extrapolation; validate it before use.")]


def _confidence_caveat(workdir: pathlib.Path) -> list[Block]:
  """A warning under the recommendation when the surface's held-out intervals
  under-covered: its P(better) and intervals are then optimistic."""
  path = workdir / study_lib.SURFACE_DIAGNOSTICS
  if not path.exists():
    return []
  cov = artifacts.read_json(path, "surface diagnostics").get("heldout_interval_coverage")
  if cov is None or cov >= 0.8:
    return []
  return [Para(f"Warning: on held-out pool states the surface's 90% intervals covered "
               f"only {cov:.0%} of runs, so the intervals and P(better) above are "
               "optimistic; the validation section (when run) shows what training the "
               "mixtures gave.")]


def _target_section(workdir: pathlib.Path, out_dir: pathlib.Path,
                    notes: list[str]) -> list[Block]:
  blocks: list[Block] = [Heading("Target run")]
  summary = _read_optional_json(workdir / study_lib.TARGET_SUMMARY, "target summary",
                                notes)
  if summary is None:
    blocks.append(Para("The target run's summary (`target/summary.json`) was not found."))
  else:
    scalars = {k: v for k, v in summary.items()
               if not isinstance(v, Mapping) and k != "domains"}
    nested = {k: v for k, v in summary.items() if isinstance(v, Mapping)}
    if scalars:
      blocks.append(_kv_table(scalars))
    evals = nested.pop("eval_loss", None)
    weights = nested.pop("weights", None) if evals else None
    if evals:
      names = list(summary.get("domains") or evals)
      blocks.append(Para("Held-out loss per domain at the end of the target run:"))
      blocks.append(Table(("domain", "weight trained", "held-out loss"), tuple(
          (d, _fmt((weights or {}).get(d)), _fmt(evals.get(d))) for d in names)))
    for k, v in nested.items():
      if v and all(not isinstance(x, Mapping) for x in v.values()):
        blocks.append(Para(f"{k}:"))
        blocks.append(Table(("name", "value"), tuple((n, _fmt(x)) for n, x in v.items())))
      elif v:
        blocks.append(Para(f"{k}:"))
        blocks.append(_kv_table(v))
  recs = metrics.read_metrics(workdir / study_lib.TARGET_DIR / "metrics.jsonl")
  if recs:
    series = loss_series(recs)
    if series:
      _write_figure(out_dir / "target_losses.png", plots.plot_losses(series))
      blocks.append(Image("target_losses.png", "Target run losses"))
  elif summary is not None:
    notes.append("target/metrics.jsonl not found or empty; no loss curves.")
  return blocks


_CATE_FIGURES = (  # (artifact, caption); the partial dependence may not be drawn
    (study_lib.THETA_PNG, "Marginal return of each domain over the sweep's pool states"),
    (study_lib.PARTIAL_DEPENDENCE_PNG, "Partial dependence of the marginal returns on the "
                                       "covariates that move the mixture most (bands: "
                                       "average pointwise {ci:.0%} intervals)"),
    (study_lib.RANKING_PNG, "Covariates ranked by mixture shift"))


def _cate_section(workdir: pathlib.Path, out_dir: pathlib.Path, notes: list[str]
                  ) -> tuple[list[Block], interpretation.Interpretation | None]:
  """The analyse stage's interpretation, as written (nothing is computed here)."""
  blocks: list[Block] = [Heading("What the pool state changes (CATE interpreter)")]
  study = study_lib.Study(workdir)
  if not study.has(study_lib.INTERPRETATION_JSON):
    path = study.path(study_lib.INTERPRETATION_JSON)
    notes.append(f"CATE interpretation not found ({path}); that section is left out "
                 "(run --stage=analyse).")
    blocks.append(Para(f"The CATE interpretation (`{study_lib.INTERPRETATION_JSON}`) was "
                       "not found."))
    return blocks, None
  res = study.interpretation
  if res.skipped:
    blocks.append(Para(res.skipped))
    return blocks, res
  n_rows = res.n_rows
  blocks.append(Para(
      f"theta_d(x) is the marginal return of domain d: the change in `{res.outcome}` per "
      f"unit increase of d's log-ratio, at pool state x (a change in the outcome, not an "
      f"improvement: with {'lower' if res.lower_is_better else 'higher'} `{res.outcome}` "
      f"better, {'negative' if res.lower_is_better else 'positive'} theta favours d). It "
      f"was evaluated at {n_rows} distinct pool states of the sweep" +
      (f" (evenly thinned from {res.n_rows_total})" if res.n_rows_total > n_rows else "") +
      ". On the simplex only differences between domains move the outcome, so the rules "
      "below are fitted on returns relative to the average domain."))
  blocks.append(Para(f"Rules (regression tree of depth {res.tree_depth} over the "
                     f"covariates, at least {res.min_samples_leaf} pool states per "
                     f"leaf):"))
  blocks.append(Bullets(tuple(f"`{r.text}`" for r in res.rules)))
  notable, negligible = interpretation.split_ranking(res.ranking)
  cut = interpretation.negligible_shift_cut(res.ranking)
  floor = _fmt(interpretation.NEGLIGIBLE_SHIFT_FLOOR)
  if notable:
    blocks.append(Para(
        "Covariates ranked by how much they move the recommended mixture (mixture shift: "
        "mean over pool states of the largest total-variation distance between the "
        "mixtures recommended as the covariate sweeps its range; the recommendation is a "
        "unit log-ratio step from the reference along the relative returns):"))
    blocks.append(Table(
        ("covariate", "mixture shift", "theta range", "tree importance",
         "favoured at low end", "favoured at high end"),
        tuple((e.feature, _fmt(e.mixture_shift, 3), _fmt(e.theta_range, 3),
               _fmt(e.tree_importance, 3), e.favoured_lo, e.favoured_hi)
              for e in notable)))
    if negligible:
      n = len(negligible)
      blocks.append(Para(
          f"{_plural(n, 'covariate', 'covariates')} of {len(res.ranking)} "
          f"{'is' if n == 1 else 'are'} not shown: "
          f"{'its' if n == 1 else 'their'} mixture shift is negligible, below "
          f"{interpretation.NEGLIGIBLE_SHIFT_SHARE:.0%} of the largest or below {floor} "
          f"(here below {_fmt(cut, 3)}); `{study_lib.INTERPRETATION_JSON}` holds the whole "
          "ranking."))
  elif res.ranking:
    blocks.append(Para(
        f"No covariate moves the recommended mixture: the largest mixture shift of the "
        f"{len(res.ranking)} covariates is {_fmt(res.ranking[0].mixture_shift, 3)}, below "
        f"the {floor} under which a shift is negligible, so the ranking table and the "
        "ranking and partial-dependence figures are not shown; "
        f"`{study_lib.INTERPRETATION_JSON}` holds the whole ranking."))
  ci = res.theta.ci if res.theta is not None else math.nan
  for rel, caption in _CATE_FIGURES:
    if not notable and rel in (study_lib.PARTIAL_DEPENDENCE_PNG, study_lib.RANKING_PNG):
      continue  # they draw the negligible covariates
    src = study.path(rel)
    if src.exists():
      shutil.copyfile(src, out_dir / src.name)
      blocks.append(Image(src.name, caption.format(ci=ci)))
    elif rel != study_lib.PARTIAL_DEPENDENCE_PNG:
      notes.append(f"CATE figure not found ({src}).")
  blocks.append(Para("Per-domain trees of theta_d itself (absolute, not relative):"))
  blocks.append(Bullets(tuple(f"`{d}: " + "; ".join(lines) + "`"
                              for d, lines in res.domain_rules.items())))
  return blocks, res


# ----------------------------------------------------------------------------------------
# the stage


def build_report(cfg: ml_collections.ConfigDict, workdir: pathlib.Path,
                 surface: Any) -> tuple[list[Block], dict[str, Any]]:
  """Builds the report's blocks (writing its figures into workdir/report)."""
  rcfg = cfg.report
  interpretation.check_config(rcfg)
  out_dir = workdir / REPORT_DIR
  out_dir.mkdir(parents=True, exist_ok=True)
  notes: list[str] = []
  mix = artifacts.read_json(workdir / study_lib.MIXTURE_JSON, "mixture.json")
  blocks: list[Block] = [Heading(str(rcfg.title), 1),
                         Para(f"Study outcome `{surface.outcome}`; workdir `{workdir}`.")]
  runs, runs_error = _read_runs(workdir)
  blocks += _pool_section(workdir, runs, notes)
  blocks += _reference_section(workdir, notes)
  blocks += _sweep_section(workdir, runs, runs_error, list(surface.features),
                           surface.outcome, notes)
  blocks += _surface_section(workdir, surface, out_dir, notes)
  blocks += _mixture_section(mix, surface, out_dir, float(rcfg.ci), notes)
  blocks += _confidence_caveat(workdir)
  blocks += _range_caveat(mix, surface)
  blocks += _validation_section(workdir, out_dir,
                                interpretation.lower_is_better(surface), notes)
  blocks += _target_section(workdir, out_dir, notes)
  cate_blocks, res = _cate_section(workdir, out_dir, notes)
  blocks += cate_blocks
  if notes:
    blocks += [Heading("Missing pieces"), Bullets(tuple(notes))]
  info = {"n_notes": len(notes), "n_rules": len(res.rules) if res else 0,
          "top_covariate": res.ranking[0].feature if res and res.ranking else None,
          "n_figures": len(list(out_dir.glob("*.png")))}
  return blocks, info
