"""Config section of the reference model: the small LM whose per-document loss, entropy
and high-entropy sum become covariates and the score that quality filters rank by."""

from __future__ import annotations

import ml_collections

from causalmix_jax.configs import model as model_cfg


def section(variants: frozenset[str]) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  smoke, cpu = "smoke" in variants, "cpu" in variants
  # Off: no reference covariates, and no quality-filtered pool states.
  c.enabled = False
  # A trained model to load instead of training one: a target-stage directory, another
  # study's reference/ directory, or a checkpoints directory ("" = train one here).
  c.checkpoint = ""
  c.seed = 0
  c.model = model_cfg.model_preset("tiny" if smoke else "proxy")
  c.model.seq_len = 32 if smoke else (64 if cpu else 128)
  c.optim = model_cfg.optim_section(lr=3e-3, steps=20 if smoke else (300 if cpu else 1000),
                                    batch_size=8 if smoke else 16)
  # Each document is scored on its first this many tokens (0 = all of it).
  c.max_tokens_per_document = 256 if smoke or cpu else 0
  c.batch_size = 64
  # The document score quality filters rank by ("loss_bits" | "entropy_bits" |
  # "hes_bits"), and which end they keep ("lowest" | "highest").
  c.quality_score = "loss_bits"
  c.keep = "lowest"
  return c
