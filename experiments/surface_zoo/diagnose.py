"""Diagnoses one fitted "ours" surface per zoo world: the held-out evidence behind its
uniform guard (`info["heldout_guard"]`), its conformal scale, and where its effect
intervals miss (`evaluation.effect_reference_diagnosis`: effects against the pool's
natural mixture, as the zoo scores them, against a test mixture of median true loss,
and predictions; the median error and interval sd of those effects beside the same
figures of the held-out contrasts the fit calibrated on; the effects' coverage per
pool and per quartile of their size beside the held-out contrasts' coverage, and the
factor each would need, per quartile of theirs).

  python experiments/surface_zoo/diagnose.py --config=experiments/surface_zoo/config.py \
      --config.seed=7 --world=threshold --world=relative_quality

Uses the config's sweep and test-pool sizes, its seed and its `ours_surface` settings,
so the surface and the pools are those of `run.py` at the same settings. Prints one
line per world; the last line printed is one JSON object with every world's figures.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

from absl import app
from absl import flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))

from causalmix_jax.surface import evaluation  # noqa: E402
from causalmix_jax.surface import worlds  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Zoo config, e.g. experiments/surface_zoo/config.py.",
    lock_config=True)
_WORLD = flags.DEFINE_multi_string(
    "world", None, "A world to diagnose (repeat the flag for more).")
flags.mark_flags_as_required(["config", "world"])


def diagnose(cfg, world: worlds.World) -> dict:
  """The figures of one world at the config's settings."""
  runs = world.sweep(n_runs=cfg.n_runs, n_pools=cfg.n_pools, seeds=cfg.seeds,
                     seed=cfg.seed, **evaluation.sweep_options(
                         bool(cfg.uniform_anchors), cfg.sweep_design))
  (ours,) = evaluation.default_methods(
      ("ours",), evaluation.parse_ours_settings(cfg.ours_surface))
  t0 = time.perf_counter()
  surface = ours.fit(runs, evaluation.OUTCOME)
  info = getattr(surface, "info", None) or {}
  return {"world": world.name, "seed": int(cfg.seed),
          "fit_s": round(time.perf_counter() - t0, 1),
          "heldout_guard": info.get("heldout_guard"),
          "conformal_scale": info.get("conformal_scale"),
          "calibration": info.get("calibration"),
          "coverage": evaluation.effect_reference_diagnosis(
              world, surface, runs, n_test_pools=cfg.n_test_pools,
              n_mixtures=cfg.n_mixtures, seed=cfg.seed)}


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.getLogger().setLevel(logging.WARNING)
  cfg = _CONFIG.value
  n_domains = evaluation.domain_count(cfg.n_domains)
  evaluation.sweep_design(cfg.sweep_design, cfg.n_runs, cfg.n_pools)
  try:  # every name checked before any fit
    built = [worlds.make_world(name, seed=cfg.seed, n_domains=n_domains)
             for name in _WORLD.value]
  except ValueError as e:
    raise app.UsageError(f"--world: {e}") from None
  out = []
  for world in built:
    row = diagnose(cfg, world)
    cov = row["coverage"]
    print(f"{world.name} (seed {row['seed']}): guard {row['heldout_guard']}; " + "; ".join(
        f"{split} effects vs natural {c['effect_vs_natural']:.3f}, vs median mixture "
        f"{c['effect_vs_median_mixture']:.3f}, predictions {c['prediction']:.3f}, "
        f"slope {c['effect_slope_median']:.2f}, median |error| "
        f"{c['effect_median_abs_error']:.4f} / sd {c['effect_median_sd']:.4f}"
        for split, c in cov.items()), flush=True)
    for split, c in cov.items():
      print(f"  {split} effect coverage per pool {c['effect_coverage_pool_min']:.3f}"
            f"-{c['effect_coverage_pool_max']:.3f}; by size "
            + evaluation.format_coverage_by_size(c["effect_coverage_by_size"]),
            flush=True)
    cal = row["calibration"]
    if cal:
      print(f"  held-out calibration: {cal['contrasts']} contrasts, median |error| "
            f"{cal['median_abs_error']:.4f} / sd {cal['median_sd']:.4f}, coverage "
            f"{cal['coverage']:.3f}, run noise {cal['run_noise']}; by size "
            + evaluation.format_coverage_by_size(cal.get("by_contrast_size", ())),
            flush=True)
    out.append(row)
  print(json.dumps({"worlds": out}))


if __name__ == "__main__":
  app.run(main)
