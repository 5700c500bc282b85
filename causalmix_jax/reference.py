"""The reference model: a small LM trained on the pool's natural mixture (or loaded from
a checkpoint), and the per-token scores it gives every document of the pool (next-token
loss and predictive entropy, in bits), reduced to `data.doc_scores.DocScores`.

Scoring reads each document's first `max_tokens_per_document` tokens (0: all) in
windows of seq_len + 1 tokens that start at the document (so the context never crosses
into an earlier document), jitted and batched; a document's first token is context
only. The `reference` stage (`stages/reference.py`) drives it.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from causalmix_jax import model as model_lib
from causalmix_jax import train_step as train_step_lib
from causalmix_jax.data import doc_scores as doc_scores_lib
from causalmix_jax.data import pool as pool_lib
from causalmix_jax.data import token_pool as token_pool_lib

log = logging.getLogger(__name__)

LogitsFn = Callable[[jax.Array], jax.Array]
LOG_EVERY = 50  # training steps per jitted block (and progress-bar update)


def model_spec(cfg: ml_collections.ConfigDict, vocab_size: int) -> model_lib.ModelSpec:
  """The reference model's spec: `reference.model` with the pool's vocabulary."""
  m = ml_collections.ConfigDict(cfg.reference.model.to_dict())
  m.vocab_size = int(vocab_size)
  return model_lib.ModelSpec.from_config(m)


def natural_weights(tp: token_pool_lib.TokenPool) -> np.ndarray:
  """Token shares of the pool's domains (the mixture the reference model trains on)."""
  n = np.asarray(tp.lengths_D, np.float64)
  return (n / n.sum()).astype(np.float32)


def train(cfg: ml_collections.ConfigDict, tp: token_pool_lib.TokenPool,
          spec: model_lib.ModelSpec, *, progress: bool = True
          ) -> tuple[Any, dict[str, Any]]:
  """Trains the reference model on the pool's natural mixture; (params, info).

  `reference.optim` sets steps, batch size and schedule; `reference.seed` the init and
  data keys. Training runs as jitted scans of `LOG_EVERY` steps (a progress bar over
  them); info holds the loss curve's first and last values and the seconds taken.
  """
  oc = cfg.reference.optim
  steps, batch = int(oc.steps), int(oc.batch_size)
  if steps < 1 or batch < 1:
    raise ValueError(f"reference.optim.steps={steps} and reference.optim.batch_size="
                     f"{batch} must be >= 1")
  n_dom = tp.n_domains
  step_fn = train_step_lib.make_train_step(spec, oc, n_dom)
  key = jax.random.key(int(cfg.reference.seed))
  init_key, data_key = jax.random.split(key)
  state = jax.jit(lambda k: train_step_lib.init_train_state(spec, oc, k))(init_key)
  data = tp.device_arrays()
  w_D = jnp.asarray(natural_weights(tp))
  n_D = jnp.asarray(tp.lengths_D, jnp.int32)
  r_D = jnp.zeros(n_dom, jnp.float32)

  @functools.partial(jax.jit, static_argnames=("length",))
  def run_block(state, data, first, length):
    def body(state, step):
      b = token_pool_lib.sample_batch_from(data, jax.random.fold_in(data_key, step), w_D,
                                           n_D, r_D, batch, spec.seq_len)
      state, metrics = step_fn(state, b)
      return state, metrics["loss"]
    return jax.lax.scan(body, state, first + jnp.arange(length, dtype=jnp.int32))

  t0 = time.time()
  losses = []
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  bar = tqdm(total=steps, desc="reference: train", unit="step", disable=not progress,
             dynamic_ncols=True)
  done = 0
  while done < steps:
    state, loss_T = run_block(state, data, jnp.int32(done),
                              length=min(LOG_EVERY, steps - done))
    loss_T = np.asarray(jax.block_until_ready(loss_T))
    losses.extend(loss_T.tolist())
    done += len(loss_T)
    bar.update(len(loss_T))
    bar.set_postfix(loss=f"{loss_T[-1]:.3f}")
  bar.close()
  if not np.all(np.isfinite(losses)):
    raise FloatingPointError(f"reference model training diverged (loss {losses[-1]}); "
                             "lower reference.optim.lr")
  info = {"steps": steps, "batch_size": batch, "seq_len": spec.seq_len,
          "tokens": steps * batch * spec.seq_len, "loss_first": float(losses[0]),
          "loss_last": float(np.mean(losses[-max(1, len(losses) // 10):])),
          "seconds": time.time() - t0}
  log.info("reference: trained %d steps in %.1fs, loss %.3f -> %.3f (nats/token)", steps,
           info["seconds"], info["loss_first"], info["loss_last"])
  return state.params, info



def _window_starts(starts: np.ndarray, n: int, seq_len: int, max_tokens: int
                   ) -> tuple[np.ndarray, np.ndarray]:
  """(window start, end of the scored span) of every window: each document's first
  `max_tokens` tokens (0: all) cut into windows of seq_len + 1 that overlap by one."""
  starts = np.asarray(starts, np.int64)
  starts = starts[starts < n]
  lengths = pool_lib.doc_lengths(starts, n)
  span = lengths if max_tokens <= 0 else np.minimum(lengths, max_tokens)
  per = np.maximum(1, -(-(span - 1) // seq_len))  # windows per document
  doc = np.repeat(np.arange(len(starts)), per)
  j = np.arange(len(doc)) - np.repeat(np.cumsum(per) - per, per)
  return starts[doc] + j * seq_len, (starts + span)[doc]


def _stats_fn(logits_fn: LogitsFn) -> Callable:
  @jax.jit
  def stats(tokens_BxW: jax.Array) -> tuple[jax.Array, jax.Array]:
    logits_BxLxV = logits_fn(tokens_BxW[:, :-1]).astype(jnp.float32)
    logp_BxLxV = jax.nn.log_softmax(logits_BxLxV, axis=-1)
    labels_BxL = tokens_BxW[:, 1:]
    nll_BxL = -jnp.take_along_axis(logp_BxLxV, labels_BxL[..., None], axis=-1)[..., 0]
    ent_BxL = -jnp.sum(jnp.exp(logp_BxLxV) * logp_BxLxV, axis=-1)
    return nll_BxL / math.log(2), ent_BxL / math.log(2)
  return stats


def score_tokens(pool: Any, logits_fn: LogitsFn, *, seq_len: int, batch_size: int = 64,
                 max_tokens_per_document: int = 0, progress: bool = True
                 ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray],
                            dict[str, np.ndarray]]:
  """Per-token loss and entropy (bits) of every domain's training stream, and which
  positions were scored (predicted, inside the scored span, loss mask 1, not PAD).

  logits_fn: `tokens_BxL int32 -> logits_BxLxV` (L = seq_len).
  """
  stats = _stats_fn(logits_fn)
  window = seq_len + 1
  plans = {}
  for d in pool.domains:
    n = len(pool.train[d])
    plans[d] = _window_starts(pool.doc_starts[d], n, seq_len, max_tokens_per_document)
  total = sum(len(p[0]) for p in plans.values())
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  bar = tqdm(total=total, desc="reference: score", unit="window", disable=not progress,
             dynamic_ncols=True)
  loss, ent, scored = {}, {}, {}
  for d in pool.domains:
    stream = np.asarray(pool.train[d])
    mask = np.asarray(pool.train_mask[d]).astype(bool)
    n = len(stream)
    loss[d] = np.zeros(n, np.float32)
    ent[d] = np.zeros(n, np.float32)
    scored[d] = np.zeros(n, bool)
    w_start, w_end = plans[d]
    for lo in range(0, len(w_start), batch_size):
      st = w_start[lo:lo + batch_size]
      en = w_end[lo:lo + batch_size]
      rows = len(st)
      pos = st[:, None] + np.arange(window)[None, :]
      inside = pos < n
      tok = np.full((batch_size, window), pool.pad_id, np.int32)
      tok[:rows] = np.where(inside, stream[np.minimum(pos, n - 1)], pool.pad_id)
      nll, h = (np.asarray(a) for a in stats(jnp.asarray(tok)))
      tgt = pos[:, 1:]
      ok = (tgt < en[:, None]) & inside[:, 1:]
      ok &= mask[np.minimum(tgt, n - 1)] & (tok[:rows, 1:] != pool.pad_id)
      loss[d][tgt[ok]] = nll[:rows][ok]
      ent[d][tgt[ok]] = h[:rows][ok]
      scored[d][tgt[ok]] = True
      bar.update(rows)
  bar.close()
  return loss, ent, scored


def score_documents(pool: Any, logits_fn: LogitsFn, *, seq_len: int, batch_size: int = 64,
                    max_tokens_per_document: int = 0, quality_score: str = "loss_bits",
                    keep: str = "lowest", progress: bool = True
                    ) -> doc_scores_lib.DocScores:
  """`DocScores` of every document of the pool under `logits_fn`."""
  t0 = time.time()
  loss, ent, scored = score_tokens(pool, logits_fn, seq_len=seq_len,
                                   batch_size=batch_size,
                                   max_tokens_per_document=max_tokens_per_document,
                                   progress=progress)
  n_scored = int(sum(s.sum() for s in scored.values()))
  log.info("reference: scored %d tokens of %d documents in %.1fs", n_scored,
           sum(len(pool.doc_starts[d]) for d in pool.domains), time.time() - t0)
  return doc_scores_lib.from_token_scores(pool.domains, pool.doc_starts, loss, ent, scored,
                                          quality_score=quality_score, keep=keep)


def logits_fn_of(spec: model_lib.ModelSpec, params: Any) -> LogitsFn:
  return lambda tokens_BxL: model_lib.apply(spec, params, tokens_BxL)


def spec_dict(spec: model_lib.ModelSpec) -> dict[str, Any]:
  return dataclasses.asdict(spec)
