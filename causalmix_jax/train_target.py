"""Sharded training of the target model on a chosen mixture.

`read_mixture` resolves the mixture (`cfg.target.weights`, else `cfg.target.mixture_path`,
else `<workdir>/optimise/mixture.json`); `mixture_iterator_factory` binds the pool and
weights to the weighted grain mixture; `train(...)` is the loop that overlaps host logging with
device work (metrics of step t-1 are fetched while step t runs), stops on a non-finite
loss keeping the last good checkpoint, evaluates per-domain held-out and target losses
every `eval_every` steps, logs model FLOPs per token and achieved FLOP/s, and resumes
exactly from the latest checkpoint that can be read back (an unreadable one is named and
set aside), writing `metrics.jsonl` (each step once, also across resumes) and
`checkpoints/` into its output directory. The `target` stage (`stages/target.py`)
writes `summary.json`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import math
import pathlib
import time
from typing import Any, Callable, Mapping, Protocol, Sequence

import jax
import ml_collections
import numpy as np
import tqdm
from jax.sharding import NamedSharding, PartitionSpec

from causalmix_jax import artifacts
from causalmix_jax import checkpointing
from causalmix_jax import evaluate
from causalmix_jax import study as study_lib
from causalmix_jax import metrics as metrics_lib
from causalmix_jax import model
from causalmix_jax import sharding
from causalmix_jax import train_step as train_step_lib

log = logging.getLogger(__name__)


class BatchIterator(Protocol):
  """A checkpointable iterator of host batches (this process's rows)."""

  def __next__(self) -> dict[str, np.ndarray]: ...

  def get_state(self) -> Any: ...

  def set_state(self, state: Any) -> None: ...


class NonFiniteLossError(FloatingPointError):
  """Training produced a NaN/Inf loss or gradient; the last good checkpoint is kept."""


# ----------------------------------------------------------------------------- mixture


def read_mixture(cfg: ml_collections.ConfigDict, workdir: pathlib.Path,
                 domains: Sequence[str]) -> tuple[np.ndarray, str]:
  """(weights in canonical domain order, where they came from). Domains the mixture
  leaves out get weight 0; unknown domains and negative or all-zero weights are errors."""
  if len(cfg.target.weights):
    raw, source = dict(cfg.target.weights.to_dict()), "config key target.weights"
  else:
    path = pathlib.Path(cfg.target.mixture_path or workdir / study_lib.MIXTURE_JSON)
    doc = artifacts.read_json(path, "mixture (target.mixture_path)")
    if not isinstance(doc, dict) or not isinstance(doc.get("weights"), dict):
      raise ValueError(f"mixture {path} has no 'weights' object (domain -> weight)")
    raw, source = doc["weights"], str(path)
  unknown = sorted(set(raw) - set(domains))
  if unknown:
    raise ValueError(f"mixture from {source} names domain(s) {unknown} that are not in "
                     f"the pool (domains: {list(domains)})")
  w_D = np.array([float(raw.get(d, 0.0)) for d in domains], np.float64)
  bad = [d for d, w in zip(domains, w_D) if not math.isfinite(w) or w < 0]
  if bad:
    raise ValueError(f"mixture from {source}: negative or non-finite weight for {bad}")
  if w_D.sum() <= 0:
    raise ValueError(f"mixture from {source}: weights sum to 0")
  if abs(w_D.sum() - 1.0) > 1e-6:
    log.warning("mixture from %s sums to %.6f; normalised", source, w_D.sum())
  return w_D / w_D.sum(), source


def fingerprint_config(cfg: ml_collections.ConfigDict, model_spec: model.ModelSpec,
                       domains: Sequence[str], w_D: np.ndarray) -> dict[str, Any]:
  """Everything that determines the training trajectory (not logging, eval or mesh)."""
  return {"seed": int(cfg.seed), "model": dataclasses.asdict(model_spec),
          "optim": cfg.target.optim.to_dict(), "mixing": cfg.mixing.to_dict(),
          "domains": list(domains),
          "weights": {d: round(float(w), 12) for d, w in zip(domains, w_D)}}


def fingerprint(fp_config: Mapping[str, Any]) -> str:
  return hashlib.sha256(json.dumps(fp_config, sort_keys=True, default=str).encode()
                        ).hexdigest()


# ----------------------------------------------------------------------------- loop


@dataclasses.dataclass
class _Pending:
  """Device metrics of a dispatched step, fetched one step later."""
  step: int  # updates done after this step
  metrics: dict[str, jax.Array]


def _global_eval_arrays(host: Mapping[str, np.ndarray], mesh, rules
                        ) -> dict[str, jax.Array]:
  """Evaluation arrays as global arrays, batch axis (1) split like training batches."""
  split = sharding.batch_split(mesh, rules)
  batch_spec = sharding.batch_shardings(mesh, rules)["tokens"].spec[0]
  out = {}
  for k in evaluate.EVAL_KEYS:
    x = np.asarray(host[k])
    spec = PartitionSpec(None, batch_spec) if x.shape[1] % split == 0 else PartitionSpec()
    out[k] = sharding.from_replicated_host(x, NamedSharding(mesh, spec))
  return out


@dataclasses.dataclass(frozen=True)
class _Fns:
  state_sh: Any
  init: Callable
  step: Callable
  evaluate: Callable


def _frozen(c: ml_collections.ConfigDict) -> tuple[tuple[str, Any], ...]:
  return tuple(sorted(c.to_dict().items()))


@functools.lru_cache(maxsize=8)
def _compiled(spec: model.ModelSpec, optim_items: tuple[tuple[str, Any], ...],
              n_domains: int, mesh, rules: sharding.Rules) -> _Fns:
  """Jitted init / train step / evaluation for one setup, cached so that a process that
  trains several times (resume, tests, notebooks) compiles once."""
  optim_cfg = ml_collections.ConfigDict(dict(optim_items))
  state_sh = train_step_lib.state_shardings(spec, optim_cfg, mesh, rules)
  init = jax.jit(lambda k: train_step_lib.init_train_state(spec, optim_cfg, k),
                 out_shardings=state_sh)
  step = train_step_lib.make_sharded_train_step(spec, optim_cfg, n_domains, mesh, rules,
                                                state_sh)
  # Inputs (sharded params, global evaluation arrays) carry their own shardings.
  evaluate_fn = jax.jit(
      functools.partial(evaluate.evaluate, train_step_lib.make_eval_step(spec, n_domains)),
      out_shardings=NamedSharding(mesh, PartitionSpec()))
  return _Fns(state_sh, init, step, evaluate_fn)


def _is_finite(*values: float) -> bool:
  return all(math.isfinite(v) for v in values)


def train(cfg: ml_collections.ConfigDict, out_dir: pathlib.Path, *,
          domains: Sequence[str], vocab_size: int, weights_D: np.ndarray,
          make_iterator: Callable[[int, int, int], BatchIterator],
          eval_host: Mapping[str, np.ndarray],
          stop_after: int | None = None) -> dict[str, Any]:
  """Trains (or resumes) the target model; returns the summary dict.

  make_iterator(local_batch_size, process_index, process_count) -> this process's
    iterator of host batches of `local_batch_size` rows.
  eval_host: `evaluate.eval_arrays(...)` of the pool (identical on every process).
  stop_after: stop (as if interrupted) once this many updates are done; for tests.
  """
  tcfg = cfg.target
  out_dir = pathlib.Path(out_dir)
  writer_process = artifacts.is_writer()
  spec = dataclasses.replace(model.ModelSpec.from_config(tcfg.model), vocab_size=vocab_size)
  optim_cfg = tcfg.optim
  n_domains = len(domains)
  steps = int(optim_cfg.steps)

  mesh = sharding.make_mesh(cfg.mesh)
  rules = sharding.rules_from_config(cfg.mesh)
  global_batch = int(optim_cfg.batch_size)
  split = sharding.batch_split(mesh, rules)
  if global_batch % split or global_batch % jax.process_count():
    raise ValueError(
        f"target.optim.batch_size={global_batch} must be divisible by the batch mesh "
        f"split ({split}) and the process count ({jax.process_count()})")
  local_batch = global_batch // jax.process_count()

  fp_cfg = fingerprint_config(cfg, spec, domains, weights_D)
  ckpt = checkpointing.Checkpointer(
      out_dir / "checkpoints", fingerprint=fingerprint(fp_cfg), fingerprint_config=fp_cfg,
      max_to_keep=int(tcfg.keep_checkpoints))
  ckpt.check_resumable()  # another config's checkpoint: fail before compiling anything
  fns = _compiled(spec, _frozen(optim_cfg), n_domains, mesh, rules)
  state_sh = fns.state_sh
  key = jax.random.key(int(cfg.seed))
  iterator = make_iterator(local_batch, jax.process_index(), jax.process_count())
  restored = None
  if ckpt.all_steps():  # restore into the state's shapes and shardings
    abstract = checkpointing.abstract_like(jax.eval_shape(fns.init, key), state_sh)
    restored = ckpt.restore_latest(abstract)  # falls back past unreadable steps
  latest = None if restored is None else int(restored.step)
  start = 0
  restored_loss = float("nan")
  if restored is None:
    state = fns.init(key)
  else:
    state = restored.state
    restored_loss = float(restored.meta.get("extra", {}).get("loss", float("nan")))
    if restored.data_state is not None:
      iterator.set_state(restored.data_state)
    start = int(restored.step)
    log.info("target: resumed from %s", ckpt.step_dir(start))

  step_fn = fns.step
  eval_arrays = _global_eval_arrays(eval_host, mesh, rules)
  eval_fn = fns.evaluate
  sync_each_step = jax.devices()[0].platform == "cpu" and jax.device_count() > 1

  flops_tok = model.flops_per_token(spec)
  n_params = model.param_count(spec)
  tokens_per_step = global_batch * spec.seq_len
  # Records of steps after `start` (an interrupted run's, logged again below) are
  # dropped first, so every step appears once in metrics.jsonl.
  writer = metrics_lib.MetricsWriter(out_dir / "metrics.jsonl", enabled=writer_process,
                                     tensorboard_dir=out_dir / "tensorboard",
                                     start_step=start)
  writer.write(start, event="start", params=n_params,
               flops_per_token=flops_tok, tokens_per_step=tokens_per_step,
               mesh=str(dict(mesh.shape)), resumed=latest is not None)
  last: dict[str, Any] = {"loss": restored_loss}
  last_eval: dict[str, float] = {}
  window = {"t": time.time(), "steps": 0}
  t_start = time.time()
  bar = tqdm.tqdm(total=steps, initial=start, desc="target", disable=not writer_process,
                  dynamic_ncols=True)

  def finish(p: _Pending) -> None:
    """Fetches a step's metrics, checks them, logs them."""
    host = jax.device_get(p.metrics)
    loss, gnorm, unorm = (float(host[k]) for k in ("loss", "grad_norm", "update_norm"))
    if not _is_finite(loss, gnorm, unorm):
      ckpt.wait()
      good = ckpt.latest_step()
      where = (f"The last good checkpoint is {ckpt.directory}/{good}." if good is not None
               else "No checkpoint had been written yet.")
      raise NonFiniteLossError(
          f"non-finite training loss or update at step {p.step} (loss={loss}, "
          f"grad_norm={gnorm}, update_norm={unorm}); training stopped. {where} Lower "
          f"target.optim.lr, keep target.optim.clip_norm > 0, or check the data.")
    last.update(loss=loss, grad_norm=gnorm, step=p.step)
    window["steps"] += 1
    bar.update(1)
    if p.step % int(tcfg.log_every) == 0 or p.step == steps:
      now = time.time()
      dt = max(now - window["t"], 1e-9)
      tok_s = window["steps"] * tokens_per_step / dt
      per_dom = host["loss_sum_D"] / np.maximum(host["count_D"], 1)
      rec = {"loss": loss, "grad_norm": gnorm, "lr": float(host["lr"]),
             "tokens_per_s": tok_s, "flops_per_s": tok_s * flops_tok}
      rec.update({f"train_loss/{d}": float(per_dom[i]) for i, d in enumerate(domains)
                  if host["count_D"][i] > 0})
      writer.write(p.step, **rec)
      bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tok_s:,.0f}")
      window.update(t=now, steps=0)

  pending: _Pending | None = None
  step = start
  try:
    while step < steps and (stop_after is None or step < stop_after):
      host_batch = next(iterator)
      batch = sharding.shard_batch(host_batch, mesh, rules)
      state, met = step_fn(state, batch)
      step += 1
      current = _Pending(step, met)
      if pending is not None:
        finish(pending)  # overlaps with the step just dispatched
      if sync_each_step:
        jax.block_until_ready(met)
      pending = current
      do_eval = step % int(tcfg.eval_every) == 0 or step == steps
      do_ckpt = step % int(tcfg.checkpoint_every) == 0 or step == steps
      if do_eval or do_ckpt:
        finish(pending)  # this step must be finite before it is evaluated or saved
        pending = None
      if do_eval:
        last_eval = evaluate.named(jax.device_get(eval_fn(state.params, eval_arrays)),
                                   domains)
        writer.write(step, **last_eval)
      if do_ckpt:
        ckpt.save(step, state, data_state=iterator.get_state(),
                  extra={"loss": last["loss"]})
    if pending is not None:
      finish(pending)
      pending = None
    if not last_eval:  # nothing left to train (a finished run started again): evaluate
      last_eval = evaluate.named(jax.device_get(eval_fn(state.params, eval_arrays)),
                                 domains)
  finally:
    bar.close()
    ckpt.close()
    writer.close()

  seconds = time.time() - t_start
  done = step - start
  summary = {
      "steps": step, "steps_this_run": done, "resumed_from": latest,
      "final_train_loss": last["loss"], "eval_loss": {
          k.split("/", 1)[1]: v for k, v in last_eval.items() if k.startswith("eval_loss/")},
      "target_loss": last_eval.get("target_loss"),
      "tokens": step * tokens_per_step, "params": n_params,
      "flops_per_token": flops_tok, "flops": flops_tok * step * tokens_per_step,
      "seconds": seconds,
      "achieved_flops_per_s": flops_tok * done * tokens_per_step / max(seconds, 1e-9),
      "domains": list(domains),
      "weights": {d: float(w) for d, w in zip(domains, weights_D)},
      "mesh": dict(mesh.shape), "processes": jax.process_count(),
  }
  return summary


# ----------------------------------------------------------------------------- stage


class _ProcessRows:
  """This process's rows of the global batches of a checkpointable batch iterator.

  Every process reads the same global batch and keeps its contiguous slice, so a run
  sees the same data whatever the number of processes (and resumes identically)."""

  def __init__(self, it: Any, process_index: int, local_batch: int):
    self._it, self._lo, self._n = it, process_index * local_batch, local_batch

  def __next__(self) -> dict[str, np.ndarray]:
    batch = next(self._it)
    return {k: np.asarray(v)[self._lo:self._lo + self._n] for k, v in batch.items()}

  def get_state(self) -> Any:
    return self._it.get_state()

  def set_state(self, state: Any) -> None:
    self._it.set_state(state)


def mixture_iterator_factory(cfg: ml_collections.ConfigDict, pool: Any,
                              weights_D: np.ndarray) -> Callable[[int, int, int],
                                                                 BatchIterator]:
  """Binds the pool and weights to `causalmix_jax.data.mixing`'s weighted mixture."""
  from causalmix_jax.data import mixing  # pylint: disable=import-outside-toplevel

  def make(local_batch: int, process_index: int, process_count: int) -> BatchIterator:
    weights = {d: float(w) for d, w in zip(pool.domains, weights_D)}
    it = mixing.make_iterator(pool, weights, cfg.mixing,
                              batch_size=local_batch * process_count,
                              seq_len=int(cfg.target.model.seq_len))
    return _ProcessRows(it, process_index, local_batch)

  return make
