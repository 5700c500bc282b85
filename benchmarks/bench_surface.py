"""Benchmark of the causal response surface, side by side with its baselines.

1. RegMix's 512 proxy runs (one pool, 17 Pile domains): 5-fold cross-validated Spearman
   and R^2 of predicted vs actual loss (default outcome Pile-CC) for our default surface,
   RegMix's LightGBM (1000 trees, lr 0.01) and linear regression; and the time to fit
   ours and LightGBM on all 512 runs (`evaluation.fit_seconds`: fastest and median of
   FIT_ROUNDS side-by-side rounds, and their ratios).
2. Planted-truth worlds with confounded sweeps (`--planted_worlds`, default 4): CATE
   error against the truth, 90% interval coverage, and regret of the best-predicted
   mixture at new pools (lowest posterior mean; for the Bayesian surfaces also the
   risk-averse pick, lowest upper 90% bound, as `recommend(objective="bound")`), for our surface vs the covariate-blind surface vs LightGBM
   (with covariates as features); means over the worlds, and coverage per world.

  python benchmarks/bench_surface.py [--regmix_dir=...] [--outcome=pile_cc]

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import sys
import time

import numpy as np
from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from causalmix_jax import runs as runs_lib  # noqa: E402
from causalmix_jax.surface import baselines, diagnostics, evaluation, fit, planted  # noqa: E402

flags.DEFINE_string("regmix_dir", None,
                    "folder of RegMix's CSVs (default <repo>/../shared/data/regmix)")
flags.DEFINE_string("outcome", "pile_cc", "RegMix outcome")
flags.DEFINE_integer("folds", 5, "cross-validation folds on RegMix's runs")
flags.DEFINE_integer("planted_runs", 400, "runs of each planted sweep")
flags.DEFINE_integer("planted_pools", 48, "pool states of each planted sweep")
flags.DEFINE_integer("test_pools", 20, "new pools scored per planted world")
flags.DEFINE_integer("candidates", 5000, "candidate mixtures per new pool")
flags.DEFINE_integer("seed", 0, "seed of the first planted world")
flags.DEFINE_integer("planted_worlds", 4,
                     "planted worlds (seeds seed, seed + 1, ...); figures are means; "
                     "0 skips the planted section")
flags.DEFINE_string("ours_surface", "",
                    "surface settings of ours, key=value,... as the zoo's "
                    "--config.ours_surface (e.g. stack_discrepancy=rff); default: the "
                    "library default")
FLAGS = flags.FLAGS
FIT_ROUNDS = 7  # side-by-side fit-time rounds on RegMix's runs (as the RegMix study)


def _regmix_dir(flag: str | None) -> pathlib.Path:
  repo = pathlib.Path(__file__).resolve().parents[1]
  options = [pathlib.Path(flag)] if flag else [repo.parent / "shared" / "data" / "regmix"]
  for p in options:
    if (p / "train_mixture_1m.csv").exists():
      return p
  raise FileNotFoundError(f"RegMix data not found in {[str(p) for p in options]}; pass "
                          "--regmix_dir")


def regmix_section(regmix_dir: pathlib.Path, outcome: str, folds: int,
                   config=None) -> dict:
  runs = runs_lib.from_regmix(regmix_dir / "train_mixture_1m.csv",
                              regmix_dir / "train_pile_loss_1m.csv")
  models = {
      "ours": lambda r: fit.fit_surface(r, outcome, config=config),
      "lightgbm": lambda r: baselines.fit_regmix_lgbm(r, outcome, n_boot=0),
      "linear": lambda r: baselines.fit_linear(r, outcome),
  }
  out: dict = {"n_runs": len(runs), "outcome": outcome}
  for name, fn in models.items():
    t0 = time.perf_counter()
    cv = diagnostics.cross_validate(runs, outcome, fn, n_folds=folds, seed=0)
    out[f"{name}_spearman"] = cv["spearman"]
    out[f"{name}_r2"] = cv["r2"]
    if name == "ours":
      out["ours_heldout_coverage90"] = cv["coverage"]
    logging.info("regmix %s: Spearman %.4f R^2 %.4f (%.1fs)", name, cv["spearman"],
                 cv["r2"], time.perf_counter() - t0)
  # Fit time on all runs, side by side (the study's measure: warm-up, then rounds).
  timing = evaluation.fit_seconds(runs, outcome, FIT_ROUNDS, config=config)
  for key in ("ours_fit_s", "lightgbm_fit_s", "ours_fit_median_s", "lightgbm_fit_median_s",
              "fit_time_ratio_ours_over_lgbm", "fit_time_median_ratio_ours_over_lgbm"):
    out[key] = timing[key]
  out["spearman_ours_minus_lgbm"] = out["ours_spearman"] - out["lightgbm_spearman"]
  out["ours_chosen"] = timing["ours_chosen"]
  return out


def planted_worlds(n_worlds: int, n_runs: int, n_pools: int, n_test_pools: int,
                   n_cand: int, seed: int, config=None) -> dict:
  """`planted_section` on `n_worlds` worlds (seeds seed, seed + 1, ...): the mean of each
  figure, and each world's CATE coverage (one world's coverage varies a lot with how
  well the surface's features happen to fit it)."""
  worlds = [planted_section(n_runs, n_pools, n_test_pools, n_cand, seed + i, config)
            for i in range(n_worlds)]
  out = {k: float(np.mean([w[k] for w in worlds])) for k in worlds[0]}
  out["n_worlds"] = n_worlds
  out["ours_cate_coverage90_by_world"] = [w["ours_cate_coverage90"] for w in worlds]
  out["blind_cate_coverage90_by_world"] = [w["blind_cate_coverage90"] for w in worlds]
  return out


def planted_section(n_runs: int, n_pools: int, n_test_pools: int, n_cand: int,
                    seed: int, config=None) -> dict:
  world = planted.PlantedWorld(n_domains=5, n_features=3, seed=seed)
  runs = world.sample_sweep(n_runs=n_runs, n_pool_states=n_pools, noise=0.02)
  t0 = time.perf_counter()
  ours = fit.fit_surface(runs, "loss", config=config)
  t_ours = time.perf_counter() - t0
  blind = fit.fit_surface(runs, "loss", config=config, covariate_blind=True)
  lgbm = baselines.fit_regmix_lgbm(runs, "loss", n_boot=0)
  rng = np.random.default_rng(seed + 11)
  xs = world.pool_states(n_test_pools, seed=seed + 5)
  stats = {k: {"cate_mae": [], "regret": [], "cover": [], "regret_bound": []}
           for k in ("ours", "blind", "lightgbm")}
  for x in xs:
    shares = world.token_shares(x)[0]
    tokens = world.tokens(x[None])[0]
    w = rng.dirichlet(shares * np.exp(rng.uniform(np.log(0.5), np.log(5.0))), size=40)
    w = np.maximum(w, 0.0)
    w /= w.sum(1, keepdims=True)
    truth = world.true_effect(w, shares, x[None])
    cand = baselines.sample_regmix_candidates(shares, n_cand, seed=int(rng.integers(1e9)))
    for name, model in (("ours", ours), ("blind", blind), ("lightgbm", lgbm)):
      if name == "lightgbm":
        est = model.point(w, x) - model.point(shares[None], x)
        pred = model.point(cand, x)
      else:
        p = model.cate(w, shares, x, tokens=tokens)
        est = p.mean
        stats[name]["cover"].append(np.mean(p.covers(truth)))
        p_cand = model.predict(cand, x, tokens=tokens)
        pred = p_cand.mean
        # The risk-averse pick (objective="bound"): the lowest upper 90% bound.
        best_hi = cand[np.argmin(p_cand.hi)]
        stats[name]["regret_bound"].append(float(world.regret(best_hi[None], x[None])[0]))
      stats[name]["cate_mae"].append(np.mean(np.abs(est - truth)))
      best = cand[np.argmin(pred)]
      stats[name]["regret"].append(float(world.regret(best[None], x[None])[0]))
  out = {"n_runs": n_runs, "n_pools": n_pools, "n_test_pools": n_test_pools,
         "ours_fit_s": t_ours}
  for name, s in stats.items():
    out[f"{name}_cate_mae"] = float(np.mean(s["cate_mae"]))
    out[f"{name}_regret"] = float(np.mean(s["regret"]))
    if s["cover"]:
      out[f"{name}_cate_coverage90"] = float(np.mean(s["cover"]))
      out[f"{name}_regret_bound"] = float(np.mean(s["regret_bound"]))
  out["cate_mae_ratio_blind_over_ours"] = out["blind_cate_mae"] / out["ours_cate_mae"]
  out["cate_mae_ratio_lgbm_over_ours"] = out["lightgbm_cate_mae"] / out["ours_cate_mae"]
  return out


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  args = FLAGS
  # force: replaces the handler absl installs, so the lines keep this format.
  logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
  for noisy in ("jax", "absl", "causalmix_jax.runs", "causalmix_jax.surface"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  try:  # before any fit, so a bad setting costs nothing
    settings = evaluation.parse_ours_settings(args.ours_surface)
    config = evaluation.surface_config(settings) if settings else None
  except ValueError as e:
    raise app.UsageError(f"--ours_surface={args.ours_surface!r}: {e}") from None
  result = {"ours_surface": settings,
            "regmix": regmix_section(_regmix_dir(args.regmix_dir), args.outcome,
                                     args.folds, config)}
  if args.planted_worlds > 0:
    result["planted"] = planted_worlds(args.planted_worlds, args.planted_runs,
                                       args.planted_pools, args.test_pools,
                                       args.candidates, args.seed, config)
  r = result["regmix"]
  print(f"RegMix {r['outcome']}: {args.folds}-fold Spearman ours {r['ours_spearman']:.4f} "
        f"vs LightGBM {r['lightgbm_spearman']:.4f} vs linear {r['linear_spearman']:.4f}; "
        f"fit {r['ours_fit_s']:.3f}s vs {r['lightgbm_fit_s']:.3f}s "
        f"(ratio {r['fit_time_ratio_ours_over_lgbm']:.2f})")
  p = result.get("planted")
  if p:
    print(f"Planted: CATE MAE ours {p['ours_cate_mae']:.4f} blind {p['blind_cate_mae']:.4f} "
          f"LightGBM {p['lightgbm_cate_mae']:.4f}; regret ours {p['ours_regret']:.4f} "
          f"blind {p['blind_regret']:.4f} LightGBM {p['lightgbm_regret']:.4f} (risk-averse "
          f"pick: ours {p['ours_regret_bound']:.4f} blind {p['blind_regret_bound']:.4f}); "
          f"90% CATE coverage {p['ours_cate_coverage90']:.3f} (mean of {p['n_worlds']} worlds: "
          + ", ".join(f"{c:.3f}" for c in p["ours_cate_coverage90_by_world"]) + ")")
  print(json.dumps(result, default=float))


if __name__ == "__main__":
  app.run(main)
