"""The optimiser: AdamW with linear warmup and cosine decay, global-norm gradient clipping.

Config keys (`cfg.proxy.optim` / `cfg.target.optim`): lr, min_lr_ratio, warmup_steps,
steps, weight_decay, b1, b2, clip_norm, grad_accum. Gradient accumulation
(`grad_accum` > 1) is done by `train_step` over micro-batches before one optimiser update,
so that one step is one update and token-weighted losses stay exact; the transformation
built here is therefore the same for any `grad_accum`.
"""

from __future__ import annotations

import jax
import ml_collections
import optax


def learning_rate_schedule(optim_cfg: ml_collections.ConfigDict) -> optax.Schedule:
  """lr / warmup_steps at step 0 rising linearly to lr at `warmup_steps`, then cosine
  decay to `lr * min_lr_ratio` at `steps` (the first update already moves the model)."""
  for key in ("lr", "min_lr_ratio", "warmup_steps", "steps"):
    if key not in optim_cfg:
      raise KeyError(f"optim config lacks key {key!r}")
  if optim_cfg.steps < 1:
    raise ValueError(f"optim.steps={optim_cfg.steps} must be >= 1")
  warmup = int(min(max(optim_cfg.warmup_steps, 0), optim_cfg.steps))
  return optax.warmup_cosine_decay_schedule(
      init_value=float(optim_cfg.lr) / max(warmup, 1), peak_value=float(optim_cfg.lr), warmup_steps=warmup,
      decay_steps=max(int(optim_cfg.steps), warmup + 1),  # warmup >= steps: no decay
      end_value=float(optim_cfg.lr) * float(optim_cfg.min_lr_ratio))


def _decay_mask(params):
  """Weight decay on matrices and embeddings only, not on norm scales."""
  return jax.tree.map(lambda x: x.ndim >= 2, params)


def make_optimizer(optim_cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """AdamW + warmup/cosine + clipping; pure, so its state is vmappable and shardable."""
  chain = []
  if optim_cfg.clip_norm and optim_cfg.clip_norm > 0:
    chain.append(optax.clip_by_global_norm(float(optim_cfg.clip_norm)))
  chain.append(optax.adamw(
      learning_rate=learning_rate_schedule(optim_cfg), b1=float(optim_cfg.b1),
      b2=float(optim_cfg.b2), weight_decay=float(optim_cfg.weight_decay),
      mask=_decay_mask))
  return optax.chain(*chain)
