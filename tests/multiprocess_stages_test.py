"""The sweep and validate stages as 2 real JAX processes on localhost (one fake CPU device
each, joined by jax.distributed, through launch/local_processes.py) give the runs tables
of 1 process: the sweep's losses within LOSS_RTOL, everything else exactly; from the same
runs, the surface, recommendation and validation table of 1 process. A process that
fails, before or after joining the job, stops it within seconds, named by the launcher.

The file is also the tiny study's config (`--config=tests/multiprocess_stages_test.py`):
the smoke config on the three-domain fixture pool, validating the recommendation beside
uniform with two seeds.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

# Its module-level fixtures and caches are built once: one xdist worker runs it all.
pytestmark = pytest.mark.xdist_group("multiprocess_stages")

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = "tests/multiprocess_stages_test.py"
N_PROCESSES = 2
TIMEOUT_S = 180
# A failed job must stop well before a hang would end (JAX's 300 s timeouts).
STOP_S = 120
# Messages of a jax build without multi-process CPU support (then the test is skipped).
UNSUPPORTED = ("Multiprocess computations aren't implemented",
               "not implemented on the CPU backend", "cpu_collectives")
# Columns compared with a tolerance: losses. With 2 devices XLA compiles the sharded
# program for 2 runs per device instead of 4 on one, which can move a loss by an ulp
# (one process with 2 fake devices gives the 2-process losses bit for bit).
LOSS_RTOL = 1e-5


def get_config(arg: str | None = None):
  """The tiny study both jobs run (a config file for launch/main.py)."""
  del arg
  from tests import fixture_pool  # pylint: disable=import-outside-toplevel
  cfg = fixture_pool.smoke_config()
  cfg.validate.mixtures = ("recommended", "uniform")
  cfg.validate.seeds = 2
  cfg.sweep.progress = False
  return cfg


def _launcher():
  spec = importlib.util.spec_from_file_location(
      "local_processes", ROOT / "launch" / "local_processes.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


local_processes = _launcher()


def _stages(first: str, last: str) -> str:
  from causalmix_jax import pipeline  # pylint: disable=import-outside-toplevel
  order = list(pipeline.ORDER)
  return ",".join(order[order.index(first):order.index(last) + 1])


def _env(cache_env: dict[str, str]) -> dict[str, str]:
  return local_processes.cpu_env(1, {**os.environ, **cache_env})


def _copy(src: pathlib.Path, dst: pathlib.Path, skip: tuple[str, ...]) -> pathlib.Path:
  shutil.copytree(src, dst, ignore=lambda d, names: [n for n in names if n in skip]
                  if pathlib.Path(d) == src else [])
  return dst


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, xla_cache_env) -> pathlib.Path:
  """The study from the pool to validate, run by one process."""
  workdir = tmp_path_factory.mktemp("one_process")
  proc = subprocess.run(
      [sys.executable, str(local_processes.MAIN), f"--config={CONFIG}",
       f"--workdir={workdir}", f"--stage={_stages('pool', 'validate')}"],
      cwd=ROOT, env=_env(xla_cache_env), capture_output=True, text=True, timeout=TIMEOUT_S)
  assert proc.returncode == 0, proc.stderr[-5000:]
  return workdir


def _two_processes(workdir: pathlib.Path, stages: str, cache_env: dict[str, str],
                   capfd: pytest.CaptureFixture[str],
                   extra: tuple[tuple[str, ...], ...] = ((), ())) -> tuple[int, str]:
  """Runs `stages` in `workdir` as 2 processes (process i gets `extra[i]` too): (exit
  code, output). Skips when this jax build cannot run CPU collectives across processes."""
  args = [f"--config={CONFIG}", f"--workdir={workdir}", f"--stage={stages}"]
  commands = local_processes.main_commands(N_PROCESSES, local_processes.free_port(), args)
  commands = [c + list(e) for c, e in zip(commands, extra)]
  code = local_processes.run(commands, env=_env(cache_env), cwd=ROOT, timeout_s=TIMEOUT_S)
  captured = capfd.readouterr()
  text = captured.out + captured.err
  if code != 0 and any(u in text for u in UNSUPPORTED):
    pytest.skip(f"this jax build lacks multi-process CPU collectives: {text[-300:]}")
  return code, text


def _assert_same_runs(one: pd.DataFrame, two: pd.DataFrame) -> None:
  assert list(two.columns) == list(one.columns)
  assert list(two["run_id"]) == list(one["run_id"])
  for col in one.columns:
    if col.startswith("y_") or col == "train_loss_final":
      np.testing.assert_allclose(two[col], one[col], rtol=LOSS_RTOL, err_msg=col)
    else:  # ids, seeds, weights, covariates, tokens, status, mixture names: exactly
      pd.testing.assert_series_equal(two[col], one[col], check_exact=True)


def test_two_processes_give_the_runs_tables_of_one(one_process, tmp_path, xla_cache_env,
                                                  capfd):
  # The sweep, from the one-process job's pool and design.
  sweep_dir = _copy(one_process, tmp_path / "sweep", ("sweep", "surface", "optimise",
                                                      "validate"))
  code, out = _two_processes(sweep_dir, "sweep", xla_cache_env, capfd)
  assert code == 0, out[-5000:]
  one = pd.read_parquet(one_process / "sweep" / "runs.parquet")
  _assert_same_runs(one, pd.read_parquet(sweep_dir / "sweep" / "runs.parquet"))

  # The surface, the recommendation (process 0 alone) and validate, from the same runs.
  validate_dir = _copy(one_process, tmp_path / "validate", ("surface", "optimise",
                                                            "validate"))
  code, out = _two_processes(validate_dir, _stages("fit", "validate"), xla_cache_env, capfd)
  assert code == 0, out[-5000:]
  assert "[p1]" in out and "stage fit: running" not in "".join(
      line for line in out.splitlines(keepends=True) if line.startswith("[p1]"))
  mixture = "optimise/mixture.json"
  assert (json.loads((validate_dir / mixture).read_text())["weights"]
          == json.loads((one_process / mixture).read_text())["weights"])
  results = "validate/results.parquet"
  _assert_same_runs(pd.read_parquet(one_process / results),
                    pd.read_parquet(validate_dir / results))


@pytest.mark.parametrize("bad, says", [
    # Fails in the sweep stage, after joining the job: process 0 waits for it there.
    ("--config.sweep.chunk_size=0", "sweep.chunk_size=0 must be >= 1"),
    # Fails before joining (a mistyped override): process 0 waits for it in
    # jax.distributed.initialize.
    ("--config.sweep.chunk_sizes=8", "did you mean --config.sweep.chunk_size?"),
], ids=["in_stage", "at_start"])
def test_failed_process_stops_the_job_and_is_named(bad, says, one_process, tmp_path,
                                                   xla_cache_env, capfd):
  workdir = _copy(one_process, tmp_path / "w", ("sweep", "surface", "optimise",
                                                "validate"))
  t0 = time.time()
  code, out = _two_processes(workdir, "sweep", xla_cache_env, capfd, extra=((), (bad,)))
  assert code not in (0, local_processes.TIMEOUT_EXIT_CODE), code
  # Starting two JAX processes on a loaded 2-core machine can take most of a minute.
  assert time.time() - t0 < STOP_S, f"the job took {time.time() - t0:.0f}s to stop"
  assert f"process 1 of {N_PROCESSES} (pid " in out, out[-3000:]
  assert "stopping the others" in out, out[-3000:]
  assert says in out, out[-3000:]
  assert not (workdir / "sweep" / "runs.parquet").exists()
