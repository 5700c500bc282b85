"""Metrics sinks: JSON-lines files (always) and TensorBoard (when available).

A run that resumes from a checkpoint at step k constructs its writer with
`start_step=k`: records of later steps, left by the interrupted run and about to be
logged again, are dropped from `metrics.jsonl` first (atomically), so every step appears
once; `start_step=0` starts the file afresh. A line cut short by a killed process is
dropped with a warning that names the file. A failed write raises an OSError that names
the file.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import time
from typing import Any, Mapping

import numpy as np

from causalmix_jax import artifacts

log = logging.getLogger(__name__)


def _scalar(v: Any) -> Any:
  if isinstance(v, (np.generic,)):
    return v.item()
  if hasattr(v, "shape") and getattr(v, "shape", None) == ():
    return float(v)
  return v


def _named(path: pathlib.Path, what: str, e: OSError) -> OSError:
  """`e` again, with the file it concerns in its message (errno kept)."""
  if str(path) in str(e):  # artifacts.atomic_path named it already
    return OSError(e.errno, e.strerror) if e.errno is not None else OSError(str(e))
  if e.errno is None:
    return OSError(f"could not {what} {path}: {e}")
  return OSError(e.errno, f"could not {what} {path}: {e.strerror or e}")


def _parse(path: pathlib.Path) -> tuple[list[str], list[dict[str, Any]], int]:
  """(raw lines, their records, number of unparsable lines dropped) of a metrics file."""
  lines, records, dropped = [], [], 0
  for n, line in enumerate(path.read_text().splitlines(), 1):
    if not line.strip():
      continue
    try:
      rec = json.loads(line)
    except json.JSONDecodeError:
      log.warning("%s:%d is not a complete JSON record (a write cut short?); dropped",
                  path, n)
      dropped += 1
      continue
    lines.append(line)
    records.append(rec)
  return lines, records, dropped


def rewind(path: str | os.PathLike[str], step: int) -> int:
  """Drops the records of steps after `step` (every record when `step` is 0) and any
  incomplete line from the metrics file at `path`, atomically. Returns how many records
  were dropped."""
  path = pathlib.Path(path)
  if not path.exists():
    return 0
  try:
    lines, records, dropped = _parse(path)
  except OSError as e:
    raise _named(path, "read", e) from e
  keep = [] if step <= 0 else [
      line for line, rec in zip(lines, records)
      if not isinstance(rec.get("step"), (int, float)) or rec["step"] <= step]
  dropped += len(lines) - len(keep)
  if dropped:
    try:
      with artifacts.atomic_path(path) as tmp:
        tmp.write_text("".join(line + "\n" for line in keep))
    except OSError as e:
      raise _named(path, "rewrite", e) from e
    log.info("%s: dropped %d record(s) after step %d (they are logged again on resume)",
             path, dropped, step)
  return dropped


class MetricsWriter:
  """Appends one JSON object per call to `metrics.jsonl`; optionally mirrors scalars to
  TensorBoard. Only the writing process (index 0) should construct one with `enabled`.

  start_step: the step a (resumed) run starts from; see the module docstring. None
    appends to the file as it is.
  """

  def __init__(self, path: str | os.PathLike[str], *, enabled: bool = True,
               tensorboard_dir: str | os.PathLike[str] | None = None,
               start_step: int | None = None):
    self.path = pathlib.Path(path)
    self.enabled = enabled
    self._tb = None
    if enabled:
      self.path.parent.mkdir(parents=True, exist_ok=True)
      if start_step is not None:
        rewind(self.path, int(start_step))
      if tensorboard_dir is not None:
        # Events of the steps after start_step are dropped from TensorBoard's view too.
        purge = None if start_step is None else int(start_step) + 1
        try:
          from tensorboardX import SummaryWriter  # type: ignore
          self._tb = SummaryWriter(str(tensorboard_dir), purge_step=purge)
        except ImportError:
          try:
            from torch.utils.tensorboard import SummaryWriter  # type: ignore
            self._tb = SummaryWriter(str(tensorboard_dir), purge_step=purge)
          except ImportError:
            self._tb = None

  def write(self, step: int | None = None, **values: Any) -> None:
    if not self.enabled:
      return
    rec: dict[str, Any] = {"time": time.time()}
    if step is not None:
      rec["step"] = int(step)
    rec.update({k: _scalar(v) for k, v in values.items()})
    try:
      with open(self.path, "a") as f:
        f.write(json.dumps(rec, default=float) + "\n")
    except OSError as e:
      raise _named(self.path, "append to", e) from e
    if self._tb is not None and step is not None:
      for k, v in rec.items():
        if isinstance(v, (int, float)) and k not in ("step", "time"):
          self._tb.add_scalar(k, v, step)

  def write_dict(self, values: Mapping[str, Any], step: int | None = None) -> None:
    self.write(step, **dict(values))

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
  """The records of a metrics file, skipping (with a warning) a line cut short."""
  path = pathlib.Path(path)
  if not path.exists():
    return []
  return _parse(path)[1]
