"""Checkpoints of a training run with orbax's CheckpointManager: the (sharded) train state,
the data iterator's state and a config fingerprint, keeping the last k.

A checkpoint written under one config fingerprint is refused under another, with an error
that names the directory and the differing config entries, so a changed model, optimiser
or mixture never silently resumes from a stale run.

A checkpoint that cannot be read back (a file truncated or garbled after it was
finalised) is named in a warning and moved aside to `<directory>.unreadable/<step>`;
`restore_latest` then falls back to the previous step, or to a fresh start when no step
can be read. Temporary directories of saves cut short by a killed process are removed
when the manager opens the directory.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import shutil
from typing import Any, Mapping, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp

from causalmix_jax import artifacts

log = logging.getLogger(__name__)


class CheckpointMismatchError(ValueError):
  """The checkpoint directory holds a run with a different config fingerprint."""


class Restored(NamedTuple):
  """A checkpoint read back by `Checkpointer.restore_latest`."""
  step: int
  state: Any
  data_state: Any
  meta: dict[str, Any]


def _first_line(e: BaseException, limit: int = 300) -> str:
  text = (str(e).strip().splitlines() or [""])[0]
  return f"{type(e).__name__}: {text[:limit]}{'...' if len(text) > limit else ''}"


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(d, Mapping):
    out: dict[str, Any] = {}
    for k, v in d.items():
      out.update(_flatten(v, f"{prefix}{k}."))
    return out
  return {prefix[:-1]: d}


def _differences(saved: Mapping[str, Any], current: Mapping[str, Any],
                 limit: int = 8) -> list[str]:
  a, b = _flatten(saved), _flatten(current)
  keys = sorted(k for k in set(a) | set(b) if a.get(k, "<absent>") != b.get(k, "<absent>"))
  return [f"{k}: checkpoint={a.get(k, '<absent>')!r} now={b.get(k, '<absent>')!r}"
          for k in keys[:limit]]


class Checkpointer:
  """Saves and restores `(train state, data iterator state)` under `directory`.

  fingerprint: a string identifying everything that determines the trajectory (a hash
    of the config); `fingerprint_config` the JSON-ready config it was hashed from, stored
    to explain a mismatch.
  """

  def __init__(self, directory: str | os.PathLike[str], *, fingerprint: str,
               fingerprint_config: Mapping[str, Any] | None = None, max_to_keep: int = 2,
               async_save: bool = True):
    if max_to_keep < 1:
      raise ValueError(f"keep_checkpoints={max_to_keep} must be >= 1")
    self.directory = pathlib.Path(directory).absolute()
    self.fingerprint = fingerprint
    self.fingerprint_config = dict(fingerprint_config or {})
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, cleanup_tmp_directories=True,
            enable_async_checkpointing=async_save),
        item_names=("state", "meta"))

  def step_dir(self, step: int) -> pathlib.Path:
    return self.directory / str(int(step))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, data_state: Any = None,
           extra: Mapping[str, Any] | None = None) -> None:
    """Saves asynchronously (device buffers are copied before this returns, so the
    caller may donate `state` afterwards)."""
    meta = {"fingerprint": self.fingerprint, "config": self.fingerprint_config,
            "step": int(step), "data": data_state, "extra": dict(extra or {})}
    try:
      json.dumps(meta)
    except TypeError as e:
      raise TypeError(f"checkpoint meta (data iterator state or extra) is not JSON "
                      f"serialisable: {e}") from e
    self._manager.save(int(step), args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))

  def read_meta(self, step: int) -> dict[str, Any]:
    restored = self._manager.restore(
        int(step), args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return dict(restored["meta"])

  def check_compatible(self, step: int) -> dict[str, Any]:
    """Returns the meta of `step`, raising CheckpointMismatchError on another config."""
    meta = self.read_meta(step)
    if meta.get("fingerprint") != self.fingerprint:
      diffs = _differences(meta.get("config", {}), self.fingerprint_config)
      raise CheckpointMismatchError(
          f"checkpoint {self.directory}/{step} was written by a different config "
          f"(fingerprint {str(meta.get('fingerprint'))[:12]} != {self.fingerprint[:12]}). "
          f"Differences: {'; '.join(diffs) or 'unknown'}. Use a fresh workdir, or delete "
          f"{self.directory} to start over.")
    return meta

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, Any, dict[str, Any]]:
    """(state, data iterator state, meta) of `step`. `abstract_state` is a tree of
    `jax.ShapeDtypeStruct`s with shardings (the state is restored already sharded)."""
    meta = self.check_compatible(step)
    restored = self._manager.restore(int(step), args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state)))
    return restored["state"], meta.get("data"), meta

  def check_resumable(self) -> int | None:
    """The newest step whose meta can be read, raising CheckpointMismatchError if it was
    written under another config (cheap: no state is read); None if there is none."""
    for step in sorted(self.all_steps(), reverse=True):
      try:
        self.read_meta(step)
      except Exception:  # pylint: disable=broad-except
        continue  # reported by restore_latest
      self.check_compatible(step)
      return step
    return None

  def restore_latest(self, abstract_state: Any) -> Restored | None:
    """The newest checkpoint that can be read back, or None (start afresh).

    A step that fails to restore (other than for a config mismatch, which is raised) is
    named in a warning and moved aside, and the step before it is tried.
    """
    unreadable: list[int] = []
    found: Restored | None = None
    for step in sorted(self.all_steps(), reverse=True):
      try:
        state, data_state, meta = self.restore(step, abstract_state)
      except (CheckpointMismatchError, MemoryError):
        raise
      except Exception as e:  # pylint: disable=broad-except
        log.warning("checkpoint %s cannot be read back (%s); falling back to an earlier "
                    "checkpoint", self.step_dir(step), _first_line(e))
        unreadable.append(step)
        continue
      found = Restored(step, state, data_state, meta)
      break
    if unreadable:
      self._set_aside(unreadable)
    if found is None and unreadable:
      log.warning("no checkpoint under %s can be read back; training starts over from "
                  "step 0", self.directory)
    elif unreadable:
      log.warning("resuming from %s instead; the steps after %d are trained again",
                  self.step_dir(found.step), found.step)
    return found

  def _set_aside(self, steps: list[int]) -> None:
    """Moves unreadable steps to `<directory>.unreadable/` (kept for inspection, out of
    the manager's way, so the steps can be saved again)."""
    if artifacts.is_writer():
      aside = self.directory.with_name(self.directory.name + ".unreadable")
      aside.mkdir(parents=True, exist_ok=True)
      for step in steps:
        src = self.step_dir(step)
        if not src.exists():
          continue
        dst, n = aside / str(step), 1
        while dst.exists():
          dst, n = aside / f"{step}.{n}", n + 1
        shutil.move(str(src), str(dst))
        log.warning("moved unreadable checkpoint %s to %s", src, dst)
    self._manager.reload()

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def abstract_like(state: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs with shardings for restoring into the layout of `state`."""
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)


def load_params(path: str | os.PathLike[str], step: int | None = None) -> tuple[Any, Any]:
  """(model spec, parameters) of a trained model, for reference-model statistics.

  `path` is a target-stage directory (holding `checkpoints/`) or a checkpoints
  directory; `step` defaults to the latest. Parameters come back as host arrays on the
  default device, whatever mesh they were trained on.
  """
  from causalmix_jax import model  # pylint: disable=import-outside-toplevel
  path = pathlib.Path(path)
  directory = path / "checkpoints" if (path / "checkpoints").is_dir() else path
  if not directory.is_dir():
    raise FileNotFoundError(f"no checkpoints under {path} (expected a target-stage "
                            "directory with checkpoints/, or a checkpoints directory)")
  manager = ocp.CheckpointManager(directory, item_names=("state", "meta"))
  try:
    step = manager.latest_step() if step is None else int(step)
    if step is None:
      raise FileNotFoundError(f"{directory} holds no finished checkpoint")
    meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    model_dict = dict(meta["meta"].get("config", {}).get("model", {}))
    if not model_dict:
      raise ValueError(f"checkpoint {directory}/{step} does not record its model config")
    spec = model.ModelSpec(**model_dict)
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore()))
  finally:
    manager.close()
  state = restored["state"]
  params = state["params"] if isinstance(state, Mapping) else state.params
  return spec, jax.tree.map(np.asarray, params)
