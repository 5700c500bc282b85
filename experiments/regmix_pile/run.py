"""Runs the RegMix study: the default causal surface and RegMix's LightGBM on RegMix's
proxy runs at the 1M scale, scored for predicting the Pile-CC validation loss of runs
they were not fitted on, and timed fitting all runs.

  python experiments/regmix_pile/run.py --config=experiments/regmix_pile/config.py \
      --workdir=/tmp/regmix_pile

Scoring is `surface/evaluation.py`'s for the real sweeps (`evaluate_real`): 5-fold
cross-validation and the held-out last 20% of runs by index, each with Spearman, R^2 and
90% interval coverage. Fit seconds are `evaluation.fit_seconds`: the fastest and the
median of `fit_repeats` rounds of fits on all runs, one of each model per round, after
a warm-up fit of each.
Writes `workdir/results.json` (config, commit, rows, fit times, headline) and
`workdir/results.md` (the tables); the last line printed is one JSON object with the
headline figures.
"""

from __future__ import annotations

import logging
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Sequence

import numpy as np
import pandas as pd
from absl import app
from absl import flags
from ml_collections import config_flags

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from causalmix_jax import artifacts  # noqa: E402
from causalmix_jax import runs as runs_lib  # noqa: E402
from causalmix_jax.surface import evaluation  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Study config, e.g. experiments/regmix_pile/config.py or "
    "experiments/regmix_pile/config.py:smoke.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for the study's results.")
flags.mark_flags_as_required(["config", "workdir"])

# evaluation.py's names: "ours" is `fit_surface(runs, outcome)` with the library
# defaults, "regmix" is RegMix's LightGBM on the mixture weights alone.
METHODS = ("ours", "regmix")
LABELS = {"ours": "causal surface (default)", "regmix": "RegMix LightGBM"}
SPLITS = {f"cv{evaluation.N_FOLDS}": f"{evaluation.N_FOLDS}-fold CV",
          "heldout_last20": "held-out last 20%"}
OUTCOME = evaluation.REGMIX_OUTCOME

_QUIET = ("jax", "causalmix_jax.runs", "causalmix_jax.surface.fit",
          "causalmix_jax.surface.nuisance", "causalmix_jax.surface.robust")


def regmix_files(cfg: Any) -> list[pathlib.Path]:
  """RegMix's two CSVs in `cfg.regmix_dir` (empty: <repo>/../shared/data/regmix);
  FileNotFoundError naming the folder when either is missing."""
  folder = (pathlib.Path(cfg.regmix_dir) if cfg.regmix_dir
            else evaluation.default_data_dir() / "regmix").resolve()
  files = [folder / name for name in evaluation.REGMIX_FILES]
  missing = [f.name for f in files if not f.exists()]
  if missing:
    raise FileNotFoundError(
        f"RegMix data not found in {folder}: missing {', '.join(missing)}; put RegMix's "
        "CSVs there or pass --config.regmix_dir=<folder holding them>")
  return files


def stage(files: Sequence[pathlib.Path], max_runs: int, root: pathlib.Path) -> pathlib.Path:
  """Copies the CSVs to `root/regmix` (the layout `evaluate_real` reads), keeping only
  the first `max_runs` runs by index when positive. Returns `root/regmix`."""
  out = root / "regmix"
  out.mkdir(parents=True)
  keep = None
  if max_runs > 0:
    keep = np.sort(pd.read_csv(files[0])["index"].to_numpy())[:max_runs]
  for f in files:
    if keep is None:
      shutil.copyfile(f, out / f.name)
    else:
      table = pd.read_csv(f)
      table[table["index"].isin(keep)].to_csv(out / f.name, index=False)
  return out


def commit() -> str | None:
  """`git describe --always --dirty` of the repository, or None outside a checkout."""
  try:
    out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO,
                         capture_output=True, text=True, check=True, timeout=30)
  except (OSError, subprocess.SubprocessError):
    return None
  return out.stdout.strip() or None


def _row(rows: Sequence[dict[str, Any]], split: str, method: str) -> dict[str, Any] | None:
  return next((r for r in rows if r["split"] == split and r["method"] == method), None)


def _fmt(v: Any, spec: str) -> str:
  return "–" if v is None else spec.format(v)


def headline(rows: Sequence[dict[str, Any]], fit: dict[str, Any]) -> dict[str, Any]:
  head: dict[str, Any] = {}
  for split, key in ((f"cv{evaluation.N_FOLDS}", f"cv{evaluation.N_FOLDS}"),
                     ("heldout_last20", "heldout")):
    for method in METHODS:
      row = _row(rows, split, method)
      ok = row is not None and row["status"] == "ok"
      head[f"{method}_{key}_spearman"] = row["spearman"] if ok else None
  for key in ("ours_fit_s", "lightgbm_fit_s", "lightgbm_with_bootstrap_fit_s",
              "ours_fit_median_s", "lightgbm_fit_median_s"):
    head[key] = round(fit[key], 3)
  return head


def summary(rows: Sequence[dict[str, Any]], fit: dict[str, Any], n_runs: int,
            n_domains: int, revision: str | None) -> str:
  lines = [f"RegMix 1M sweep: {n_runs} runs, {n_domains} domains, outcome `{OUTCOME}` "
           f"(Pile-CC validation loss); commit `{revision}`.", "",
           "| split | method | Spearman | R^2 | 90% coverage | train / test runs | status |",
           "|---|---|---|---|---|---|---|"]
  for split, split_label in SPLITS.items():
    for method in METHODS:
      r = _row(rows, split, method)
      if r is None:
        continue
      lines.append(
          f"| {split_label} | {LABELS[method]} | {_fmt(r['spearman'], '{:.4f}')} | "
          f"{_fmt(r['r2'], '{:.3f}')} | {_fmt(r['coverage90'], '{:.2f}')} | "
          f"{_fmt(r['n_train'], '{}')} / {_fmt(r['n_test'], '{}')} | {r['status']} |")
  boot = fit["lightgbm_bootstrap_members"]
  lines += ["", f"Fit on all {n_runs} runs (seconds; {fit['repeats']} rounds, one fit "
            "of each model per round):", "",
            "| model | fastest | median |", "|---|---|---|",
            f"| {LABELS['ours']} | {fit['ours_fit_s']:.3f} | "
            f"{fit['ours_fit_median_s']:.3f} |",
            f"| {LABELS['regmix']} (1000 trees) | {fit['lightgbm_fit_s']:.3f} | "
            f"{fit['lightgbm_fit_median_s']:.3f} |",
            f"| {LABELS['regmix']} + {boot} bootstrap members (its intervals) | "
            f"{fit['lightgbm_with_bootstrap_fit_s']:.3f} | "
            f"{fit['lightgbm_with_bootstrap_fit_median_s']:.3f} |"]
  if fit.get("ours_chosen"):
    lines += ["", f"The default surface chose: `{artifacts.to_json(fit['ours_chosen'], None)}`."]
  return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  t0 = time.perf_counter()
  logging.getLogger().setLevel(logging.INFO)
  for name in _QUIET:
    logging.getLogger(name).setLevel(logging.WARNING)
  cfg = _CONFIG.value
  workdir = pathlib.Path(_WORKDIR.value)
  files = regmix_files(cfg)
  revision = commit()
  with tempfile.TemporaryDirectory(prefix="regmix_pile_") as tmp:
    staged = stage(files, int(cfg.max_runs), pathlib.Path(tmp))
    runs = runs_lib.from_regmix(*(staged / name for name in evaluation.REGMIX_FILES))
    logging.info("RegMix data %s: %d runs, %d domains", files[0].parent, len(runs),
                 len(runs.domains))
    rows = [r for r in evaluation.evaluate_real(tmp, evaluation.default_methods(METHODS))
            if r["dataset"] == "regmix"]
  for r in rows:
    if r["status"] != "ok":
      logging.warning("%s / %s: %s", r["split"], r["method"], r["status"])
  fit = evaluation.fit_seconds(runs, OUTCOME, int(cfg.fit_repeats))
  head = headline(rows, fit)
  head.update(n_runs=len(runs), commit=revision,
              wall_s=round(time.perf_counter() - t0, 1))
  text = summary(rows, fit, len(runs), len(runs.domains), revision)
  artifacts.write_json(workdir / "results.json",
                       {"config": cfg.to_dict(), "commit": revision, "outcome": OUTCOME,
                        "n_runs": len(runs), "n_domains": len(runs.domains),
                        "data": str(files[0].parent), "headline": head, "fit": fit,
                        "rows": rows})
  with artifacts.atomic_path(workdir / "results.md") as path:
    path.write_text(text)
  print(text)
  print(artifacts.to_json(head, None))


if __name__ == "__main__":
  app.run(main)
