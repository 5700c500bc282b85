"""Config section for the mixture optimiser and its constraints."""

from __future__ import annotations

import ml_collections


def section(variants: frozenset[str]) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.method = "S"  # "S" (search) | "A" (analytic step)
  c.objective = "mean"  # "mean" | "lcb" | "pi"
  c.trust_radius = 0.0  # 0 = no trust region
  c.trust_kind = "l1"  # "l1" | "kl"
  c.min_weight = 0.0
  c.max_weight = 1.0
  c.max_epochs = 0.0
  c.sampler_min_weight = 1e-3
  c.n_starts = 64
  c.n_steps = 300
  c.n_candidates = 100_000
  del variants
  return c
