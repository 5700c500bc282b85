"""Session-wide test setup: one persistent XLA compilation cache per test session, and
one smoke study that the pipeline-level tests share.

Most of the suite's time is XLA compilation, and several tests build the same program
again (a fresh `jax.jit` of an identical step function, the same tiny model in another
module, or the same sweep in a child process). The cache lives in a fresh directory of
this session (shared by pytest-xdist workers; the cache's file lock makes that safe), so
nothing leaks between sessions; tests that start child processes add the `xla_cache_env`
fixture's variables to the child's environment.

The smoke study (`smoke_study`) is the quickstart's tiny config run through every stage
by one `launch/main.py` invocation. Several tests need such a study (the end-to-end
test, the validate stage's kill-and-resume reference, the notebook); it is built once
per session, by the first worker that asks, under a file lock, and the tests that run
stages on it work on copies. Its users are one xdist group ("smoke_study"), so one
worker builds it and runs them while the other goes on with the rest.
"""

from __future__ import annotations

import fcntl
import json
import os
import pathlib
import subprocess
import sys

import jax
import pytest

# Eviction enabled (any positive size) makes the cache take a file lock around each read
# and write, so concurrent workers never see a half-written entry.
_MAX_CACHE_BYTES = 4 << 30

ROOT = pathlib.Path(__file__).resolve().parents[1]
SMOKE_CONFIG = "experiments/quickstart/config.py:smoke"
SMOKE_TIMEOUT_S = 900


def _session_dir(config: pytest.Config) -> pathlib.Path:
  """A directory of this test session that every xdist worker shares."""
  factory = config._tmp_path_factory  # pylint: disable=protected-access
  base = factory.getbasetemp()
  # Under xdist each worker's base is <session>/popen-gwN; the session dir is shared.
  return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def _cache_dir(config: pytest.Config) -> pathlib.Path:
  path = _session_dir(config) / "xla_cache"
  path.mkdir(parents=True, exist_ok=True)
  return path


_CACHE_ENV: dict[str, str] = {}


@pytest.hookimpl(trylast=True)  # after the tmp_path plugin has set up the base temp
def pytest_configure(config: pytest.Config) -> None:
  path = str(_cache_dir(config))
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  jax.config.update("jax_compilation_cache_max_size", _MAX_CACHE_BYTES)
  _CACHE_ENV.update({
      "JAX_COMPILATION_CACHE_DIR": path,
      "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
      "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
      "JAX_COMPILATION_CACHE_MAX_SIZE": str(_MAX_CACHE_BYTES)})


@pytest.fixture(scope="session")
def xla_cache_env() -> dict[str, str]:
  """Environment variables that point a child process's jax at this session's cache."""
  return dict(_CACHE_ENV)


@pytest.fixture(scope="session")
def smoke_study(request: pytest.FixtureRequest,
                xla_cache_env: dict[str, str]) -> pathlib.Path:
  """The workdir of the smoke study, every stage run by one `launch/main.py` invocation
  on one device. Built once per session (the first worker to ask builds it under a file
  lock; the others wait for it). Read-only: a test that runs stages copies it first."""
  root = _session_dir(request.config)
  workdir = root / "smoke_study"
  record = root / "smoke_study.json"  # the build's exit code and log tail, once done
  with open(root / "smoke_study.lock", "w", encoding="utf-8") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
    if not record.exists():
      env = {**os.environ, **xla_cache_env,
             "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
      proc = subprocess.run(
          [sys.executable, "launch/main.py", f"--config={SMOKE_CONFIG}",
           f"--workdir={workdir}", "--stage=all"],
          cwd=ROOT, capture_output=True, text=True, timeout=SMOKE_TIMEOUT_S, env=env)
      record.write_text(json.dumps({"returncode": proc.returncode,
                                    "stderr": proc.stderr[-5000:]}))
  done = json.loads(record.read_text())
  assert done["returncode"] == 0, f"the smoke study failed:\n{done['stderr']}"
  return workdir
