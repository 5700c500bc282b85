"""The proxy sweep: every (intervention, seed) run of the design trained as one compiled
program, `jit(vmap(train))` over a single flattened run axis sharded over a `proxy` mesh
axis that spans all devices and hosts, in resumable chunks, into the runs table.

`make_train(cfg, token_pool)` returns the pure `train(key, w_D, n_tokens_D, dup_rate_D)`:
init from the key, a `lax.scan` over the shared `train_step` (the same step the target
uses) on batches sampled on device by the run's own weights and pool state, then the
held-out loss per domain and the target-evaluation loss. Each chunk of runs is written
atomically (with page checksums) to `sweep/chunks/chunk_<i>.parquet`; a restarted sweep
skips finished chunks, reads each one back in full and recomputes, with a warning that
names the file, any chunk that is unreadable or does not hold its runs with the expected
columns; `runs.parquet` / `runs.csv` hold every run exactly once. A failed write raises
an OSError that names the file. A run whose loss is NaN/Inf or above
`sweep.divergence_loss` is recorded with status "diverged" and NaN outcomes.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import pathlib
import time
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pandas as pd
from jax.sharding import NamedSharding, PartitionSpec as P

from causalmix_jax import artifacts
from causalmix_jax import evaluate
from causalmix_jax import interventions
from causalmix_jax import model as model_lib
from causalmix_jax import sharding as sharding_lib
from causalmix_jax import train_step as train_step_lib
from causalmix_jax.data import token_pool as token_pool_lib

log = logging.getLogger(__name__)

PROXY_AXIS = "proxy"
TrainOutputs = dict[str, jax.Array]


# ----------------------------------------------------------------------------- the proxy


def proxy_model_config(cfg: ml_collections.ConfigDict,
                       vocab_size: int) -> ml_collections.ConfigDict:
  """`cfg.proxy.model` with the pool's vocabulary size (an unlocked copy)."""
  m = ml_collections.ConfigDict(cfg.proxy.model.to_dict())
  m.vocab_size = int(vocab_size)
  return m


def run_key(base_seed: int, seed: jax.Array) -> jax.Array:
  """The key of seed replicate `seed`: the same for every mixture (common random
  numbers: same init and same data-order keys)."""
  return jax.random.fold_in(jax.random.key(base_seed), seed)


def make_train_on(cfg: ml_collections.ConfigDict, model_cfg: ml_collections.ConfigDict,
                  n_domains: int) -> Callable[..., TrainOutputs]:
  """Pure `train_on(data, key, w_D, n_tokens_D, dup_rate_D, kept_end_M=None) -> outputs`
  where `data` is the pytree of `TokenPool.device_arrays()` (an argument, so it is not
  baked into the compiled program as a constant) and `kept_end_M` the run's quality
  filter (`TokenPool.kept_end`; None: every document).

  outputs: `loss_T` (training loss per step), `heldout_D` (held-out loss per domain),
  `target` (target-evaluation loss).
  """
  optim_cfg = cfg.proxy.optim
  steps = int(optim_cfg.steps)
  batch_size = int(optim_cfg.batch_size)
  seq_len = int(model_cfg.seq_len)
  train_step = train_step_lib.make_train_step(model_cfg, optim_cfg, n_domains)
  eval_step = train_step_lib.make_eval_step(model_cfg, n_domains)

  def train_on(data: dict[str, jax.Array], key: jax.Array, w_D: jax.Array,
               n_tokens_D: jax.Array, dup_rate_D: jax.Array,
               kept_end_M: jax.Array | None = None) -> TrainOutputs:
    init_key, data_key = jax.random.split(key)
    state = train_step_lib.init_train_state(model_cfg, optim_cfg, init_key)

    def body(state, step):
      batch = token_pool_lib.sample_batch_from(
          data, jax.random.fold_in(data_key, step), w_D, n_tokens_D, dup_rate_D,
          batch_size, seq_len, kept_end_M)
      state, metrics = train_step(state, batch)
      return state, metrics["loss"]

    state, loss_T = jax.lax.scan(body, state, jnp.arange(steps, dtype=jnp.int32))

    ev = evaluate.evaluate(eval_step, state.params, data)
    return {"loss_T": loss_T, "heldout_D": ev["eval_loss_D"], "target": ev["target_loss"]}

  return train_on


def make_train(cfg: ml_collections.ConfigDict, token_pool: token_pool_lib.TokenPool,
               vocab_size: int | None = None) -> Callable[..., TrainOutputs]:
  """Pure `train(key, w_D, n_tokens_D, dup_rate_D) -> outputs` over `token_pool`."""
  vocab = int(vocab_size or cfg.proxy.model.vocab_size)
  train_on = make_train_on(cfg, proxy_model_config(cfg, vocab), token_pool.n_domains)
  data = token_pool.device_arrays()

  def train(key, w_D, n_tokens_D, dup_rate_D):
    return train_on(data, key, w_D, n_tokens_D, dup_rate_D)

  return train


def proxy_mesh(devices: list[Any] | None = None) -> jax.sharding.Mesh:
  """1-D mesh over every device of every host, axis `proxy`."""
  devices = list(devices if devices is not None else jax.devices())
  return jax.make_mesh((len(devices),), (PROXY_AXIS,),
                       axis_types=(jax.sharding.AxisType.Auto,), devices=devices)


# Default runs in lockstep per CPU device. On 2 cores (benchmarks/bench_sweep.py, the
# quickstart's proxy, P = 32 and 128): 32 per device ran at 1.00-1.07x the sequential
# speed, 1 per device (a lax.map over runs) at 0.77-0.78x, and 128 at 0.91x.
CPU_RUNS_PER_DEVICE = 32


def group_width(cfg: ml_collections.ConfigDict, n_runs: int, n_devices: int,
                platform: str | None = None) -> int:
  """How many runs train in lockstep (vmapped) at a time; the rest of a chunk is looped
  over by `lax.map` inside the same program. `sweep.vmap_width` (0 or absent: up to
  `CPU_RUNS_PER_DEVICE` runs per device on CPU, the whole chunk on accelerators). The
  width is a divisor of `n_runs` and a multiple of the device count (so each device
  keeps whole groups)."""
  platform = platform or jax.devices()[0].platform
  want = int(cfg.sweep.vmap_width)
  if want < 0:
    raise ValueError(f"sweep.vmap_width={want} must be >= 0")
  if want == 0:
    want = CPU_RUNS_PER_DEVICE * n_devices if platform == "cpu" else n_runs
  if n_runs % n_devices:
    raise ValueError(f"{n_runs} runs do not divide over {n_devices} devices")
  want = max(n_devices, min(want, n_runs))
  return max(w for w in range(n_devices, want + 1, n_devices) if n_runs % w == 0)


def make_sweep_fn(cfg: ml_collections.ConfigDict, model_cfg: ml_collections.ConfigDict,
                  n_domains: int, mesh: jax.sharding.Mesh,
                  filtered: bool = False) -> Callable[..., TrainOutputs]:
  """`jit(vmap(train))` over one run axis: `fn(data, seed_N, w_NxD, n_tokens_NxD,
  dup_rate_NxD[, kept_end_NxM])` (the last when `filtered`: each run's quality filter),
  runs sharded over the `proxy` axis, pool data replicated.

  Runs train `group_width` at a time: the run axis N is viewed as [W, N / W] (W sharded
  like N) and `lax.map` walks the second axis, vmapping `train` over W. W = N is the
  plain `vmap`; any W gives the same per-run results."""
  train_on = make_train_on(cfg, model_cfg, n_domains)
  base_seed = int(cfg.seed)
  n_dev = mesh.size

  def one(data, seed, w_D, n_D, r_D, kept_M=None):
    return train_on(data, run_key(base_seed, seed), w_D, n_D, r_D, kept_M)

  def batched(data, *runs):
    n = runs[0].shape[0]
    width = group_width(cfg, n, n_dev)
    vmapped = jax.vmap(lambda xs: one(data, *xs))
    if width == n:
      return vmapped(runs)
    loops = n // width
    # [N, ...] -> [W, N/W, ...] -> [N/W, W, ...]: a device's runs stay on that device.
    grouped = jax.tree.map(lambda x: jnp.swapaxes(x.reshape((width, loops) + x.shape[1:]),
                                                  0, 1), runs)
    out = jax.lax.map(vmapped, grouped)
    return jax.tree.map(lambda y: jnp.swapaxes(y, 0, 1).reshape((n,) + y.shape[2:]), out)

  runs_sh = NamedSharding(mesh, P(PROXY_AXIS))
  repl = NamedSharding(mesh, P())
  return jax.jit(batched, in_shardings=(repl,) + (runs_sh,) * (5 if filtered else 4),
                 out_shardings=runs_sh)


# ----------------------------------------------------------------------------- driver


def _to_host(tree: Any) -> Any:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    return multihost_utils.process_allgather(tree, tiled=True)
  return jax.tree.map(np.asarray, tree)


def diverged(loss_T: np.ndarray, heldout_ND: np.ndarray, target_N: np.ndarray,
             threshold: float) -> np.ndarray:
  """Runs whose final training loss or any evaluation loss is NaN/Inf or > threshold."""
  final = loss_T[:, -1]
  vals = np.concatenate([final[:, None], heldout_ND, target_N[:, None]], axis=1)
  return ~np.all(np.isfinite(vals), axis=1) | np.any(vals > threshold, axis=1)


def chunk_frame(idx: np.ndarray, out: dict[str, np.ndarray], design: dict[str, np.ndarray],
                meta: dict[str, Any], *, params: int, threshold: float,
                heldout_domains: set[str] | None = None) -> pd.DataFrame:
  """Runs-table rows of the runs `idx` from the sweep outputs (first len(idx) rows).
  Domains without held-out tokens (not in `heldout_domains`) get no y_ column."""
  domains = list(meta["domains"])
  n = len(idx)
  loss_T = np.asarray(out["loss_T"])[:n]
  held_ND = np.asarray(out["heldout_D"], np.float64)[:n]
  target_N = np.asarray(out["target"], np.float64)[:n]
  bad = diverged(loss_T, held_ND, target_N, threshold)
  state_N = design["state_N"][idx]
  cols: dict[str, Any] = {"run_id": design["run_id_N"][idx].astype(str),
                          "seed": design["seed_N"][idx].astype(np.int64)}
  for j, d in enumerate(domains):
    cols[f"w_{d}"] = design["w_NxD"][idx, j]
  states = meta["states"]
  feats = sorted(states[0]["covariates"]) if states else []
  for f in feats:
    name = f if f.startswith("x_") else f"x_{f}"
    cols[name] = np.array([float(states[s]["covariates"][f]) for s in state_N])
  for j, d in enumerate(domains):
    cols[f"tokens_{d}"] = design["n_tokens_SxD"][state_N, j].astype(np.float64)
  cols["budget_tokens"] = np.full(n, float(design["budget_tokens"]))
  cols["params"] = np.full(n, float(params))
  cols["status"] = np.where(bad, "diverged", "ok")
  cols["y_target"] = np.where(bad, np.nan, target_N)
  for j, d in enumerate(domains):
    if heldout_domains is None or d in heldout_domains:
      cols[f"y_{d}"] = np.where(bad, np.nan, held_ND[:, j])
  cols["state"] = np.array([states[s]["name"] for s in state_N]) if states else state_N
  cols["heldout"] = design["heldout_N"][idx].astype(bool)
  cols["train_loss_final"] = loss_T[:, -1].astype(np.float64)
  return pd.DataFrame(cols)


@contextlib.contextmanager
def _writing(path: pathlib.Path) -> Iterator[None]:
  """Re-raises an OSError of the block (disk full, permission denied) naming `path`."""
  try:
    yield
  except OSError as e:
    text = (f"sweep: {e.strerror or e}" if str(path) in str(e)  # named already
            else f"sweep: could not write {path}: {e.strerror or e}")
    raise (OSError(text) if e.errno is None else OSError(e.errno, text)) from e


def _write_parquet(frame: pd.DataFrame, path: pathlib.Path) -> None:
  with _writing(path), artifacts.atomic_path(path) as tmp:
    frame.to_parquet(tmp, index=False, write_page_checksum=True)


def _read_chunk(path: pathlib.Path, run_ids: np.ndarray,
                template: pd.DataFrame) -> pd.DataFrame | None:
  """The finished chunk at `path`, or None (with a warning naming the file) when it is
  unreadable, fails its page checksums, or does not hold `run_ids` in order with the
  columns and types of `template`."""
  try:
    frame = pd.read_parquet(path, page_checksum_verification=True)
  except Exception as e:  # pylint: disable=broad-except
    first = (str(e).strip().splitlines() or [""])[0][:300]
    log.warning("sweep: chunk file %s is corrupt or truncated (%s: %s); recomputing it",
                path, type(e).__name__, first)
    return None
  if list(frame.columns) != list(template.columns) or not frame.dtypes.equals(
      template.dtypes):
    log.warning("sweep: chunk file %s has other columns than this sweep writes; "
                "recomputing it", path)
    return None
  ids = frame["run_id"].to_numpy().astype(str)
  if not np.array_equal(ids, run_ids):
    log.warning("sweep: chunk file %s does not hold the runs of its chunk; "
                "recomputing it", path)
    return None
  return frame


def _remove_partial_writes(out_dir: pathlib.Path, chunks_dir: pathlib.Path) -> None:
  """Deletes the temporary files of writes cut short by a killed sweep."""
  stems = {chunks_dir: (".chunk_*.parquet", ".design_digest.json"),
           out_dir: (".runs.parquet", ".runs.csv")}  # atomic_path's ".<name>.*.tmp"
  for d, names in stems.items():
    for p in [p for name in names for p in d.glob(f"{name}.*.tmp")]:
      log.info("sweep: removing %s, left by an interrupted write", p)
      p.unlink(missing_ok=True)


def _design_digest(cfg: ml_collections.ConfigDict, design: dict[str, np.ndarray],
                   meta: dict[str, Any]) -> str:
  h = hashlib.sha256()
  for k in sorted(design):
    h.update(k.encode())
    h.update(np.ascontiguousarray(design[k]).tobytes())
  h.update(artifacts.to_json(meta, None).encode())
  h.update(artifacts.to_json({k: cfg[k].to_dict() for k in ("proxy", "sweep")}
                             | {"seed": cfg.seed}, None).encode())
  return h.hexdigest()


def estimate_cost(cfg: ml_collections.ConfigDict, model_cfg: ml_collections.ConfigDict,
                  n_runs: int, eval_tokens_per_run: int) -> dict[str, float]:
  """FLOPs and tokens of the whole sweep (training: 6N+attention per token; evaluation:
  a third of that per token)."""
  budget = interventions.budget_tokens(cfg)
  fpt = model_lib.flops_per_token(model_cfg)
  flops = n_runs * (fpt * budget + fpt / 3.0 * eval_tokens_per_run)
  return {"runs": n_runs, "tokens": float(n_runs * budget), "flops": float(flops),
          "flops_per_token": fpt, "budget_tokens_per_run": budget}


def run_sweep(cfg: ml_collections.ConfigDict, pool: token_pool_lib.TokenPool,
              design: dict[str, np.ndarray], meta: dict[str, Any], out_dir: pathlib.Path,
              *, vocab_size: int, mesh: jax.sharding.Mesh | None = None,
              metrics: Any = None) -> pathlib.Path:
  """Runs every design run not yet in a finished chunk and writes `runs.parquet`.

  `design` may hold `kept_end_SxM` (each state's quality filter, `TokenPool.kept_end`);
  without it every document of the pool is kept."""
  from causalmix_jax import runs as runs_lib  # pylint: disable=import-outside-toplevel
  out_dir = pathlib.Path(out_dir)
  chunks_dir = out_dir / "chunks"
  mesh = mesh or proxy_mesh()
  n_dev = mesh.size
  domains = list(meta["domains"])
  if tuple(domains) != tuple(pool.domains):
    raise ValueError(f"design domains {domains} differ from the pool's {list(pool.domains)}"
                     " (re-run --stage=design)")
  for d in domains:
    if d == "target":
      raise ValueError("a domain named 'target' would clash with the y_target outcome")
  n_runs = len(design["run_id_N"])
  chunk = int(cfg.sweep.chunk_size)
  if chunk < 1:
    raise ValueError(f"sweep.chunk_size={chunk} must be >= 1")
  padded = int(math.ceil(min(chunk, n_runs) / n_dev) * n_dev)
  n_chunks = int(math.ceil(n_runs / chunk))

  digest = _design_digest(cfg, design, meta)
  key_path = chunks_dir / "design_digest.json"
  if artifacts.is_writer():
    _remove_partial_writes(out_dir, chunks_dir)
    if key_path.exists():
      try:
        old = artifacts.read_json(key_path).get("digest")
      except (OSError, ValueError, AttributeError) as e:
        log.warning("sweep: %s is unreadable (%s); discarding old chunks in %s", key_path,
                    e, chunks_dir)
        old = None
      if old != digest:
        log.info("sweep: design or config changed; discarding old chunks in %s",
                 chunks_dir)
        for p in chunks_dir.glob("chunk_*.parquet"):
          p.unlink()
    with _writing(key_path):
      artifacts.write_json(key_path, {"digest": digest, "n_runs": n_runs,
                                      "chunk_size": chunk})

  model_cfg = proxy_model_config(cfg, vocab_size)
  params = model_lib.param_count(model_cfg)
  eval_tokens = int(pool.eval_mask_ExBxW[:, :, 1:].astype(bool).sum()
                    + pool.target_mask_ExBxW[:, :, 1:].astype(bool).sum())
  counted_D = np.bincount(pool.eval_domain_ExB.ravel(), minlength=len(domains),
                          weights=pool.eval_mask_ExBxW[:, :, 1:].astype(bool).sum(-1).ravel())
  heldout_domains = {d for d, c in zip(domains, counted_D) if c > 0}
  cost = estimate_cost(cfg, model_cfg, n_runs, eval_tokens)
  log.info("sweep: %d runs x %d tokens = %.3g tokens, %.3g FLOPs (proxy %d params, "
           "%.3g FLOPs/token), %d chunks of %d on %d devices", n_runs,
           cost["budget_tokens_per_run"], cost["tokens"], cost["flops"], params,
           cost["flops_per_token"], n_chunks, padded, n_dev)

  def chunk_path(i: int) -> pathlib.Path:
    return chunks_dir / f"chunk_{i:05d}.parquet"

  def chunk_ids(i: int) -> np.ndarray:
    return design["run_id_N"][i * chunk:(i + 1) * chunk].astype(str)

  finished: dict[int, pd.DataFrame] = {}  # chunk -> its rows, read back or computed
  # Process 0 (the only one that writes chunks) reads them back and decides what is
  # left to train; the other processes train what it says (below).
  existing = [i for i in range(n_chunks) if artifacts.is_writer() and chunk_path(i).exists()]
  if existing:
    # Columns and types every chunk has: a chunk_frame of one placeholder run.
    template = chunk_frame(np.arange(1), {
        "loss_T": np.zeros((1, 1), np.float32),
        "heldout_D": np.zeros((1, len(domains)), np.float32),
        "target": np.zeros(1, np.float32)}, design, meta, params=params,
        threshold=float(cfg.sweep.divergence_loss), heldout_domains=heldout_domains)
    for i in existing:
      frame = _read_chunk(chunk_path(i), chunk_ids(i), template)
      if frame is not None:
        finished[i] = frame

  done_C = sharding_lib.from_process_0(np.array([i in finished for i in range(n_chunks)]))
  todo = [i for i in range(n_chunks) if not done_C[i]]
  if len(todo) < n_chunks:
    log.info("sweep: %d of %d chunks already done, resuming", n_chunks - len(todo), n_chunks)

  if todo:
    repl = NamedSharding(mesh, P())
    runs_sh = NamedSharding(mesh, P(PROXY_AXIS))
    data = pool.device_arrays(repl)
    kept = design.get("kept_end_SxM")
    fn = make_sweep_fn(cfg, model_cfg, len(domains), mesh, filtered=kept is not None)
    n_tok = design["n_tokens_SxD"].astype(np.int32)
    dup = design["dup_rate_SxD"].astype(np.float32)

    def inputs(idx_pad: np.ndarray):
      s = design["state_N"][idx_pad]
      host = (design["seed_N"][idx_pad].astype(np.int32),
              design["w_NxD"][idx_pad].astype(np.float32), n_tok[s], dup[s])
      if kept is not None:
        host += (kept[s].astype(np.int32),)
      return tuple(sharding_lib.from_replicated_host(np.ascontiguousarray(a), runs_sh)
                   for a in host)

    def padded_idx(i: int) -> np.ndarray:
      idx = np.arange(i * chunk, min((i + 1) * chunk, n_runs))
      return idx, np.concatenate([idx, np.full(padded - len(idx), idx[-1])])

    t0 = time.time()
    compiled = fn.lower(data, *inputs(padded_idx(todo[0])[1])).compile()
    log.info("sweep: compiled in %.1fs", time.time() - t0)
    bar = None
    if cfg.sweep.progress and artifacts.is_writer():
      from tqdm import tqdm  # pylint: disable=import-outside-toplevel
      bar = tqdm(total=n_runs, initial=n_runs - sum(
          min((i + 1) * chunk, n_runs) - i * chunk for i in todo), unit="run",
          desc="sweep", dynamic_ncols=True)
    t_start = time.time()
    trained = 0
    for k, i in enumerate(todo):
      idx, idx_pad = padded_idx(i)
      t1 = time.time()
      out = compiled(data, *inputs(idx_pad))
      out = _to_host(jax.block_until_ready(out))
      dt = time.time() - t1
      frame = chunk_frame(idx, out, design, meta, params=params,
                          threshold=float(cfg.sweep.divergence_loss),
                          heldout_domains=heldout_domains)
      if artifacts.is_writer():
        _write_parquet(frame, chunk_path(i))
      finished[i] = frame
      trained += len(idx)
      tok_s = len(idx) * cost["budget_tokens_per_run"] / max(dt, 1e-9)
      n_div = int((frame["status"] != "ok").sum())
      if k == 0:
        eta = dt * (len(todo) - 1)
        log.info("sweep: first chunk %.1fs (%.3g tokens/s, %.3g FLOP/s); estimated %.0fs "
                 "for the remaining %d chunks", dt, tok_s,
                 tok_s * cost["flops_per_token"], eta, len(todo) - 1)
      if metrics is not None:
        metrics.write(step=i, chunk_seconds=dt, tokens_per_s=tok_s, runs=len(idx),
                      diverged=n_div)
      if bar is not None:
        bar.update(len(idx))
        bar.set_postfix(tok_s=f"{tok_s:.3g}", diverged=n_div)
    if bar is not None:
      bar.close()
    total = time.time() - t_start
    log.info("sweep: trained %d runs in %.1fs (%.3g tokens/s)", trained, total,
             trained * cost["budget_tokens_per_run"] / max(total, 1e-9))

  out_path = out_dir / "runs.parquet"
  if artifacts.is_writer():
    frame = pd.concat([finished[i] for i in range(n_chunks)], ignore_index=True)
    ids = frame["run_id"].to_numpy().astype(str)
    expected = design["run_id_N"].astype(str)
    if len(ids) != len(expected) or not np.array_equal(np.sort(ids), np.sort(expected)):
      raise RuntimeError(f"sweep: chunks in {chunks_dir} do not hold every run exactly "
                         f"once ({len(ids)} rows for {len(expected)} runs)")
    runs = runs_lib.Runs(frame, source=str(out_path), meta={
        "domains": domains, "design_digest": digest, "cost": cost})
    runs_lib.write_runs(runs, out_path)
    n_div = int((frame["status"] != "ok").sum())
    log.info("sweep: wrote %s (%d runs, %d diverged)", out_path, len(frame), n_div)
    if metrics is not None:
      metrics.write(runs=len(frame), diverged=n_div, **{f"cost_{k}": v
                                                         for k, v in cost.items()})
  return out_path
