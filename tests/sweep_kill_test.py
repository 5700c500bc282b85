"""Kill-and-resume: SIGKILL the sweep process after its first chunk lands, run it again,
and check the runs table holds every run exactly once with the values of an
uninterrupted sweep."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent


def _child(out_dir: str) -> None:
  """The sweep process: a small synthetic world, chunks of 2 runs."""
  import logging  # pylint: disable=import-outside-toplevel
  logging.basicConfig(level=logging.INFO)
  sys.path.insert(0, str(HERE))
  import sweep_test  # pylint: disable=import-outside-toplevel
  from causalmix_jax import sweep  # pylint: disable=import-outside-toplevel
  from causalmix_jax.data import token_pool  # pylint: disable=import-outside-toplevel
  cfg = sweep_test.make_cfg(chunk_size=2)
  cfg.proxy.optim.steps = 40
  pool = sweep_test.make_pool()
  tp = token_pool.from_pool(pool, seq_len=16, eval_batch_size=4, eval_batches=1)
  design, meta = sweep_test.make_design(cfg, pool)
  sweep.run_sweep(cfg, tp, design, meta, pathlib.Path(out_dir),
                  vocab_size=pool.vocab_size)


def _spawn(out_dir: pathlib.Path, cache: pathlib.Path) -> subprocess.Popen:
  env = dict(os.environ)
  env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
  env["JAX_COMPILATION_CACHE_DIR"] = str(cache)
  env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
  return subprocess.Popen([sys.executable, __file__, str(out_dir)], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_sweep_survives_sigkill_and_resumes(tmp_path):
  cache = tmp_path / "xla_cache"
  killed, clean = tmp_path / "killed", tmp_path / "clean"
  proc = _spawn(killed, cache)
  first = killed / "chunks" / "chunk_00000.parquet"
  deadline = time.time() + 300
  while not first.exists():
    assert proc.poll() is None, f"sweep exited early:\n{proc.stdout.read()}"
    assert time.time() < deadline, "no chunk written within 300 s"
    time.sleep(0.02)
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  done_at_kill = sorted(p.name for p in (killed / "chunks").glob("chunk_*.parquet"))
  assert len(done_at_kill) < 8, "the sweep finished before it could be killed"
  assert not (killed / "runs.parquet").exists()
  # No half-written chunk files are visible under the final name.
  for name in done_at_kill:
    pd.read_parquet(killed / "chunks" / name)

  resumed = _spawn(killed, cache)
  log = resumed.communicate(timeout=600)[0]
  assert resumed.returncode == 0, log
  assert "already done, resuming" in log

  ref = _spawn(clean, cache)
  ref_log = ref.communicate(timeout=600)[0]
  assert ref.returncode == 0, ref_log

  got = pd.read_parquet(killed / "runs.parquet")
  want = pd.read_parquet(clean / "runs.parquet")
  assert len(got) == 16 and got["run_id"].is_unique
  assert sorted(got["run_id"]) == sorted(want["run_id"])
  got = got.set_index("run_id").loc[want["run_id"]]
  for col in [c for c in want.columns if c.startswith(("y_", "w_"))] + ["train_loss_final"]:
    np.testing.assert_allclose(got[col].to_numpy(), want[col].to_numpy(), rtol=0,
                               atol=1e-6, err_msg=col)
  assert (got["status"].to_numpy() == want["status"].to_numpy()).all()
  csv = pd.read_csv(killed / "runs.csv")
  assert len(csv) == 16 and csv["run_id"].is_unique


if __name__ == "__main__":
  _child(sys.argv[1])
