"""Mixture extraction: CausalMix-S and -A versus RegMix's Monte-Carlo top-k, side by side.

1. RegMix's 512 proxy runs (Pile-CC validation loss): one surface fitted once; on it,
   our -S and -A versus RegMix's recommendation (average of the top 128 of 100,000
   Dirichlet mixtures around the sweep's mean mixture, scored by the same surface).
   Wall time (cold = first call incl. compilation; warm = median of repeats) and the
   predicted loss of each recommended mixture under the same surface.
2. The planted world (known truth): a confounded sweep, a surface fitted on it, then
   shifted pools (half outside the sweep's support): mean true regret of our
   recommendation, RegMix's (LightGBM with covariates + Monte-Carlo top-128 around the
   pool's token shares) and the uniform mixture.

  python benchmarks/bench_optimise.py [--surface=causal|loglinear|linear]
      [--regmix_method=outcome] [--planted_method=dml]
      [--regmix_dir=../shared/data/regmix] [--pools=8] [--repeats=3]

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import json
import logging
import pathlib
import statistics
import sys
import time

import jax
import numpy as np
from absl import app
from absl import flags

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from causalmix_jax import runs as runs_lib  # noqa: E402
from causalmix_jax.optimise import recommend  # noqa: E402
from causalmix_jax.surface import baselines  # noqa: E402
from causalmix_jax.surface.planted import PlantedWorld  # noqa: E402

log = logging.getLogger("bench_optimise")

flags.DEFINE_enum("surface", "causal", ["causal", "loglinear", "linear"],
                  "the surface both extractors share")
flags.DEFINE_string("regmix_dir", str(ROOT.parent / "shared" / "data" / "regmix"),
                    "folder of RegMix's CSVs")
flags.DEFINE_string("outcome", "pile_cc", "RegMix outcome")
flags.DEFINE_integer("n_mc", 100_000, "RegMix's Monte-Carlo candidates")
flags.DEFINE_integer("top_k", 128, "RegMix averages the top k candidates")
flags.DEFINE_integer("repeats", 3, "warm timings (the median is kept)")
flags.DEFINE_integer("pools", 8, "shifted pools of the planted world")
flags.DEFINE_integer("planted_domains", 5, "domains of the planted world")
flags.DEFINE_integer("planted_runs", 256, "runs of the planted sweep")
flags.DEFINE_bool("skip_planted", False, "skip the planted world")
flags.DEFINE_string("regmix_method", "outcome", "causal surface method on RegMix")
flags.DEFINE_string("planted_method", "dml", "causal surface method, planted")
FLAGS = flags.FLAGS


def fit(runs, outcome: str, kind: str, seed: int = 0, method: str = "outcome"):
  """The surface both extractors share (`method`: the causal surface's method)."""
  if kind == "causal":
    try:
      from causalmix_jax.surface.fit import fit_surface  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise SystemExit(f"--surface=causal needs causalmix_jax.surface.fit ({e}); "
                       "use --surface=loglinear") from e
    return fit_surface(runs, outcome=outcome, method=method)
  if kind == "loglinear":
    return baselines.fit_loglinear(runs, outcome, seed=seed)
  if kind == "linear":
    return baselines.fit_linear(runs, outcome, use_covariates=bool(runs.features),
                                seed=seed)
  raise SystemExit(f"unknown --surface={kind}")


def posterior_mean(surface, w_ND: np.ndarray, x=None) -> np.ndarray:
  pred = surface.predict(np.atleast_2d(w_ND), x)
  return np.asarray(pred.mean, np.float64)


def regmix_mc(surface, n: int, top_k: int, prior, x=None, seed: int = 0) -> np.ndarray:
  """RegMix's Monte-Carlo recommendation on `surface` (its posterior-mean prediction)."""
  cands = baselines.sample_regmix_candidates(prior, n, seed)
  preds = np.concatenate([posterior_mean(surface, cands[i:i + 50_000], x)
                          for i in range(0, n, 50_000)])
  order = np.argsort(-preds if surface.maximize else preds, kind="stable")
  w = cands[order[:top_k]].mean(0)
  return w / w.sum()


def timed(fn, repeats: int):
  t0 = time.perf_counter()
  out = fn()
  cold = time.perf_counter() - t0
  warm = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    out = fn()
    warm.append(time.perf_counter() - t0)
  return out, cold, statistics.median(warm) if warm else cold


def bench_regmix(args) -> dict:
  d = pathlib.Path(args.regmix_dir)
  runs = runs_lib.from_regmix(d / "train_mixture_1m.csv", d / "train_pile_loss_1m.csv")
  t0 = time.perf_counter()
  surface = fit(runs, args.outcome, args.surface, method=args.regmix_method)
  fit_s = time.perf_counter() - t0
  prior = runs.W.mean(0)
  log.info("regmix: %d runs, %d domains, surface %s fitted in %.1fs", len(runs.W),
           len(runs.domains), args.surface, fit_s)
  out = {"surface": args.surface, "fit_s": fit_s, "n_runs": int(len(runs.W)),
         "n_domains": len(runs.domains)}
  w_rm, cold, warm = timed(lambda: regmix_mc(surface, args.n_mc, args.top_k, prior),
                           args.repeats)
  out["regmix_mc"] = {"cold_s": cold, "warm_s": warm,
                      "predicted": float(posterior_mean(surface, w_rm)[0])}
  log.info("RegMix MC top-%d of %d: %.3fs warm, predicted %.5f", args.top_k, args.n_mc,
           warm, out["regmix_mc"]["predicted"])
  for method in ("S", "A"):
    rec, cold, warm = timed(lambda m=method: recommend(surface, reference=prior, method=m),
                            args.repeats)
    w = np.asarray(rec.weight_vector())
    out[f"causalmix_{method}"] = {
        "cold_s": cold, "warm_s": warm, "search_s": rec.diagnostics["search_seconds"],
        "predicted": float(posterior_mean(surface, w)[0]),
        "predicted_lo": rec.predicted.lo, "predicted_hi": rec.predicted.hi,
        "prob_better_than_regmix": float(np.mean(
            surface.predict(np.stack([w, w_rm])).samples[:, 0]
            < surface.predict(np.stack([w, w_rm])).samples[:, 1]))
        if getattr(surface.predict(w[None]), "samples", None) is not None else None}
    r = out[f"causalmix_{method}"]
    r["speedup_warm"] = out["regmix_mc"]["warm_s"] / warm
    r["speedup_cold"] = out["regmix_mc"]["cold_s"] / cold
    r["predicted_minus_regmix"] = r["predicted"] - out["regmix_mc"]["predicted"]
    log.info("CausalMix-%s: %.3fs warm (%.1fx), %.3fs cold (%.1fx); predicted %.5f "
             "(RegMix %.5f)", method, warm, r["speedup_warm"], cold, r["speedup_cold"],
             r["predicted"], out["regmix_mc"]["predicted"])
  return out


def bench_planted(args) -> dict:
  world = PlantedWorld(n_domains=args.planted_domains, n_features=3, seed=0)
  runs = world.sample_sweep(n_runs=args.planted_runs, n_pool_states=16, seeds=1,
                            noise=0.01)
  surface = fit(runs, "loss", args.surface if args.surface != "loglinear" else "linear",
                method=args.planted_method)
  lgbm = baselines.fit_regmix_lgbm(runs, "loss", n_boot=0, use_covariates=True)
  xs = world.shifted_pools(args.pools, outside_fraction=0.5)
  regret = {"causalmix_S": [], "causalmix_A": [], "regmix": [], "uniform": []}
  dn = world.n_domains
  for i, x in enumerate(xs):
    cov = dict(zip(surface.features, x.tolist())) if surface.features else None
    shares = world.token_shares(x)[0]
    for m in ("S", "A"):
      rec = recommend(surface, covariates=cov, reference=shares, method=m)
      regret[f"causalmix_{m}"].append(float(world.regret(rec.weight_vector(), x)[0]))
    w_rm = baselines.regmix_recommend(lgbm, n_candidates=args.n_mc, top_k=args.top_k,
                                      prior=shares, x=x)["weights"]
    regret["regmix"].append(float(world.regret(w_rm, x)[0]))
    regret["uniform"].append(float(world.regret(np.full(dn, 1 / dn), x)[0]))
    log.info("pool %d (|x|=%.2f): regret S %.4f A %.4f RegMix %.4f uniform %.4f", i,
             np.linalg.norm(x), *(regret[k][-1] for k in regret))
  n_in = args.pools - int(round(args.pools * 0.5))
  return {"surface": args.surface if args.surface != "loglinear" else "linear",
          "pools": args.pools, "runs": args.planted_runs,
          **{f"mean_regret_{k}": float(np.mean(v)) for k, v in regret.items()},
          **{f"mean_regret_{k}_inside": float(np.mean(v[:n_in])) for k, v in regret.items()},
          **{f"mean_regret_{k}_outside": float(np.mean(v[n_in:]))
             for k, v in regret.items()}}


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  args = FLAGS
  # force: replaces the handler absl installs, so the lines keep this format.
  logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", force=True)
  logging.getLogger("causalmix_jax").setLevel(logging.WARNING)
  result = {"backend": jax.default_backend(), "regmix_data": bench_regmix(args)}
  if not args.skip_planted:
    result["planted"] = bench_planted(args)
  rd = result["regmix_data"]
  print(f"speed (warm) S {rd['causalmix_S']['speedup_warm']:.1f}x, "
        f"A {rd['causalmix_A']['speedup_warm']:.1f}x vs RegMix MC; predicted loss "
        f"S {rd['causalmix_S']['predicted']:.5f} A {rd['causalmix_A']['predicted']:.5f} "
        f"RegMix {rd['regmix_mc']['predicted']:.5f}")
  print(json.dumps(result))


if __name__ == "__main__":
  app.run(main)
