"""Tests for atomic artifact writes and content digests."""

import os
import stat

import numpy as np
import pytest

from causalmix_jax import artifacts


def test_failed_write_keeps_previous_file(tmp_path):
  path = tmp_path / "a.json"
  artifacts.write_json(path, {"v": 1})
  with pytest.raises(RuntimeError):
    with artifacts.atomic_path(path) as tmp:
      tmp.write_text("half")
      raise RuntimeError("crash")
  assert artifacts.read_json(path) == {"v": 1}
  assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_json_handles_numpy(tmp_path):
  path = artifacts.write_json(tmp_path / "b.json", {"x": np.float32(2.5), "a": np.arange(3)})
  assert artifacts.read_json(path) == {"x": 2.5, "a": [0, 1, 2]}


def test_missing_artifact_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="pool covariates"):
    artifacts.read_json(tmp_path / "nope.json", "pool covariates")


def test_digest_changes_with_content(tmp_path):
  (tmp_path / "d").mkdir()
  (tmp_path / "d" / "f").write_text("1")
  d1 = artifacts.file_digest(tmp_path / "d")
  (tmp_path / "d" / "f").write_text("2")
  assert artifacts.file_digest(tmp_path / "d") != d1


def test_artifacts_get_the_mode_the_umask_gives(tmp_path):
  old = os.umask(0o022)
  try:
    p = artifacts.write_json(tmp_path / "a.json", {"x": 1})
    assert stat.S_IMODE(p.stat().st_mode) == 0o644
    os.umask(0o077)
    q = artifacts.write_json(tmp_path / "b.json", {"x": 1})
    assert stat.S_IMODE(q.stat().st_mode) == 0o600
  finally:
    os.umask(old)


def test_write_error_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
  import errno  # pylint: disable=import-outside-toplevel
  path = artifacts.write_json(tmp_path / "a.json", {"v": 1})

  def full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(os, "replace", full)
  with pytest.raises(OSError, match=r"could not write .*a\.json: No space left.*intact"):
    artifacts.write_json(path, {"v": 2})
  monkeypatch.undo()
  assert artifacts.read_json(path) == {"v": 1}
  assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
