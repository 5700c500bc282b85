"""Checkpoints of a training run with orbax's CheckpointManager: the (sharded) train state,
the data iterator's state and a config fingerprint, keeping the last k.

A checkpoint written under one config fingerprint is refused under another, with an error
that names the directory and the differing config entries, so a changed model, optimiser
or mixture never silently resumes from a stale run.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class CheckpointMismatchError(ValueError):
  """The checkpoint directory holds a run with a different config fingerprint."""


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
            max_to_keep=max_to_keep, create=True,
            enable_async_checkpointing=async_save),
        item_names=("state", "meta"))

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
