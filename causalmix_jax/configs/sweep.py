"""Config sections for the intervention design and the vmapped proxy sweep."""

from __future__ import annotations

import ml_collections


def design_section(variants: frozenset[str]) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  smoke = "smoke" in variants
  c.n_mixtures = 8 if smoke else 48
  # Dirichlet around the prior (token shares) with these concentrations; a share of
  # flat-Dirichlet and space-filling draws.
  c.concentrations = (1.0, 5.0, 25.0)
  c.flat_fraction = 0.2
  c.space_filling_fraction = 0.2
  c.n_pool_states = 2 if smoke else 4
  c.seeds = 1 if smoke else 2
  c.heldout_fraction = 0.1
  c.min_weight = 0.0
  c.max_weight = 1.0
  c.max_epochs = 0.0  # 0 = no repetition cap
  return c


def sweep_section(variants: frozenset[str]) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  smoke = "smoke" in variants
  c.chunk_size = 4 if smoke else 32
  c.eval_batches = 2 if smoke else 4
  c.divergence_loss = 1e3
  return c
