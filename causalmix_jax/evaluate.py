"""Held-out evaluation shared by the proxy sweep and the target: fixed evaluation batches
(per-domain held-out documents and the target evaluation set) and a pure function that
reduces an eval step over them to per-domain and target losses.

Evaluation arrays use the key names of `TokenPool.device_arrays()`:
`eval_tokens` int32[E, B, L+1], `eval_mask` uint8[E, B, L+1], `eval_domain` int32[E, B],
`target_tokens` int32[T, B, L+1], `target_mask` uint8[T, B, L+1]; so the sweep can pass its
device-resident pool directly and the target builds the same arrays on the host.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from causalmix_jax import losses

EVAL_KEYS = ("eval_tokens", "eval_mask", "eval_domain", "target_tokens", "target_mask")


def _windows(stream: np.ndarray, mask: np.ndarray, count: int, window: int,
             pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """`count` rows of consecutive windows (overlapping by one token, so every token but the
  first is a label once) from the start of `stream`; rows past its end are padding with
  mask 0."""
  tok_RxW = np.full((count, window), pad_id, np.int32)
  msk_RxW = np.zeros((count, window), np.uint8)
  for i in range(count):
    lo = i * (window - 1)
    piece = np.asarray(stream[lo:lo + window])
    if len(piece) < 2:
      break
    tok_RxW[i, :len(piece)] = piece
    msk_RxW[i, :len(piece)] = np.asarray(mask[lo:lo + window])
  return tok_RxW, msk_RxW


def eval_arrays(pool: Any, *, seq_len: int, batch_size: int,
                n_batches: int) -> dict[str, np.ndarray]:
  """Host evaluation arrays of a loaded pool: `n_batches` batches of held-out windows per
  domain (in canonical domain order) and `n_batches` batches of the target set."""
  window, rows = seq_len + 1, n_batches * batch_size
  toks, msks, doms = [], [], []
  for i, d in enumerate(pool.domains):
    t, m = _windows(pool.heldout[d], pool.heldout_mask[d], rows, window, pool.pad_id)
    toks.append(t.reshape(n_batches, batch_size, window))
    msks.append(m.reshape(n_batches, batch_size, window))
    doms.append(np.full((n_batches, batch_size), i, np.int32))
  tt, tm = _windows(pool.target, pool.target_mask, rows, window, pool.pad_id)
  return {"eval_tokens": np.concatenate(toks), "eval_mask": np.concatenate(msks),
          "eval_domain": np.concatenate(doms),
          "target_tokens": tt.reshape(n_batches, batch_size, window),
          "target_mask": tm.reshape(n_batches, batch_size, window)}


def evaluate(eval_step: Callable[[Any, dict[str, jax.Array]], dict[str, jax.Array]],
             params: Any, arrays: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
  """Pure (jittable, vmappable over `params`) evaluation over fixed batches.

  Returns `eval_loss_D` (token-weighted mean per domain; 0 where a domain has no
  held-out tokens), `eval_count_D`, `target_loss` and `target_count`.
  """

  def run(tokens_ExBxW, mask_ExBxW, domain_ExB):
    def body(acc, xs):
      out = eval_step(params, {"tokens": xs[0], "mask": xs[1], "domain": xs[2]})
      return (acc[0] + out["loss_sum_D"], acc[1] + out["count_D"]), None

    probe = jax.eval_shape(eval_step, params, {"tokens": tokens_ExBxW[0],
                                               "mask": mask_ExBxW[0],
                                               "domain": domain_ExB[0]})
    zeros = jnp.zeros(probe["loss_sum_D"].shape, jnp.float32)
    (loss_sum_D, count_D), _ = jax.lax.scan(body, (zeros, zeros),
                                            (tokens_ExBxW, mask_ExBxW, domain_ExB))
    return loss_sum_D, count_D

  loss_sum_D, count_D = run(arrays["eval_tokens"], arrays["eval_mask"],
                            arrays["eval_domain"])
  tt = arrays["target_tokens"]
  t_sum_D, t_count_D = run(tt, arrays["target_mask"], jnp.zeros(tt.shape[:2], jnp.int32))
  t_sum, t_count = t_sum_D.sum(), t_count_D.sum()
  return {"eval_loss_D": losses.mean_loss(loss_sum_D, count_D), "eval_count_D": count_D,
          "target_loss": losses.mean_loss(t_sum, t_count), "target_count": t_count}


def named(result: Mapping[str, Any], domains: Sequence[str]) -> dict[str, float]:
  """Flat, JSON-ready names for one evaluation: `eval_loss/<domain>`, `target_loss`.
  Domains without held-out tokens are left out."""
  loss_D = np.asarray(result["eval_loss_D"], np.float64)
  count_D = np.asarray(result["eval_count_D"], np.float64)
  out = {f"eval_loss/{d}": float(loss_D[i]) for i, d in enumerate(domains) if count_D[i] > 0}
  if float(np.asarray(result["target_count"])) > 0:
    out["target_loss"] = float(np.asarray(result["target_loss"]))
  return out
