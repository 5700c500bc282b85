"""Benchmark: the vmapped proxy sweep vs the same proxies one after another vs one process
per proxy, for several sweep sizes P and two proxy sizes, plus achieved FLOP/s against
the best jnp.dot FLOP/s on this machine. Prints ratios, then one JSON line.

  python benchmarks/bench_sweep.py                       # defaults: a few minutes on CPU
  python benchmarks/bench_sweep.py --P=8,32,128 --steps=100 --proc_subset=8

(a) and (b) are timed in `--rounds` interleaved rounds (best of each kept); (b) on
`--seq_subset` proxies scaled to P. `--vmap_width=P` gives the plain vmap of every proxy at once.
(c) starts `--proc_subset` real processes (start, import, compile, train, write) and
extrapolates linearly to P, saying so in the output.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from causalmix_jax import model as model_lib  # noqa: E402
from causalmix_jax import sweep  # noqa: E402
from causalmix_jax.configs import base  # noqa: E402
from causalmix_jax.data import pool as pool_lib  # noqa: E402
from causalmix_jax.data import token_pool  # noqa: E402

flags.DEFINE_string("P", "8,32,128", "sweep sizes, comma-separated")
flags.DEFINE_string("presets", "tiny,proxy", "proxy model presets, comma-separated")
flags.DEFINE_integer("steps", 10, "train steps per proxy")
flags.DEFINE_integer("batch", 8, "sequences per step")
flags.DEFINE_integer("seq", 64, "tokens per sequence")
flags.DEFINE_integer("proc_subset", 1, "(c) real processes started, extrapolated to P")
flags.DEFINE_bool("skip_processes", False, "skip (c), one process per proxy")
flags.DEFINE_integer("seq_subset", 8, "(b) is timed on this many proxies and scaled to P")
flags.DEFINE_integer("rounds", 4,
                     "interleaved timings of (a) and (b); the best of each is kept")
flags.DEFINE_integer("vmap_width", 0,
                     "proxies in lockstep (sweep.vmap_width; 0 = platform default)")
FLAGS = flags.FLAGS


def make_cfg(preset: str, steps: int, batch: int, seq_len: int):
  from causalmix_jax.configs import model as model_cfg_lib
  cfg = base.get_config("")
  cfg.unlock()
  m = model_cfg_lib.model_preset(preset)
  for k, v in m.items():
    cfg.proxy.model[k] = v
  cfg.proxy.model.seq_len = seq_len
  cfg.proxy.optim.steps = steps
  cfg.proxy.optim.batch_size = batch
  cfg.sweep.eval_batches = 1
  return cfg


def make_pool(seed: int = 0):
  rng = np.random.default_rng(seed)
  docs = {d: ["".join(rng.choice(list(alpha), 300)) for _ in range(60)]
          for d, alpha in (("a", "abcdefgh "), ("b", "0123456789"), ("c", "{}();=xyz"))}
  pool = pool_lib.from_documents(docs, docs["a"][:4])
  import dataclasses
  return dataclasses.replace(pool, heldout={d: v[:2000] for d, v in pool.train.items()},
                             heldout_mask={d: v[:2000] for d, v in pool.train_mask.items()})


def inputs(p: int, n_dom: int, lengths):
  rng = np.random.default_rng(1)
  return (np.arange(p, dtype=np.int32) % 4, rng.dirichlet(np.ones(n_dom), p).astype(np.float32),
          np.tile(np.asarray(lengths, np.int32), (p, 1)), np.zeros((p, n_dom), np.float32))


def best_matmul_flops(sizes: tuple[int, ...] = (512, 1024, 2048), reps: int = 10) -> float:
  """Best square jnp.dot FLOP/s over `sizes` (best single timing of `reps` each)."""
  best = 0.0
  for size in sizes:
    a = jnp.ones((size, size), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    for _ in range(reps):
      t = time.perf_counter()
      f(a).block_until_ready()
      best = max(best, 2 * size ** 3 / (time.perf_counter() - t))
  return best


def proxy_matmul_flops(rows: int, d_model: int, d_ff: int, width: int,
                       reps: int = 10) -> dict[str, float]:
  """FLOP/s of the proxy's own largest matmul shape ([rows, d_model] @ [d_model, d_ff],
  rows = batch x seq_len) alone: as one 2-D dot, and batched over `width` proxies with
  their own weights (what a vmapped step runs). The ceiling a proxy step can reach."""
  out = {}
  for name, p in (("single", 1), ("batched", max(width, 2))):
    x = jnp.ones((p, rows, d_model), jnp.float32)
    w = jnp.ones((p, d_model, d_ff), jnp.float32)
    f = jax.jit(lambda x, w: jnp.einsum("pmk,pkn->pmn", x, w))
    f(x, w).block_until_ready()
    best = float("inf")
    for _ in range(reps):
      t = time.perf_counter()
      f(x, w).block_until_ready()
      best = min(best, time.perf_counter() - t)
    out[name] = 2 * p * rows * d_model * d_ff / best
  return out


CHILD = r"""
import sys, time, json, pathlib
sys.path.insert(0, {root!r})
sys.argv = ["x"]
import numpy as np, jax
import benchmarks.bench_sweep as b
from causalmix_jax import sweep
from causalmix_jax.data import token_pool
cfg = b.make_cfg({preset!r}, {steps}, {batch}, {seq})
pool = b.make_pool()
tp = token_pool.from_pool(pool, seq_len={seq}, eval_batch_size={batch}, eval_batches=1)
train = jax.jit(sweep.make_train(cfg, tp, vocab_size=pool.vocab_size))
s, w, n, r = b.inputs(1, 3, tp.lengths_D)
out = jax.device_get(train(sweep.run_key(0, s[0]), w[0], n[0], r[0]))
pathlib.Path({out!r}).write_text(json.dumps({{"target": float(out["target"])}}))
"""


def bench(preset: str, ps: list[int], steps: int, batch: int, seq: int, proc_subset: int,
          skip_proc: bool, seq_subset: int, vmap_width: int, rounds: int) -> list[dict]:
  cfg = make_cfg(preset, steps, batch, seq)
  cfg.sweep.vmap_width = vmap_width
  pool = make_pool()
  tp = token_pool.from_pool(pool, seq_len=seq, eval_batch_size=batch, eval_batches=1)
  model_cfg = sweep.proxy_model_config(cfg, pool.vocab_size)
  fpt = model_lib.flops_per_token(model_cfg)
  tokens_per_proxy = steps * batch * seq
  mesh = sweep.proxy_mesh()
  data = tp.device_arrays()
  rows = []
  # (b) sequential: one program for one proxy, compiled once, called once per proxy, on
  # up to `seq_subset` proxies and scaled to P.
  train_one = jax.jit(sweep.make_train(cfg, tp, vocab_size=pool.vocab_size))
  s, w, n, r = inputs(1, 3, tp.lengths_D)
  jax.block_until_ready(train_one(sweep.run_key(0, 0), w[0], n[0], r[0]))

  def per_sequential(k: int) -> float:
    t = time.perf_counter()
    for i in range(k):
      jax.block_until_ready(train_one(sweep.run_key(0, i), w[0], n[0], r[0]))
    return (time.perf_counter() - t) / k

  # (c) one process per proxy, measured on a subset.
  per_proc = float("nan")
  if not skip_proc:
    with tempfile.TemporaryDirectory() as tmp:
      t = time.perf_counter()
      for i in range(proc_subset):
        code = CHILD.format(root=str(ROOT), preset=preset, steps=steps, batch=batch, seq=seq,
                            out=os.path.join(tmp, f"{i}.json"))
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                       env={**os.environ, "XLA_FLAGS": ""})
      per_proc = (time.perf_counter() - t) / proc_subset
  for p in ps:
    fn = sweep.make_sweep_fn(cfg, model_cfg, 3, mesh)
    pad = int(np.ceil(p / mesh.size) * mesh.size)
    args = [jnp.asarray(a) for a in inputs(pad, 3, tp.lengths_D)]
    t = time.perf_counter()
    compiled = fn.lower(data, *args).compile()
    compile_s = time.perf_counter() - t
    jax.block_until_ready(compiled(data, *args))  # warm
    # (a) and (b) in interleaved rounds, best of each: load on a shared machine hits both.
    vmapped, sequential = float("inf"), float("inf")
    for _ in range(rounds):
      t = time.perf_counter()
      jax.block_until_ready(compiled(data, *args))
      vmapped = min(vmapped, time.perf_counter() - t)
      sequential = min(sequential, per_sequential(min(p, seq_subset)) * p)
    width = sweep.group_width(cfg, pad, mesh.size)
    procs = per_proc * p
    flops = fpt * tokens_per_proxy * p
    ceiling = proxy_matmul_flops(batch * seq, int(model_cfg.d_model), int(model_cfg.d_ff),
                                 width)
    rows.append({"preset": preset, "params": model_lib.param_count(model_cfg), "P": p,
                 "vmap_width": width,
                 "tokens_per_proxy": tokens_per_proxy, "vmapped_s": vmapped,
                 "vmapped_compile_s": compile_s, "sequential_s": sequential,
                 "processes_s": procs,
                 "processes_extrapolated_from": proc_subset if not skip_proc else 0,
                 "speedup_vs_sequential": sequential / vmapped,
                 "speedup_vs_processes": procs / vmapped,
                 "vmapped_flops_per_s": flops / vmapped,
                 "proxy_matmul_flops_per_s": ceiling["single"],
                 "proxy_matmul_batched_flops_per_s": ceiling["batched"],
                 "sequential_flops_per_s": flops / sequential})
    print(f"{preset:>6} P={p:4d}: vmapped {vmapped:7.2f}s (compile {compile_s:5.1f}s), "
          f"sequential {sequential:7.2f}s ({sequential / vmapped:4.2f}x), processes "
          f"{procs:7.1f}s ({procs / vmapped:5.1f}x, extrapolated from {proc_subset}), "
          f"{flops / vmapped / 1e9:6.2f} GFLOP/s (width {width})", flush=True)
  return rows


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  a = FLAGS
  ps = [int(x) for x in a.P.split(",")]
  dot = best_matmul_flops()
  print(f"best jnp.dot: {dot / 1e9:.2f} GFLOP/s on {jax.device_count()} "
        f"{jax.devices()[0].platform} device(s)", flush=True)
  rows = []
  for preset in a.presets.split(","):
    rows += bench(preset, ps, a.steps, a.batch, a.seq, a.proc_subset, a.skip_processes,
                  a.seq_subset, a.vmap_width, a.rounds)
  for r in rows:
    r["fraction_of_matmul"] = r["vmapped_flops_per_s"] / dot
    r["proxy_matmul_fraction_of_matmul"] = r["proxy_matmul_flops_per_s"] / dot
    r["proxy_matmul_batched_fraction_of_matmul"] = r["proxy_matmul_batched_flops_per_s"] / dot
    print(f"{r['preset']:>6} P={r['P']:4d}: step {r['fraction_of_matmul']:.2f} of the best "
          f"jnp.dot; its own largest matmul alone reaches "
          f"{r['proxy_matmul_fraction_of_matmul']:.2f} (2-D) / "
          f"{r['proxy_matmul_batched_fraction_of_matmul']:.2f} (batched over the width)")
  print(json.dumps({"matmul_flops_per_s": dot, "device": jax.devices()[0].platform,
                    "n_devices": jax.device_count(), "steps": a.steps, "batch": a.batch,
                    "seq_len": a.seq, "rows": rows}))


if __name__ == "__main__":
  app.run(main)
