"""Compares decision rules on one fit: per world of the zoo config, "ours" is fitted
once (with `--config.ours_surface`), and each rule of `--rules` (recommend's
SAFE_SETTINGS) recommends for the same new and shifted pools. Cheaper than one zoo run
per rule, and paired: the rules differ only in the decision.

  python experiments/surface_zoo/decisions.py --config=experiments/surface_zoo/config.py \
      --config.seed=73 --config.ours_surface=companion=trees \
      --rules="D:decision_average=none;HC:decision_average=checked" \
      --workdir=/tmp/zoo_decisions_73

A rule may also name `companion=<surface.companion>` ("trees", "trees_epochs",
"none"): that companion is fitted on the same runs and stands in for the fit's own in
that rule's recommendations (the stack is not refitted; the companion is one LightGBM
fit), so two companions are compared on one fit too.

Writes `workdir/worlds/<world>.json` after each world (a rerun loads the ones computed
under the same settings) and `workdir/results.json` (every row: world, split, rule,
mean regret and uniform's, the gain-interval counts). Prints one line per world, then
the summary as one JSON object on the last line.
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
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))

from causalmix_jax import artifacts  # noqa: E402
from causalmix_jax.optimise.recommend import SAFE_SETTINGS  # noqa: E402
from causalmix_jax.optimise.recommend import check_safe_setting  # noqa: E402
from causalmix_jax.surface import evaluation  # noqa: E402
from causalmix_jax.surface import fit as fit_lib  # noqa: E402
from causalmix_jax.surface import worlds  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "The zoo's config (experiments/surface_zoo/config.py): worlds, seed, "
    "sweep and pool sizes, ours_surface.", lock_config=True)
_RULES = flags.DEFINE_string(
    "rules", "D:decision_average=none;HC:decision_average=checked",
    "Decision rules: NAME:key=value,key=value;NAME:... (keys: recommend's "
    "SAFE_SETTINGS, and companion=<surface.companion> for a companion refitted on the "
    "same runs; an empty list after the colon is recommend's defaults).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for the results.")
flags.mark_flags_as_required(["config", "workdir"])


# The rule key that swaps the companion model (the others are recommend's settings).
COMPANION_KEY = "companion"


def parse_rules(text: str) -> dict[str, dict[str, str]]:
  """--rules as {name: {setting: value}}; ValueError naming a bad rule or setting."""
  rules: dict[str, dict[str, str]] = {}
  for item in filter(None, (t.strip() for t in text.split(";"))):
    name, sep, body = item.partition(":")
    name = name.strip()
    if not sep or not name or name in rules:
      raise ValueError(f"--rules: {item!r} is not NAME:key=value,... with a new NAME")
    kw = {}
    for pair in filter(None, (p.strip() for p in body.split(","))):
      key, eq, value = (t.strip() for t in pair.partition("="))
      if eq and key == COMPANION_KEY:
        if value not in fit_lib.COMPANIONS:
          raise ValueError(f"--rules: {name}: companion {value!r} is not one of "
                           f"{list(fit_lib.COMPANIONS)}")
        kw[key] = value
        continue
      if not eq or key not in SAFE_SETTINGS:
        raise ValueError(f"--rules: {name}: {pair!r} is not key=value with a key of "
                         f"{sorted([*SAFE_SETTINGS, COMPANION_KEY])}")
      kw[key] = check_safe_setting(key, value)
    rules[name] = kw
  if not rules:
    raise ValueError("--rules: no rule given")
  return rules


def sweep_options(cfg: Any) -> dict[str, Any]:
  """The config's sweep options as `World.sweep` keywords (only those it sets)."""
  return evaluation.sweep_options(bool(cfg.uniform_anchors), cfg.sweep_design)


def score_world(world: Any, surface_settings: dict[str, str],
                rules: dict[str, dict[str, str]], cfg: Any) -> list[dict[str, Any]]:
  """One fit of "ours" on the world's sweep; one row per (split, rule)."""
  runs = world.sweep(n_runs=cfg.n_runs, n_pools=cfg.n_pools, seeds=cfg.seeds,
                     seed=cfg.seed, **sweep_options(cfg))
  align = evaluation._align(world, runs)  # pylint: disable=protected-access
  cases = evaluation._split_cases(  # pylint: disable=protected-access
      world, align, cfg.n_test_pools, cfg.n_mixtures, cfg.seed)
  config = evaluation.surface_config(surface_settings) if surface_settings else None
  t0 = time.perf_counter()
  surface = fit_lib.fit_surface(runs, evaluation.OUTCOME, config=config)
  fit_s = time.perf_counter() - t0
  own = surface.companion
  seed = int((config or fit_lib.default_config()).seed)
  companions = {v: None if v == "none" else fit_lib.fit_companion(
      runs, evaluation.OUTCOME, seed, epochs=v == "trees_epochs")
                for v in {kw[COMPANION_KEY] for kw in rules.values() if COMPANION_KEY in kw}}
  dn = len(runs.domains)
  rows = []
  for split, split_cases in cases.items():
    uniform = [float(world.regret(np.full(dn, 1.0 / dn), c.pool)) for c in split_cases]
    for name, kw in rules.items():
      regrets, gains, seconds = [], [], []
      kw = dict(kw)
      surface.companion = companions[kw.pop(COMPANION_KEY)] if COMPANION_KEY in kw else own
      for c, u in zip(split_cases, uniform):
        t1 = time.perf_counter()
        rec = evaluation._ours_recommend(surface, c.view, runs, **kw)  # pylint: disable=protected-access
        seconds.append(time.perf_counter() - t1)
        w_D = np.asarray([rec.weights[d] for d in runs.domains])
        regrets.append(float(world.regret(align.to_world(w_D), c.pool)))
        g = rec.improvement_over_uniform
        if not np.allclose(w_D, 1.0 / dn, atol=1e-6):
          gains.append((float(g.lo), float(g.hi), u - regrets[-1]))
      rows.append({"world": world.name, "split": split, "rule": name,
                   "regret": float(np.mean(regrets)),
                   "uniform_regret": float(np.mean(uniform)),
                   "fit_s": fit_s, "recommend_s": float(np.mean(seconds)),
                   **evaluation._gain_counts(gains, True)})  # pylint: disable=protected-access
  return rows


def summary(rows: list[dict[str, Any]], rules: list[str]) -> dict[str, Any]:
  """Per split and rule: mean regret over the cells, cells worse than uniform, and the
  share of moved pools whose true gain over uniform lies below the reported interval."""
  out: dict[str, Any] = {}
  for split in evaluation.SPLITS:
    for name in rules:
      r = [x for x in rows if x["split"] == split and x["rule"] == name]
      if not r:
        continue
      moved = sum(x["gain_moved"] for x in r)
      out[f"{split}/{name}"] = {
          "cells": len(r), "regret": float(np.mean([x["regret"] for x in r])),
          "uniform_regret": float(np.mean([x["uniform_regret"] for x in r])),
          "worse_than_uniform": [x["world"] for x in r
                                 if x["regret"] > x["uniform_regret"] + 1e-12],
          "gain_below_share": (sum(x["gain_below"] for x in r) / moved) if moved else None}
  return out


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.getLogger().setLevel(logging.WARNING)
  cfg = _CONFIG.value
  rules = parse_rules(_RULES.value)
  surface_settings = evaluation.parse_ours_settings(cfg.ours_surface)
  n_domains = evaluation.domain_count(cfg.n_domains)
  evaluation.sweep_design(cfg.sweep_design, cfg.n_runs, cfg.n_pools)
  workdir = pathlib.Path(_WORKDIR.value)
  rows: list[dict[str, Any]] = []
  for name in cfg.worlds:
    path = workdir / "worlds" / f"{name}.json"
    settings = json.loads(artifacts.to_json(
        {"world": name, "seed": cfg.seed, "n_runs": cfg.n_runs, "n_pools": cfg.n_pools,
         "n_test_pools": cfg.n_test_pools, "n_mixtures": cfg.n_mixtures,
         "seeds": cfg.seeds, "ours_surface": surface_settings, "rules": rules,
         **sweep_options(cfg), **evaluation.domain_key(n_domains)}, None))
    stored = json.loads(path.read_text()) if path.exists() else None
    if stored is not None and stored.get("settings") == settings:
      world_rows = stored["rows"]
    else:
      t0 = time.perf_counter()
      world = worlds.make_world(name, seed=cfg.seed, n_domains=n_domains)
      world_rows = score_world(world, surface_settings, rules, cfg)
      artifacts.write_json(path, {"settings": settings, "rows": world_rows})
      print(f"{name}: {time.perf_counter() - t0:.0f}s; " + "; ".join(
          f"{r['split']} {r['rule']} {r['regret']:.4f}" for r in world_rows)
          + f"; uniform {world_rows[0]['uniform_regret']:.4f} / "
          f"{world_rows[-1]['uniform_regret']:.4f}", flush=True)
    rows += world_rows
  head = summary(rows, list(rules))
  artifacts.write_json(workdir / "results.json",
                       {"config": cfg.to_dict(), "rules": rules, "rows": rows,
                        "summary": head})
  print(artifacts.to_json(head, None))


if __name__ == "__main__":
  app.run(main)
