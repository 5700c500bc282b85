"""Atomic, typed artifact I/O: every stage writes through here so a crash never leaves a
half-written file where a finished one is expected."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import tempfile
from typing import Any, Iterator

import numpy as np


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[pathlib.Path]:
  """Yields a temporary path beside `path`; renames it onto `path` on success only."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
  os.close(fd)
  tmp_path = pathlib.Path(tmp)
  try:
    try:
      yield tmp_path
      if tmp_path.exists():
        # mkstemp creates 0600; a finished artifact gets the mode a plain open() would.
        os.chmod(tmp_path, 0o666 & ~_umask())
      os.replace(tmp_path, path)
    except OSError as e:
      if str(path) in str(e):
        raise
      raise OSError(e.errno, f"could not write {path}: {e.strerror or e} (any previous "
                    f"{path.name} is intact)") from e
  finally:
    if tmp_path.exists():
      tmp_path.unlink()


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def is_writer() -> bool:
  """Whether this process writes shared artifacts: process 0 of a multi-process job (and
  the only process otherwise)."""
  try:
    import jax  # pylint: disable=import-outside-toplevel
    return jax.process_index() == 0
  except Exception:  # pylint: disable=broad-except
    return True


def _default(o: Any) -> Any:
  if isinstance(o, np.generic):
    return o.item()
  if isinstance(o, np.ndarray):
    return o.tolist()
  if isinstance(o, pathlib.Path):
    return str(o)
  if hasattr(o, "to_dict"):
    return o.to_dict()
  if isinstance(o, (set, frozenset, tuple)):
    return list(o)
  raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def to_json(obj: Any, indent: int | None = 2) -> str:
  return json.dumps(obj, indent=indent, default=_default, sort_keys=False)


def write_json(path: str | os.PathLike[str], obj: Any) -> pathlib.Path:
  """Writes `obj` as JSON atomically and returns the path."""
  with atomic_path(path) as tmp:
    tmp.write_text(to_json(obj) + "\n")
  return pathlib.Path(path)


def read_json(path: str | os.PathLike[str], what: str = "artifact") -> Any:
  """Reads JSON, raising a FileNotFoundError that names the missing artifact."""
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(
        f"{what} not found: {path} (run the stage that writes it first)")
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"{what} {path} is not valid JSON: {e}") from e


def write_npz(path: str | os.PathLike[str], **arrays: np.ndarray) -> pathlib.Path:
  with atomic_path(path) as tmp:
    with open(tmp, "wb") as f:
      np.savez(f, **arrays)
  return pathlib.Path(path)


def write_parquet(path: str | os.PathLike[str], frame: Any) -> pathlib.Path:
  """Writes a pandas DataFrame as Parquet atomically (no index)."""
  with atomic_path(path) as tmp:
    frame.to_parquet(tmp, index=False)
  return pathlib.Path(path)


def write_figure(path: str | os.PathLike[str], fig: Any, dpi: int = 110) -> pathlib.Path:
  """Saves a matplotlib figure as PNG atomically, then closes it."""
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  with atomic_path(path) as tmp:
    fig.savefig(tmp, format="png", dpi=dpi)
  plt.close(fig)
  return pathlib.Path(path)


def file_digest(path: str | os.PathLike[str]) -> str:
  """sha256 of a file, or of every file under a directory (names and contents)."""
  path = pathlib.Path(path)
  h = hashlib.sha256()
  files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
  for p in files:
    h.update(str(p.relative_to(path) if p != path else p.name).encode())
    with open(p, "rb") as f:
      for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
  return h.hexdigest()
