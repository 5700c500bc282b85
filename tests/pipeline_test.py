"""Tests for the stage runner: skipping up-to-date stages, re-running on changed config or
input data, naming missing inputs and stale upstreams, and binding a workdir to its study."""

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
      "up": pipeline.StageSpec("up", _fake_up, "up/out.json", (), ("seed",)),
      "down": pipeline.StageSpec("down", _fake_down, "down/out.json",
                                 ("up/out.json",), ("surface",)),
  }
  monkeypatch.setattr(pipeline, "STAGES", stages)
  monkeypatch.setattr(pipeline, "ORDER", ("up", "down"))
  CALLS.clear()
  return stages


def test_a_key_added_at_its_earlier_behaviour_keeps_old_stages_up_to_date(
    tmp_path, fake_stages, monkeypatch):
  del fake_stages
  cfg = base.get_config("smoke")
  # A study written before surface.stack_discrepancy existed.
  monkeypatch.setattr(pipeline, "ADDED_KEYS", {"surface.stack_discrepancy": "none",
                                               "surface.not_yet_written": 1})
  with cfg.unlocked():
    cfg.surface.not_yet_written = 1
  pipeline.run_stages(["all"], cfg, tmp_path)
  stamp = json.loads((tmp_path / "down" / "stamp.json").read_text())
  assert "stack_discrepancy" not in stamp["config"]["surface"]
  assert "not_yet_written" not in stamp["config"]["surface"]
  pipeline.run_stages(["all"], cfg, tmp_path)
  assert CALLS == ["up", "down"]  # the default of an added key changes nothing
  cfg.surface.stack_discrepancy = "rff"
  pipeline.run_stages(["all"], cfg, tmp_path)
  assert CALLS == ["up", "down", "down"]  # another value does
  assert pipeline.staleness(pipeline.STAGES["down"], cfg, tmp_path) is None
  cfg.surface.stack_discrepancy = "none"
  assert "surface.stack_discrepancy: 'rff' -> None" in pipeline.staleness(
      pipeline.STAGES["down"], cfg, tmp_path)


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
  with pytest.raises(pipeline.StaleUpstreamError,
                     match=r"reads up/, which is stale: its config changed \(seed: 0 -> 3\)"
                           r".*--stage=up"):
    pipeline.run_stages(["down"], cfg, tmp_path)  # without "up": refused, not reused
  assert CALLS == ["up", "down", "down"]
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


def test_registry_refers_to_stage_functions():
  for name, spec in pipeline.STAGES.items():
    assert spec.fn.__module__.startswith("causalmix_jax.stages."), name
    assert spec.fn.__name__ == "run"
  assert [s.name for s in pipeline.upstream_stages(pipeline.STAGES["design"])] == ["pool"]


def _failing(cfg, workdir: pathlib.Path) -> pathlib.Path:
  del cfg
  (workdir / "up").mkdir(parents=True, exist_ok=True)
  raise RuntimeError("boom")


def test_config_and_stamp_written_only_on_success(tmp_path, monkeypatch):
  spec = pipeline.StageSpec("up", _failing, "up/out.json", (), ("seed",))
  monkeypatch.setattr(pipeline, "STAGES", {"up": spec})
  monkeypatch.setattr(pipeline, "ORDER", ("up",))
  with pytest.raises(RuntimeError, match="boom"):
    pipeline.run_stages(["up"], base.get_config("smoke"), tmp_path)
  assert not (tmp_path / "up" / "config.json").exists()
  assert not (tmp_path / "up" / "stamp.json").exists()


def test_workdir_is_bound_to_its_study(tmp_path, fake_stages):
  del fake_stages
  cfg = base.get_config("smoke")
  pipeline.run_stages(["all"], cfg, tmp_path, study_id="a/config.py:smoke")
  other = base.get_config("")
  with pytest.raises(pipeline.StudyMismatchError,
                     match=r"belongs to study 'a/config.py:smoke', not 'b/config.py'.*"
                           r"config keys that differ: .*design.n_mixtures: 8 -> 48"):
    pipeline.run_stages(["all"], other, tmp_path, study_id="b/config.py")
  assert CALLS == ["up", "down"]  # nothing of the other study ran
  # The same study with an edited key is not another study.
  cfg.surface.method = "gp"
  pipeline.run_stages(["all"], cfg, tmp_path, study_id="a/config.py:smoke")
  assert CALLS == ["up", "down", "down"]
  pipeline.run_stages(["up"], other, tmp_path, study_id="b/config.py", force=True)
  assert json.loads((tmp_path / "study.json").read_text())["study"] == "b/config.py"


FINGERPRINT = {"value": "a"}


def _fingerprint(cfg) -> str:
  del cfg
  return FINGERPRINT["value"]


def test_fingerprint_of_external_inputs_triggers_rerun(tmp_path, monkeypatch):
  spec = pipeline.StageSpec("up", _fake_up, "up/out.json", (), ("seed",),
                            fingerprint=_fingerprint)
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


def test_temporary_files_of_interrupted_writes_are_removed(tmp_path, fake_stages):
  del fake_stages
  (tmp_path / "up").mkdir()
  left = tmp_path / "up" / ".stamp.json.abc123.tmp"
  left.write_text("half")
  pipeline.run_stages(["up"], base.get_config("smoke"), tmp_path)
  assert not left.exists() and (tmp_path / "up" / "out.json").exists()
