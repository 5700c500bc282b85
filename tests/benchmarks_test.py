"""The throughput scripts in benchmarks/ import and define their absl flags without
running, and the regmix_pile study's config loads in both variants."""

from __future__ import annotations

import contextlib
import importlib.util
import pathlib
import subprocess
import sys
from typing import Iterator

import pytest
from absl import flags

REPO = pathlib.Path(__file__).resolve().parents[1]

# Each script's flags (the names of its former argparse arguments).
BENCHMARK_FLAGS = {
    "bench_data": ("batches", "batch_size", "seq_len", "max_tokens_per_domain"),
    "bench_optimise": ("surface", "regmix_dir", "outcome", "n_mc", "top_k", "repeats",
                       "pools", "planted_domains", "planted_runs", "skip_planted",
                       "regmix_method", "planted_method"),
    "bench_surface": ("regmix_dir", "outcome", "folds", "planted_runs", "planted_pools",
                      "test_pools", "candidates", "seed", "planted_worlds", "ours_surface"),
    "bench_sweep": ("P", "presets", "steps", "batch", "seq", "proc_subset",
                    "skip_processes", "seq_subset", "rounds", "vmap_width"),
    "bench_train": ("proxy", "proxy_batch", "target", "batch", "seq_len", "dtype", "remat",
                    "steps", "repeats", "matmul_sizes"),
}


@contextlib.contextmanager
def _own_flags(names: tuple[str, ...]) -> Iterator[None]:
  """Lends the global FLAGS the names for the duration: flags of those names defined
  elsewhere are set aside and restored, the ones defined inside are removed after, so
  scripts sharing flag names can be imported one after another."""
  saved = {n: flags.FLAGS[n] for n in names if n in flags.FLAGS}
  for n in saved:
    delattr(flags.FLAGS, n)
  try:
    yield
  finally:
    for n in names:
      if n in flags.FLAGS:
        delattr(flags.FLAGS, n)
    for n, flag in saved.items():
      flags.FLAGS[n] = flag


def _load(path: pathlib.Path, name: str):
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize("script", sorted(BENCHMARK_FLAGS))
def test_benchmark_defines_its_flags(script):
  names = BENCHMARK_FLAGS[script]
  with _own_flags(names):
    module = _load(REPO / "benchmarks" / f"{script}.py", f"_benchmarks_test_{script}")
    assert callable(module.main)
    missing = [n for n in names if n not in flags.FLAGS]
    assert not missing, f"{script} does not define --{', --'.join(missing)}"


def test_bench_surface_names_a_bad_surface_setting_before_fitting():
  proc = subprocess.run(
      [sys.executable, "benchmarks/bench_surface.py", "--planted_worlds=0",
       "--ours_surface=stack_members=dml+nope"],
      cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode != 0
  out = proc.stdout + proc.stderr
  assert "--ours_surface='stack_members=dml+nope'" in out
  assert "unknown member 'nope'" in out
  assert "5-fold Spearman" not in out  # nothing was fitted


def test_regmix_pile_config_variants():
  config = _load(REPO / "experiments" / "regmix_pile" / "config.py",
                 "_benchmarks_test_regmix_pile_config")
  full, smoke = config.get_config(), config.get_config("smoke")
  assert full.max_runs == 0 and full.regmix_dir == ""
  assert 0 < smoke.max_runs < 512 and smoke.fit_repeats >= 1
  with pytest.raises(ValueError, match="unknown config variant"):
    config.get_config("nope")
