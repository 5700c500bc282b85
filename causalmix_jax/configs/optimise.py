"""Config section for the mixture optimiser and its constraints."""

from __future__ import annotations

import ml_collections


def section(variants: frozenset[str]) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.method = "S"  # "S" (search) | "A" (analytic step)
  # "safe" (the upper end of the `ci` interval, within the weights the sweep tried, never
  # above the sweep's best-known mixtures; see optimise/recommend.py) | "mean" | "bound"
  # (alias "lcb": the risk-averse end of the `ci` credible interval, the upper one for a
  # loss, without the cap) | "pi" (probability of improving on the reference).
  c.objective = "safe"
  # What "safe" does off the sweep's support: "shrink" (the pick must beat uniform at
  # the paired bound, else the candidate closest to doing so, the points on the segment
  # from uniform to the pick among them) | "uniform" (the same without the segment:
  # usually uniform itself) | "anchors" (the candidate whose worst paired bound against
  # the sweep's best-known mixtures and uniform is lowest; see optimise/recommend.py).
  c.off_support = "shrink"
  # What "safe" minimises inside its region: "bound" (the upper end of the interval) |
  # "mean" (the posterior mean: the lowest expected loss) | "mean_inside" (the mean
  # where the off-support check does not run, the bound where it does). Cap, anchors
  # and the off-support check are the same for all three.
  c.safe_score = "bound"
  # When "safe" counts the pool as off the support: "heldout" (as "range", and every
  # pool when the guarded decision did better on the sweep's own pool states held out:
  # the surface's info "heldout_guard") | "range" (the support verdict or any covariate
  # outside the sweep's range) | "verdict" (the held-out-calibrated verdict) |
  # "always" (every pool).
  c.off_support_trigger = "heldout"
  # What the off-support check compares the pick with: "capped" (uniform with no domain
  # repeated for more epochs than the sweep's runs repeated it, for the pool's tokens
  # and the target's budget; uniform where uniform stays inside them) | "uniform".
  c.safe_baseline = "capped"
  # What "safe" does when its pick (after the off-support check) has a posterior mean
  # loss above that of the check's baseline: "baseline" (takes that baseline instead:
  # uniform kept inside the sweep's epochs, uniform where uniform stays inside them) |
  # "uniform" (compares with, and takes, uniform itself) | "none" (keeps it).
  c.mean_guard = "baseline"
  # Which candidate the off-support check's fallback takes when the pick fails it:
  # "bound" (the lowest upper bound of the paired difference to the baseline) | "mean"
  # (the lowest posterior mean loss among the candidates whose upper bound is <= 0).
  c.fallback_score = "bound"
  # Whether the pick is averaged with the companion model's own pick where the surface
  # was fitted with one (surface.companion): "companion" (always) | "checked" (where
  # the mean passes the safe objective's check and mean guard) | "guarded" (the mean
  # guard alone) | "held" (the mean guard, where the safe objective kept the
  # surface's own pick) | "none". Surfaces without a companion
  # (surface.companion = "none") are never averaged.
  c.decision_average = "guarded"
  c.ci = 0.9
  # Reference mixture: "sweep_mean" (the surface's mean sweep mixture, else the pool's
  # token shares) | "token_shares" | "uniform" | "domain:weight,domain:weight,...".
  c.reference = "sweep_mean"
  c.trust_radius = 0.0  # 0 = no trust region
  c.trust_kind = "l1"  # "l1" | "kl"
  c.min_weight = 0.0  # every domain
  c.max_weight = 1.0  # every domain
  # Per-domain overrides and pinned weights: domain -> value (on the command line,
  # --config.optimise.domain_max.code=0.4).
  c.domain_min = ml_collections.ConfigDict()
  c.domain_max = ml_collections.ConfigDict()
  c.pinned = ml_collections.ConfigDict()
  # Cap on passes over a domain's unique tokens (pool.json) within the target's budget
  # (target steps x batch x seq_len); 0 = no cap.
  c.max_epochs = 0.0
  c.sampler_min_weight = 1e-3
  # Multi-objective: outcome -> weight over surfaces fitted under surface/<outcome>/;
  # empty = the config's `outcome` alone.
  c.outcome_weights = ml_collections.ConfigDict()
  c.n_starts = 16 if "smoke" in variants else 64
  c.n_steps = 60 if "smoke" in variants else 300
  c.n_candidates = 2048 if "smoke" in variants else 16_384
  return c
