"""Kill-and-resume: SIGKILL the sweep process after its first chunk lands and before the
next one, run it again, and check the runs table holds every run exactly once with the
values of an uninterrupted sweep."""

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
# Set in the child that is to be killed: it stops before it writes its second chunk, so
# the kill lands mid-sweep (after the first chunk file, before the last) on every run.
HOLD_ENV = "CAUSALMIX_SWEEP_HOLD_AFTER_FIRST_CHUNK"


def _child(out_dir: str) -> None:
  """The sweep process: the small synthetic world of sweep_test, 16 runs in 3 chunks."""
  import logging  # pylint: disable=import-outside-toplevel
  logging.basicConfig(level=logging.INFO)
  sys.path.insert(0, str(HERE))
  import sweep_test  # pylint: disable=import-outside-toplevel
  from causalmix_jax import sweep  # pylint: disable=import-outside-toplevel
  from causalmix_jax.data import token_pool  # pylint: disable=import-outside-toplevel
  if os.environ.get(HOLD_ENV):
    frame_fn, calls = sweep.chunk_frame, []

    def held_chunk_frame(*args, **kwargs):
      calls.append(1)
      if len(calls) == 2:  # the first chunk has been written; wait for the SIGKILL
        time.sleep(600)
      return frame_fn(*args, **kwargs)

    sweep.chunk_frame = held_chunk_frame
  # Same config and 4 devices as sweep_test's sharded sweep: the same compiled program.
  cfg = sweep_test.make_cfg()
  pool = sweep_test.make_pool()
  tp = token_pool.from_pool(pool, seq_len=16, eval_batch_size=4, eval_batches=1)
  design, meta = sweep_test.make_design(cfg, pool)
  sweep.run_sweep(cfg, tp, design, meta, pathlib.Path(out_dir),
                  vocab_size=pool.vocab_size)


def _spawn(out_dir: pathlib.Path, cache_env: dict[str, str],
           hold: bool = False) -> subprocess.Popen:
  env = dict(os.environ, **cache_env)
  env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
  env.pop(HOLD_ENV, None)
  if hold:
    env[HOLD_ENV] = "1"
  return subprocess.Popen([sys.executable, __file__, str(out_dir)], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_sweep_survives_sigkill_and_resumes(tmp_path, xla_cache_env):
  killed, clean = tmp_path / "killed", tmp_path / "clean"
  proc = _spawn(killed, xla_cache_env, hold=True)
  first = killed / "chunks" / "chunk_00000.parquet"
  deadline = time.time() + 300
  try:
    while not first.exists():
      assert proc.poll() is None, f"sweep exited early:\n{proc.stdout.read()}"
      assert time.time() < deadline, "no chunk written within 300 s"
      time.sleep(0.02)
  finally:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
  done_at_kill = sorted(p.name for p in (killed / "chunks").glob("chunk_*.parquet"))
  assert done_at_kill == ["chunk_00000.parquet"], done_at_kill  # killed mid-sweep
  assert not (killed / "runs.parquet").exists()
  # No half-written chunk files are visible under the final name.
  for name in done_at_kill:
    pd.read_parquet(killed / "chunks" / name)

  resumed = _spawn(killed, xla_cache_env)
  log = resumed.communicate(timeout=600)[0]
  assert resumed.returncode == 0, log
  assert "1 of 3 chunks already done, resuming" in log

  ref = _spawn(clean, xla_cache_env)
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
