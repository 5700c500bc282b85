"""Metrics sinks: JSON-lines files (always) and TensorBoard (when available)."""

from __future__ import annotations

import json
import os
import pathlib
import time
from typing import Any, Mapping

import numpy as np


def _scalar(v: Any) -> Any:
  if isinstance(v, (np.generic,)):
    return v.item()
  if hasattr(v, "shape") and getattr(v, "shape", None) == ():
    return float(v)
  return v


class MetricsWriter:
  """Appends one JSON object per call to `metrics.jsonl`; optionally mirrors scalars to
  TensorBoard. Only the writing process (index 0) should construct one with `enabled`."""

  def __init__(self, path: str | os.PathLike[str], *, enabled: bool = True,
               tensorboard_dir: str | os.PathLike[str] | None = None):
    self.path = pathlib.Path(path)
    self.enabled = enabled
    self._tb = None
    if enabled:
      self.path.parent.mkdir(parents=True, exist_ok=True)
      if tensorboard_dir is not None:
        try:
          from tensorboardX import SummaryWriter  # type: ignore
          self._tb = SummaryWriter(str(tensorboard_dir))
        except ImportError:
          try:
            from torch.utils.tensorboard import SummaryWriter  # type: ignore
            self._tb = SummaryWriter(str(tensorboard_dir))
          except ImportError:
            self._tb = None

  def write(self, step: int | None = None, **values: Any) -> None:
    if not self.enabled:
      return
    rec: dict[str, Any] = {"time": time.time()}
    if step is not None:
      rec["step"] = int(step)
    rec.update({k: _scalar(v) for k, v in values.items()})
    with open(self.path, "a") as f:
      f.write(json.dumps(rec, default=float) + "\n")
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
  path = pathlib.Path(path)
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
