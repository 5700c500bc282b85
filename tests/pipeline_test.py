"""Tests for the stage runner: skipping up-to-date stages, re-running on changed config or
input data, and naming missing inputs."""

import json
import pathlib

import pytest

from causalmix_jax import artifacts
from causalmix_jax import pipeline
from causalmix_jax.configs import base

CALLS: list[str] = []


def _fake_up(cfg, workdir: pathlib.Path) -> pathlib.Path:
  CALLS.append("up")
  return artifacts.write_json(workdir / "up" / "out.json", {"seed": cfg.seed})


def _fake_down(cfg, workdir: pathlib.Path) -> pathlib.Path:
  CALLS.append("down")
  up = artifacts.read_json(workdir / "up" / "out.json")
  return artifacts.write_json(workdir / "down" / "out.json", {"from_up": up})


@pytest.fixture
def fake_stages(monkeypatch):
  stages = {
      "up": pipeline.StageSpec("up", f"{__name__}:_fake_up", "up/out.json", (), ("seed",)),
      "down": pipeline.StageSpec("down", f"{__name__}:_fake_down", "down/out.json",
                                 ("up/out.json",), ("surface",)),
  }
  monkeypatch.setattr(pipeline, "STAGES", stages)
  monkeypatch.setattr(pipeline, "ORDER", ("up", "down"))
  CALLS.clear()
  return stages


def test_skip_and_rerun(tmp_path, fake_stages):
  del fake_stages
  cfg = base.get_config("smoke")
  pipeline.run_stages(["all"], cfg, tmp_path)
  assert CALLS == ["up", "down"]
  assert (tmp_path / "up" / "config.json").exists()
  assert json.loads((tmp_path / "down" / "stamp.json").read_text())["stage"] == "down"
  pipeline.run_stages(["all"], cfg, tmp_path)
  assert CALLS == ["up", "down"]  # both up to date
  cfg.surface.method = "gp"  # only "down" depends on the surface section
  pipeline.run_stages(["all"], cfg, tmp_path)
  assert CALLS == ["up", "down", "down"]
  cfg.seed = 3  # changes "up"'s output, so "down"'s input hash changes too
  pipeline.run_stages(["all"], cfg, tmp_path)
  assert CALLS == ["up", "down", "down", "up", "down"]
  pipeline.run_stages(["down"], cfg, tmp_path, force=True)
  assert CALLS[-1] == "down"


def test_missing_input_is_named(tmp_path, fake_stages):
  del fake_stages
  with pytest.raises(FileNotFoundError, match="up/out.json"):
    pipeline.run_stage("down", base.get_config("smoke"), tmp_path)


def test_unknown_stage(tmp_path):
  with pytest.raises(KeyError, match="nope"):
    pipeline.run_stages(["nope"], base.get_config("smoke"), tmp_path)


def test_registry_targets_are_named_modules():
  for spec in pipeline.STAGES.values():
    module, fn = spec.target.split(":")
    assert module.startswith("causalmix_jax.") and fn


FINGERPRINT = {"value": "a"}


def _fingerprint(cfg) -> str:
  del cfg
  return FINGERPRINT["value"]


def test_fingerprint_of_external_inputs_triggers_rerun(tmp_path, monkeypatch):
  spec = pipeline.StageSpec("up", f"{__name__}:_fake_up", "up/out.json", (), ("seed",),
                            fingerprint=f"{__name__}:_fingerprint")
  monkeypatch.setattr(pipeline, "STAGES", {"up": spec})
  monkeypatch.setattr(pipeline, "ORDER", ("up",))
  CALLS.clear()
  cfg = base.get_config("smoke")
  pipeline.run_stages(["up"], cfg, tmp_path)
  pipeline.run_stages(["up"], cfg, tmp_path)
  assert CALLS == ["up"]
  FINGERPRINT["value"] = "b"  # the source files changed on disk
  pipeline.run_stages(["up"], cfg, tmp_path)
  assert CALLS == ["up", "up"]
