"""Tests for the config system: variants, locking, overrides and the experiment file."""

import subprocess
import sys
import pathlib

import pytest

from causalmix_jax.configs import base

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_variants_change_sizes():
  full = base.get_config("")
  smoke = base.get_config("smoke")
  assert smoke.proxy.optim.steps < full.proxy.optim.steps
  assert smoke.design.n_mixtures < full.design.n_mixtures


def test_unknown_variant_is_an_error():
  with pytest.raises(ValueError, match="nosuch"):
    base.get_config("nosuch")


def test_config_is_locked():
  cfg = base.get_config("smoke")
  with pytest.raises(AttributeError):
    cfg.surface.no_such_key = 1
  cfg.surface.method = "gp"  # existing keys can change
  assert cfg.surface.method == "gp"


def test_experiment_docstring_starts_with_its_command():
  from experiments.quickstart import config as qs  # pylint: disable=import-outside-toplevel
  assert qs.__doc__.splitlines()[0].startswith("python launch/main.py --config=")
  cfg = qs.get_config("smoke")
  assert "smoke" in cfg.variants and "cpu" in cfg.variants


def test_cli_rejects_unknown_override(tmp_path):
  proc = subprocess.run(
      [sys.executable, "launch/main.py", "--config=experiments/quickstart/config.py:smoke",
       f"--workdir={tmp_path}", "--stage=pool", "--config.surface.methd=3"],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  # One line, the full key, a suggestion; no traceback.
  assert proc.stderr.strip() == ("error: --config.surface.methd: unknown config key "
                                 "'methd' in surface; did you mean --config.surface.method?")
  assert not (tmp_path / "pool").exists()


def test_cli_rejects_unknown_stage(tmp_path):
  proc = subprocess.run(
      [sys.executable, "launch/main.py", "--config=experiments/quickstart/config.py:smoke",
       f"--workdir={tmp_path}", "--stage=nope"],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert "nope" in proc.stderr


def test_domain_mappings_are_set_from_the_command_line():
  import importlib.util  # pylint: disable=import-outside-toplevel
  spec = importlib.util.spec_from_file_location("launch_main", ROOT / "launch" / "main.py")
  main = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(main)
  rest, entries = main.split_mapping_entries(
      ["--config=x.py", "--config.target.weights.code=0.3", "--config.seed=2",
       "--config.optimise.domain_max.math=0.4", "--config.pool.deploy.fraction.web=0.5"])
  assert rest == ["--config=x.py", "--config.seed=2"]
  cfg = base.get_config("smoke")
  for key, name, value in entries:
    base.set_mapping_entry(cfg, key, name, value)
  assert cfg.target.weights.code == 0.3 and cfg.optimise.domain_max.math == 0.4
  assert cfg.pool.deploy.fraction.web == 0.5
  assert cfg.is_locked  # still locked for every other key
  with pytest.raises(ValueError, match=r"--config\.target\.weights\.code='abc': not a "):
    base.set_mapping_entry(cfg, "target.weights", "code", "abc")
