"""Validation of a recommendation by training it: which mixtures to train side by side
(the recommendation under each optimiser and objective, uniform, natural token shares,
RegMix's LightGBM picks, the covariate-blind surface's pick, the sweep's best-known
mixture), the design that trains
each for several seeds with common random numbers through the sweep's machinery, the
table of realized outcomes with paired differences to the recommendation, and the
comparison of those tables over several studies (`compare_studies`)."""

from __future__ import annotations

import functools
import logging
from typing import Any, Callable, Mapping, Sequence

import ml_collections
import numpy as np
import pandas as pd
from scipy import stats

log = logging.getLogger(__name__)

KNOWN_MIXTURES = ("recommended", "S_mean", "S_bound", "A_mean", "A_bound", "uniform",
                  "natural", "regmix", "regmix_topk", "blind", "best_known", "unguarded")


class ValidationError(ValueError):
  """A validate config or input that cannot be used; the message names it."""


def check_config(vc: ml_collections.ConfigDict) -> None:
  """Named errors for the `validate` section."""
  unknown = [m for m in vc.mixtures if m not in KNOWN_MIXTURES]
  if unknown:
    raise ValidationError(f"config key validate.mixtures names unknown mixture(s) "
                          f"{unknown}; known: {list(KNOWN_MIXTURES)}")
  if "recommended" not in vc.mixtures:
    raise ValidationError("config key validate.mixtures must include 'recommended' (the "
                          "paired differences are taken against it)")
  if int(vc.seeds) < 1:
    raise ValidationError(f"config key validate.seeds={vc.seeds} must be >= 1")
  if str(vc.scale) not in ("proxy", "target"):
    raise ValidationError(f"config key validate.scale={vc.scale!r}: 'proxy' or 'target'")
  if not 0.0 < float(vc.ci) < 1.0:
    raise ValidationError(f"config key validate.ci={vc.ci} must lie in (0, 1)")


def scaled_config(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The config the sweep machinery trains the validation runs with: the proxy's model
  and optimiser ("proxy": the scale the surface predicts) or the target's ("target")."""
  out = ml_collections.ConfigDict(cfg.to_dict())
  if str(cfg.validate.scale) == "target":
    out.proxy.model = ml_collections.ConfigDict(cfg.target.model.to_dict())
    out.proxy.optim = ml_collections.ConfigDict(cfg.target.optim.to_dict())
  return out


def unguarded_weights(rec: Any, domains: Sequence[str]) -> np.ndarray:
  """The safe objective's pick before its off-support check against uniform (the
  recommendation's `diagnostics["safe_check"]["bound_pick"]`; the scored
  `safe_score` pick); the recommendation itself when no check was recorded."""
  check = (getattr(rec, "diagnostics", None) or {}).get("safe_check") or {}
  w = check.get("bound_pick") or rec.weights
  return np.array([float(w[d]) for d in domains])


def candidate_mixtures(names: Sequence[str], domains: Sequence[str], *,
                       recommended: np.ndarray, tokens_D: np.ndarray,
                       pick: Callable[[str], np.ndarray],
                       unguarded: np.ndarray | None = None) -> dict[str, np.ndarray]:
  """{name: weights} for each requested mixture. `pick(name)` computes the ones that
  need a model (the optimiser variants, RegMix, the covariate-blind surface, and
  "unguarded" unless it is given: the recommendation's pick before the safe objective's
  check against uniform, `unguarded_weights`)."""
  out: dict[str, np.ndarray] = {}
  for name in names:
    if name == "recommended":
      w = np.asarray(recommended, np.float64)
    elif name == "unguarded" and unguarded is not None:
      w = np.asarray(unguarded, np.float64)
    elif name == "uniform":
      w = np.full(len(domains), 1.0 / len(domains))
    elif name == "natural":
      w = np.asarray(tokens_D, np.float64) / float(np.sum(tokens_D))
    else:
      w = np.asarray(pick(name), np.float64)
    if w.shape != (len(domains),) or not np.all(np.isfinite(w)) or np.any(w < -1e-9):
      raise ValidationError(f"mixture {name!r}: not a mixture over {list(domains)}: {w}")
    w = np.clip(w, 0.0, None)
    out[name] = w / w.sum()
  return out


def make_picker(cfg: ml_collections.ConfigDict, runs: Any, surface: Any,
                covariates: Mapping[str, float], tokens: Mapping[str, float],
                budget: float) -> Callable[[str], np.ndarray]:
  """`pick(name)` for the mixtures that need a model, each made for `budget` training
  tokens (the budget the validation trains at): "recommended" (the optimiser with the
  `optimise` config as it stands), "<S|A>_<mean|bound>" (that method and objective, the
  same constraints), "regmix" / "regmix_topk" (LightGBM on weights + covariates: the
  best Monte-Carlo candidate around the natural mixture / the mean of its top-k),
  "blind" (the covariate-blind surface's recommendation, the configured objective),
  "best_known" (the sweep's best-known mixture, which the recommendation reports its
  improvement over), "unguarded" (the recommendation's pick before the safe objective's
  check against uniform)."""
  # pylint: disable=import-outside-toplevel
  from causalmix_jax.optimise.recommend import best_known_mixture, recommend
  from causalmix_jax.optimise import settings
  from causalmix_jax.surface import baselines
  from causalmix_jax.surface import fit
  oc, domains = cfg.optimise, list(surface.domains)
  tokens_D = np.array([tokens[d] for d in domains], np.float64)

  def recommendation(s: Any, method: str, objective: str) -> Any:
    return recommend(
        s, covariates=dict(covariates) if s.features else None,
        reference=settings.reference_from_config(str(oc.reference), s, domains,
                                                 dict(tokens)),
        constraints=settings.constraints_from_config(oc, domains, dict(tokens), budget),
        objective=objective, method=method, ci=float(oc.ci), seed=int(cfg.seed),
        n_candidates=int(oc.n_candidates), n_starts=int(oc.n_starts),
        n_steps=int(oc.n_steps), **settings.safe_settings(oc))

  def optimise(s: Any, method: str, objective: str) -> np.ndarray:
    rec = recommendation(s, method, objective)
    return np.array([rec.weights[d] for d in domains])

  scored: list[tuple[Any, np.ndarray, np.ndarray]] = []

  def regmix(top_k: bool) -> np.ndarray:
    if not scored:  # one LightGBM fit and one set of scored candidates for both picks
      model = baselines.fit_regmix_lgbm(runs, str(cfg.outcome), seed=int(cfg.seed),
                                        n_boot=0)
      x_F = np.array([[covariates.get(f, covariates.get(f"x_{f}", np.nan))
                       for f in model.all_features]])
      cands = baselines.sample_regmix_candidates(
          tokens_D / tokens_D.sum(), int(cfg.validate.regmix_candidates), int(cfg.seed))
      pred = model.point(cands, x_F)
      scored.append((model, cands, -pred if model.maximize else pred))
    _, cands, loss = scored[0]
    order = np.argsort(loss, kind="stable")
    if top_k:  # RegMix's own rule: the mean of the best REGMIX_TOP_K candidates
      return cands[order[:int(cfg.validate.regmix_top_k)]].mean(0)
    return cands[order[0]]

  @functools.cache
  def main_recommendation() -> Any:  # one optimiser run for "recommended" and "unguarded"
    return recommendation(surface, str(oc.method), str(oc.objective))

  def pick(name: str) -> np.ndarray:
    if name in ("regmix", "regmix_topk"):
      return regmix(name == "regmix_topk")
    if name == "blind":
      blind = fit.fit_surface(runs, str(cfg.outcome), method=str(cfg.surface.method),
                              config=cfg.surface, covariate_blind=True)
      return optimise(blind, str(oc.method), str(oc.objective))
    if name == "recommended":
      return np.array([main_recommendation().weights[d] for d in domains])
    if name == "unguarded":
      return unguarded_weights(main_recommendation(), domains)
    if name == "best_known":
      w = best_known_mixture(surface)
      if w is None:
        raise ValidationError("config key validate.mixtures names 'best_known', but the "
                              "fitted surface records no best-known mixture of its sweep")
      return w
    method, objective = name.split("_")
    return optimise(surface, method, objective)

  return pick


def distinct(mixtures: Mapping[str, np.ndarray], decimals: int = 6
             ) -> tuple[np.ndarray, dict[str, int]]:
  """(distinct mixtures M x D, name -> row): mixtures equal to `decimals` share a row,
  so they share runs."""
  rows: list[np.ndarray] = []
  keys: dict[tuple[float, ...], int] = {}
  index = {}
  for name, w in mixtures.items():
    key = tuple(np.round(w, decimals))
    if key not in keys:
      keys[key] = len(rows)
      rows.append(w)
    index[name] = keys[key]
  return np.stack(rows), index


def design(w_MxD: np.ndarray, seeds: int, n_tokens_D: np.ndarray, budget: int,
           dup_rate_D: np.ndarray | None = None) -> dict[str, np.ndarray]:
  """Per-run arrays in the sweep's layout: every mixture x seed on one pool state (the
  pool the recommendation is for: tokens and duplicate rate per domain); seed r uses
  the same keys for every mixture."""
  m, d = w_MxD.shape
  rep = lambda a: np.repeat(a, seeds, axis=0)  # noqa: E731
  return {
      "w_NxD": rep(w_MxD), "state_N": np.zeros(m * seeds, np.int32),
      "intervention_N": rep(np.arange(m, dtype=np.int32)),
      "seed_N": np.tile(np.arange(seeds, dtype=np.int32), m),
      "run_id_N": np.array([f"v{i}-r{r}" for i in range(m) for r in range(seeds)]),
      "heldout_N": np.zeros(m * seeds, bool),
      "n_tokens_SxD": np.asarray(n_tokens_D, np.int64).reshape(1, d),
      "dup_rate_SxD": (np.zeros((1, d), np.float32) if dup_rate_D is None else
                       np.asarray(dup_rate_D, np.float32).reshape(1, d)),
      "budget_tokens": np.array(int(budget), np.int64),
  }


def _interval(x: np.ndarray, ci: float) -> tuple[float, float, float]:
  """Mean and the `ci` t-interval of the mean (NaN bounds for fewer than 2 values)."""
  x = np.asarray(x, np.float64)
  x = x[np.isfinite(x)]
  if len(x) == 0:
    return float("nan"), float("nan"), float("nan")
  mean = float(x.mean())
  if len(x) < 2:
    return mean, float("nan"), float("nan")
  half = float(stats.t.ppf(0.5 + ci / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)))
  return mean, mean - half, mean + half


def table(runs: pd.DataFrame, index: Mapping[str, int], outcome: str, *, ci: float,
          maximize: bool = False,
          predicted: Mapping[str, tuple[float, float, float]] | None = None
          ) -> pd.DataFrame:
  """One row per mixture name: realized mean and `ci` interval over seeds, the paired
  difference to "recommended" (same seeds; positive = worse than the recommendation for
  a loss, better for a maximised outcome), and the surface's prediction where given.

  runs: the validation runs table (`run_id` "v<row>-r<seed>", `seed`, `y_<outcome>`).
  """
  col = f"y_{outcome.removeprefix('y_')}"
  if col not in runs.columns:
    raise ValidationError(f"validation runs have no column {col}; they have "
                          f"{[c for c in runs.columns if c.startswith('y_')]}")
  row_N = runs["run_id"].str.extract(r"^v(\d+)-r")[0].astype(int).to_numpy()
  y = {(int(r), int(s)): float(v) for r, s, v in zip(row_N, runs["seed"], runs[col])}
  seeds = sorted(set(int(s) for s in runs["seed"]))
  rec = np.array([y.get((index["recommended"], s), np.nan) for s in seeds])
  out = []
  for name, row in index.items():
    vals = np.array([y.get((row, s), np.nan) for s in seeds])
    mean, lo, hi = _interval(vals, ci)
    dmean, dlo, dhi = _interval(vals - rec, ci)
    entry = {"mixture": name, "seeds": int(np.isfinite(vals).sum()), "mean": mean,
             "lo": lo, "hi": hi, "diff_vs_recommended": dmean, "diff_lo": dlo,
             "diff_hi": dhi}
    if predicted is not None and name in predicted:
      p_mean, p_lo, p_hi = predicted[name]
      finite = vals[np.isfinite(vals)]
      entry.update(predicted=p_mean, predicted_lo=p_lo, predicted_hi=p_hi,
                   runs_in_predicted_interval=float(np.mean(
                       (finite >= p_lo) & (finite <= p_hi))) if len(finite) else np.nan)
    out.append(entry)
  frame = pd.DataFrame(out)
  better = frame["mean"].idxmax() if maximize else frame["mean"].idxmin()
  frame["best"] = frame.index == better
  return frame


def markdown(frame: pd.DataFrame, mixtures: Mapping[str, np.ndarray],
             domains: Sequence[str], outcome: str, ci: float) -> str:
  """The validation table (and the mixtures' weights) as Markdown."""
  pct = f"{ci:.0%}"
  has_pred = "predicted" in frame.columns
  head = (f"| mixture | seeds | {outcome} mean | {pct} interval | paired diff vs "
          f"recommended | {pct} interval |" + (" predicted | predictive interval | "
                                               "runs inside |" if has_pred else ""))
  lines = [head, "|" + "---|" * (head.count("|") - 1)]
  for _, r in frame.iterrows():
    cells = [r["mixture"] + (" (best)" if r["best"] else ""), str(r["seeds"]),
             f"{r['mean']:.4f}", f"[{r['lo']:.4f}, {r['hi']:.4f}]",
             f"{r['diff_vs_recommended']:+.4f}",
             f"[{r['diff_lo']:+.4f}, {r['diff_hi']:+.4f}]"]
    if has_pred:
      cells += [f"{r['predicted']:.4f}", f"[{r['predicted_lo']:.4f}, "
                f"{r['predicted_hi']:.4f}]", f"{r['runs_in_predicted_interval']:.0%}"]
    lines.append("| " + " | ".join(cells) + " |")
  lines += ["", "| mixture | " + " | ".join(domains) + " |",
            "|---|" + "---|" * len(domains)]
  for name, w in mixtures.items():
    lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in w) + " |")
  return "\n".join(lines) + "\n"


# -- several studies ---------------------------------------------------------------------

# What each recommendation reported about its gain over a validated mixture: the
# Recommendation's improvement attribute for each validate mixture name.
REPORTED_GAINS = {"uniform": "improvement_over_uniform",
                  "best_known": "improvement_over_best_known"}


def _verdict(gain: float, lo: float, hi: float) -> str:
  """The verdict on the recommendation's gain: "same" when the mixture trained on the
  recommendation's own runs (gain and interval exactly 0), "better" when the interval
  lies above 0, "worse" when below it, otherwise (or with no interval) "level"."""
  if gain == lo == hi == 0.0:
    return "same"
  if np.isfinite(lo) and lo > 0:
    return "better"
  if np.isfinite(hi) and hi < 0:
    return "worse"
  return "level"


def compare_studies(cases: Sequence[tuple[str, pd.DataFrame, Any]]) -> dict[str, Any]:
  """The recommendation against every other validated mixture, over several studies
  (e.g. one study per design seed).

  cases: (label, the validate stage's table, the optimise stage's Recommendation) per
    study. The recommendation's realized gain over a mixture is that mixture's paired
    difference turned so that positive means the recommendation did better (the
    difference itself for a loss), with its interval.

  Returns {"studies": labels, "outcome", "maximize", "mixtures": {name: {"per_study":
  {label: {"gain", "lo", "hi", "verdict"}}, "better", "level", "worse", "same",
  "pooled"}},
  "best": {label: the best mixture's name}, "reported": {name: [{"study", "predicted":
  [mean, lo, hi], "realized", "where": "below" | "inside" | "above"}]}} for the
  mixtures whose gain the recommendation reported (REPORTED_GAINS), leaving out the
  studies where that mixture was the recommendation itself ("same"). "pooled" is the
  mean gain over the studies that validated the mixture (a "same" study counts as a
  gain of 0), with a t interval at the first recommendation's level over the studies
  as independent replicates (`pooled_gain`), so that gains each too small to tell
  apart from 0 can add up over designs. A table without the recommendation's row, or
  studies of different outcomes, raise ValidationError naming the study.
  """
  if not cases:
    raise ValidationError("no studies to compare")
  labels = [label for label, _, _ in cases]
  if len(set(labels)) != len(labels):
    raise ValidationError(f"study labels repeat: {labels}")
  first = cases[0][2]
  mixtures: dict[str, dict[str, Any]] = {}
  reported: dict[str, list[dict[str, Any]]] = {}
  best: dict[str, str] = {}
  for label, frame, rec in cases:
    if (rec.outcome, bool(rec.maximize)) != (first.outcome, bool(first.maximize)):
      raise ValidationError(
          f"study {label}: outcome {rec.outcome!r} (maximize={rec.maximize}) differs from "
          f"study {labels[0]}'s {first.outcome!r} (maximize={first.maximize})")
    rows = frame.set_index("mixture")
    if "recommended" not in rows.index:
      raise ValidationError(f"study {label}: the validation table has no 'recommended' "
                            f"row; it has {list(rows.index)}")
    sign = -1.0 if rec.maximize else 1.0
    best[label] = str(rows["mean"].idxmax() if rec.maximize else rows["mean"].idxmin())
    for name, r in rows.iterrows():
      if name == "recommended":
        continue
      lo, hi = sorted((sign * float(r["diff_lo"]), sign * float(r["diff_hi"])))
      gain = sign * float(r["diff_vs_recommended"])
      entry = mixtures.setdefault(str(name), {"per_study": {}})
      verdict = _verdict(gain, lo, hi)
      entry["per_study"][label] = {"gain": gain, "lo": lo, "hi": hi, "verdict": verdict}
      said = getattr(rec, REPORTED_GAINS.get(str(name), ""), None)
      if (said is not None and verdict != "same" and np.isfinite(said.lo)
          and np.isfinite(said.hi)):
        where = ("below" if gain < said.lo else "above" if gain > said.hi else "inside")
        reported.setdefault(str(name), []).append(
            {"study": label, "predicted": [said.mean, said.lo, said.hi],
             "realized": gain, "where": where})
  for entry in mixtures.values():
    verdicts = [v["verdict"] for v in entry["per_study"].values()]
    entry.update({k: verdicts.count(k) for k in ("better", "level", "worse", "same")})
    entry["pooled"] = pooled_gain([v["gain"] for v in entry["per_study"].values()],
                                  float(first.ci))
  return {"studies": labels, "outcome": first.outcome, "maximize": bool(first.maximize),
          "mixtures": mixtures, "best": best, "reported": reported}


def pooled_gain(gains: Sequence[float], ci: float) -> dict[str, Any]:
  """The mean of per-study gains with its `ci` t interval across the studies (each
  study one draw of the design; its own run noise is inside the spread between
  studies), and its verdict as `_verdict` gives it for one study ("same" when every
  study's gain is exactly 0). One study has no spread to estimate: lo and hi are None,
  and the verdict is "level"."""
  g = np.asarray(gains, np.float64)
  n = len(g)
  if n < 2:
    return {"studies": n, "gain": float(g.mean()) if n else None, "lo": None,
            "hi": None, "verdict": "level"}
  mean, lo, hi = _interval(g, ci)
  return {"studies": n, "gain": mean, "lo": lo, "hi": hi,
          "verdict": _verdict(mean, lo, hi)}


def comparison_markdown(result: Mapping[str, Any]) -> str:
  """`compare_studies`' result as Markdown: the recommendation's realized gain over each
  mixture per study with its interval and verdict, the counts, each study's best
  mixture, and the reported gains against the realized ones."""
  labels = result["studies"]
  unit = "higher is better" if result["maximize"] else "lower is better"
  lines = [f"Realized gain of the recommendation over each mixture (`{result['outcome']}`, "
           f"{unit}; positive: the recommendation did better), with its interval, and "
           "the mean over the studies with a t interval across them:", "",
           "| mixture | " + " | ".join(labels) + " | better / level / worse | mean over "
           "studies |",
           "|---|" + "---|" * (len(labels) + 2)]
  for name, entry in result["mixtures"].items():
    cells = []
    for label in labels:
      v = entry["per_study"].get(label)
      cells.append("–" if v is None else "= recommended" if v["verdict"] == "same" else
                   f"{v['gain']:+.3f} [{v['lo']:+.3f}, {v['hi']:+.3f}]")
    same = f" (the recommendation on {entry['same']})" if entry["same"] else ""
    pooled = entry.get("pooled") or {}
    mean = ("–" if pooled.get("studies", 0) < 2 else
            "= recommended" if pooled["verdict"] == "same" else
            f"{pooled['gain']:+.4f} [{pooled['lo']:+.4f}, {pooled['hi']:+.4f}] "
            f"{pooled['verdict']} (n={pooled['studies']})")
    lines.append(f"| {name} | " + " | ".join(cells)
                 + f" | {entry['better']} / {entry['level']} / {entry['worse']}{same} | "
                 f"{mean} |")
  lines += ["", "Best mixture per study: " + "; ".join(
      f"{label} {result['best'][label]}" for label in labels) + "."]
  for name, checks in result["reported"].items():
    inside = sum(c["where"] == "inside" for c in checks)
    lines += ["", f"Reported gain over {name} against the realized one: {inside} of "
              f"{len(checks)} inside the reported interval."]
    lines += [f"- {c['study']}: predicted {c['predicted'][0]:+.3f} [{c['predicted'][1]:+.3f}, "
              f"{c['predicted'][2]:+.3f}], realized {c['realized']:+.3f} ({c['where']})"
              for c in checks]
  return "\n".join(lines) + "\n"
