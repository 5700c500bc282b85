"""Config section of the `validate` stage: which mixtures are trained side by side, with
how many seeds, at which scale."""

from __future__ import annotations

import ml_collections


def section(variants: frozenset[str]) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # Trained side by side, each for `seeds` seeds with common random numbers: the
  # recommendation ("recommended", the optimise stage's pick), the optimiser's variants
  # "<S|A>_<mean|bound>", uniform, natural token shares, RegMix's LightGBM best candidate
  # ("regmix") and top-k mean ("regmix_topk"), the covariate-blind surface ("blind"),
  # and the sweep's best-known mixture ("best_known", which the recommendation reports
  # its improvement over: trained here, that claim is checked). Also known, not run by
  # default: "unguarded", the recommendation's pick before the safe objective's check
  # against uniform (the recommendation itself when the check kept it), which shows
  # what that check cost or saved.
  c.mixtures = ("recommended", "S_mean", "S_bound", "A_mean", "A_bound", "uniform",
                "natural", "regmix", "regmix_topk", "blind", "best_known")
  c.seeds = 3
  # "proxy": the proxies' model and budget (the scale the surface predicts, so predicted
  # and realized outcomes are compared); "target": the target's model and budget.
  c.scale = "target"
  if "cpu" in variants or "smoke" in variants:
    c.scale = "proxy"
  c.ci = 0.9
  # Monte-Carlo candidates of the RegMix picks, and how many of the best the top-k
  # pick averages (RegMix averages its top 128 of 100k).
  c.regmix_candidates = 20_000 if "smoke" in variants else 100_000
  c.regmix_top_k = 128
  return c
