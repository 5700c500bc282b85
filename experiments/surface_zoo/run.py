"""Runs the surface zoo: evaluates every configured method on each world in turn, then
on the real peer sweeps, and writes the rows and their Markdown summary.

  python experiments/surface_zoo/run.py --config=experiments/surface_zoo/config.py \
      --workdir=/tmp/surface_zoo

Writes `workdir/worlds/<world>.json` after each world and `workdir/real.json` (each
atomically, with the settings it was computed under: a rerun loads the ones whose
settings match and recomputes the rest), then `workdir/results.json` (all rows) and
`workdir/results.md` (the summary). Prints the summary; the last line printed is one
JSON object with the headline figures.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import sys
import time
from typing import Any

from absl import app
from absl import flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))

from causalmix_jax import artifacts  # noqa: E402
from causalmix_jax.surface import evaluation  # noqa: E402
from causalmix_jax.surface import worlds  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Study config, e.g. experiments/surface_zoo/config.py or "
    "experiments/surface_zoo/config.py:smoke.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for the study's results.")
flags.mark_flags_as_required(["config", "workdir"])

# Library loggers whose INFO lines would drown the one line per (world, method).
_QUIET = ("jax", "causalmix_jax.runs", "causalmix_jax.surface.fit",
          "causalmix_jax.surface.nuisance", "causalmix_jax.surface.robust",
          "causalmix_jax.optimise")


def _normalised(obj: Any) -> Any:
  """The JSON form of `obj` (tuples as lists), for comparing stored settings."""
  return json.loads(artifacts.to_json(obj, None))


def _cached(path: pathlib.Path, settings: dict[str, Any]) -> list[dict[str, Any]] | None:
  """The rows stored at `path` when they were computed under `settings`, else None."""
  if not path.exists():
    return None
  try:
    stored = json.loads(path.read_text())
  except (OSError, json.JSONDecodeError) as e:
    logging.warning("%s: unreadable (%s); recomputing", path, e)
    return None
  if stored.get("settings") != _normalised(settings):
    logging.info("%s: computed under other settings; recomputing", path)
    return None
  return stored["rows"]


def _ours_surface(cfg) -> dict[str, str]:
  """--config.ours_surface="key=value,..." as a dict (ValueError naming a bad item)."""
  return evaluation.parse_ours_settings(cfg.ours_surface)


def _world_settings(cfg, name: str) -> dict[str, Any]:
  return {"world": name, "methods": list(cfg.methods), "n_runs": cfg.n_runs,
          "n_pools": cfg.n_pools, "n_test_pools": cfg.n_test_pools,
          "n_mixtures": cfg.n_mixtures, "seeds": cfg.seeds, "seed": cfg.seed,
          **_surface_setting(cfg),
          # Only when set, so results stored before the options existed stay valid.
          **({"uniform_anchors": True} if cfg.uniform_anchors else {}),
          **({"sweep_design": cfg.sweep_design} if cfg.sweep_design != "shares" else {}),
          **evaluation.domain_key(cfg.n_domains)}


def _surface_setting(cfg) -> dict[str, Any]:
  """The cache key's entry for non-default "ours" settings (none with the defaults, so
  results stored before the setting existed stay valid)."""
  settings = _ours_surface(cfg)
  return {"ours_surface": settings} if settings else {}


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  t0 = time.perf_counter()
  logging.getLogger().setLevel(logging.INFO)
  for name in _QUIET:
    logging.getLogger(name).setLevel(logging.WARNING)
  cfg = _CONFIG.value
  workdir = pathlib.Path(_WORKDIR.value)
  methods = evaluation.default_methods(cfg.methods, _ours_surface(cfg))
  n_domains = evaluation.domain_count(cfg.n_domains)
  evaluation.sweep_design(cfg.sweep_design, cfg.n_runs, cfg.n_pools)
  rows: list[dict[str, Any]] = []
  for name in cfg.worlds:
    path = workdir / "worlds" / f"{name}.json"
    settings = _world_settings(cfg, name)
    world_rows = _cached(path, settings)
    if world_rows is not None:
      logging.info("%s: loaded from %s", name, path)
    else:
      world = worlds.make_world(name, seed=cfg.seed, n_domains=n_domains)
      world_rows = evaluation.evaluate_world(
          world, methods, n_runs=cfg.n_runs, n_pools=cfg.n_pools,
          n_test_pools=cfg.n_test_pools, n_mixtures=cfg.n_mixtures, seeds=cfg.seeds,
          seed=cfg.seed, uniform_anchors=bool(cfg.uniform_anchors),
          design=cfg.sweep_design)
      artifacts.write_json(path, {"settings": settings, "rows": world_rows})
    rows += world_rows
  if cfg.real:
    path = workdir / "real.json"
    settings = {"data_dir": cfg.data_dir, "methods": list(cfg.methods),
                **_surface_setting(cfg)}
    real_rows = _cached(path, settings)
    if real_rows is not None:
      logging.info("real sweeps: loaded from %s", path)
    else:
      real_rows = evaluation.evaluate_real(cfg.data_dir or None, methods)
      artifacts.write_json(path, {"settings": settings, "rows": real_rows})
    rows += real_rows
  summary = evaluation.summarise(rows)
  head = evaluation.headline(rows)
  head["wall_s"] = round(time.perf_counter() - t0, 1)
  artifacts.write_json(workdir / "results.json",
                       {"config": cfg.to_dict(), "headline": head, "rows": rows})
  with artifacts.atomic_path(workdir / "results.md") as tmp:
    tmp.write_text(summary)
  print(summary)
  print(artifacts.to_json(head, None))


if __name__ == "__main__":
  app.run(main)
