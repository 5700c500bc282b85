"""Session-wide test setup: one persistent XLA compilation cache per test session.

Most of the suite's time is XLA compilation, and several tests build the same program
again (a fresh `jax.jit` of an identical step function, the same tiny model in another
module, or the same sweep in a child process). The cache lives in a fresh directory of
this session (shared by pytest-xdist workers; the cache's file lock makes that safe), so
nothing leaks between sessions; tests that start child processes add the `xla_cache_env`
fixture's variables to the child's environment.
"""

from __future__ import annotations

import os
import pathlib

import jax
import pytest

# Eviction enabled (any positive size) makes the cache take a file lock around each read
# and write, so concurrent workers never see a half-written entry.
_MAX_CACHE_BYTES = 4 << 30


def _cache_dir(config: pytest.Config) -> pathlib.Path:
  factory = config._tmp_path_factory  # pylint: disable=protected-access
  base = factory.getbasetemp()
  # Under xdist each worker's base is <session>/popen-gwN; the session dir is shared.
  root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
  path = root / "xla_cache"
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
