"""Config section for the causal response surface."""

from __future__ import annotations

import ml_collections


def section(variants: frozenset[str]) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.method = "dml"  # "dml" | "outcome" | "gp"
  c.inference = "nuts"  # "nuts" | "svi"
  c.num_warmup = 200 if "smoke" in variants else 500
  c.num_samples = 200 if "smoke" in variants else 1000
  c.num_chains = 1 if "smoke" in variants else 2
  c.svi_steps = 2000
  c.n_folds = 5
  c.seed = 0
  return c
