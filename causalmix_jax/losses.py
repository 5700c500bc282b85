"""Masked next-token cross-entropy, as token sums and counts, overall and per domain.

Everything is a pure jnp function (jit/vmap/grad friendly). Losses are returned as sums
with their token counts so that micro-batches, hosts and evaluation batches combine
exactly: mean = sum(loss_sum) / sum(count).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def split_batch(tokens_BxL1: jax.Array, mask_BxL1: jax.Array
                ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(inputs [B, L], labels [B, L], loss weights [B, L] float32) of a batch row layout
  `tokens[:, :-1]` -> `tokens[:, 1:]`, counted where `mask[:, 1:]` is nonzero."""
  return (tokens_BxL1[:, :-1], tokens_BxL1[:, 1:],
          (mask_BxL1[:, 1:] != 0).astype(jnp.float32))


def token_xent(logits_BxLxV: jax.Array, labels_BxL: jax.Array) -> jax.Array:
  """Per-token cross-entropy [B, L] in float32."""
  logits = logits_BxLxV.astype(jnp.float32)
  logz_BxL = jax.nn.logsumexp(logits, axis=-1)
  label_logit_BxL = jnp.take_along_axis(logits, labels_BxL[..., None], axis=-1)[..., 0]
  return logz_BxL - label_logit_BxL


def masked_xent_sums(logits_BxLxV: jax.Array, labels_BxL: jax.Array,
                     weight_BxL: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-example (loss_sum [B], count [B]) of the masked cross-entropy."""
  xent_BxL = token_xent(logits_BxLxV, labels_BxL) * weight_BxL
  return xent_BxL.sum(axis=-1), weight_BxL.sum(axis=-1)


def per_domain(value_B: jax.Array, domain_B: jax.Array, n_domains: int) -> jax.Array:
  """Sums `value_B` by domain id into [n_domains]; ids outside [0, n_domains) drop."""
  onehot_BxD = jax.nn.one_hot(domain_B, n_domains, dtype=jnp.float32)
  return value_B.astype(jnp.float32) @ onehot_BxD


def mean_loss(loss_sum: jax.Array, count: jax.Array) -> jax.Array:
  """Token-weighted mean; 0 where nothing was counted (avoids 0/0)."""
  return loss_sum / jnp.maximum(count, 1.0)
