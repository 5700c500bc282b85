"""Domain sources: turns a domain spec (files, globs, a format) into a stream of documents.

Formats (see `causalmix_jax.configs.data.domain_spec`):
  text     one document per file, or documents split by `separator`;
  jsonl    one JSON object per line with `text_field`, or `prompt_field` and
           `response_field` for instruction data (only response tokens count in the loss);
  parquet  a `text_field` column (or prompt/response columns), read in row-group batches.
Text and JSONL files ending in `.gz` are decompressed on the fly. Everything streams, so a
domain larger than memory can be read; errors are `DataError`s naming the file and line,
and a file that cannot be read as what it claims to be (a truncated or non-gzip `.gz`,
bad UTF-8, a line that is not JSON, an unreadable Parquet file) raises `SourceError`,
which also names the domain and the byte offset.
"""

from __future__ import annotations

import codecs
import dataclasses
import glob
import gzip
import json
import os
import pathlib
import zlib
from typing import IO, Any, Iterator, Mapping

_READ_BYTES = 1 << 20
FORMATS = ("text", "jsonl", "parquet")


class DataError(ValueError):
  """Bad input data: the message names the file, line, field or domain at fault."""


class SourceError(DataError):
  """A source file is not readable as its format: truncated or non-gzip `.gz`, bad
  UTF-8, a line that is not JSON. The message names the file, the line, the domain and
  the byte offset (in the decompressed stream for `.gz`)."""


@dataclasses.dataclass(frozen=True)
class Document:
  """One document. `prompt` is non-empty for instruction data (it is not trained on);
  `where` is "file:line" (or "file:row N") for error messages."""
  text: str
  prompt: str = ""
  where: str = ""


def _get(spec: Any, key: str, default: Any = "") -> Any:
  if isinstance(spec, Mapping):
    return spec.get(key, default)
  return getattr(spec, key, default) if hasattr(spec, key) else default


def resolve_paths(spec: Any, base_dir: str | os.PathLike[str] | None,
                  domain: str = "") -> list[pathlib.Path]:
  """Expands the spec's paths (globs allowed, relative to `base_dir`) into sorted files."""
  paths = _get(spec, "paths", ())
  if isinstance(paths, (str, os.PathLike)):
    paths = (paths,)
  label = f"domain {domain!r}: " if domain else ""
  if not paths:
    raise DataError(f"{label}no paths given (domain spec key 'paths')")
  base = pathlib.Path(base_dir) if base_dir is not None else pathlib.Path.cwd()
  files: list[pathlib.Path] = []
  for pattern in paths:
    p = pathlib.Path(os.path.expanduser(str(pattern)))
    full = p if p.is_absolute() else base / p
    if glob.has_magic(str(full)):
      matches = sorted(pathlib.Path(m) for m in glob.glob(str(full), recursive=True))
      matches = [m for m in matches if m.is_file()]
      if not matches:
        raise DataError(f"{label}no files match {str(full)!r}")
      files.extend(matches)
    elif full.is_dir():
      matches = sorted(m for m in full.rglob("*") if m.is_file())
      if not matches:
        raise DataError(f"{label}directory {str(full)!r} holds no files")
      files.extend(matches)
    elif full.is_file():
      files.append(full)
    else:
      raise DataError(f"{label}path does not exist: {str(full)!r}")
  return files


def _open_binary(path: pathlib.Path) -> IO[bytes]:
  if path.suffix == ".gz":
    return gzip.open(path, "rb")
  return open(path, "rb")


def _context(path: pathlib.Path, domain: str, offset: int) -> str:
  """" (domain 'd', byte offset N)": where a SourceError happened."""
  unit = "decompressed byte" if path.suffix == ".gz" else "byte"
  label = f"domain {domain!r}, " if domain else ""
  return f" ({label}{unit} offset {offset})"


class _Reader:
  """A source file's bytes, counting the offset; read errors (a truncated or non-gzip
  `.gz`, corrupt compressed data, I/O) become SourceErrors naming the file, the line,
  the domain and the offset reached."""

  def __init__(self, path: pathlib.Path, domain: str):
    self.path, self.domain, self.offset = path, domain, 0
    self._f: IO[bytes] | None = None

  def __enter__(self) -> "_Reader":
    try:
      self._f = _open_binary(self.path)
    except OSError as e:
      raise SourceError(f"{self.path}: cannot be opened ({e})"
                        f"{_context(self.path, self.domain, 0)}") from None
    return self

  def __exit__(self, *exc: Any) -> None:
    try:
      self._f.close()
    except (EOFError, OSError, zlib.error):
      pass

  def error(self, e: BaseException, line: int) -> SourceError:
    if isinstance(e, EOFError):
      what = ("truncated gzip file: the compressed stream ends before its end marker"
              if self.path.suffix == ".gz" else f"unexpected end of file ({e})")
    elif isinstance(e, gzip.BadGzipFile):
      what = f"not a gzip file although its name ends in .gz ({e})"
    elif isinstance(e, zlib.error):
      what = f"corrupt gzip data ({e})"
    else:
      what = f"read error ({e})"
    return SourceError(f"{self.path}:{line}: {what}"
                       f"{_context(self.path, self.domain, self.offset)}")

  def read(self, n: int, line: int) -> bytes:
    """Up to n bytes, b"" only at the end; `line` is the line being read. One read of
    the underlying file a call (read1), so a truncated `.gz` yields what it holds before
    the error, and the error's offset is where the data stop."""
    try:
      block = self._f.read1(n)
    except (EOFError, OSError, zlib.error) as e:
      raise self.error(e, line) from None
    self.offset += len(block)
    return block

  def lines(self) -> Iterator[tuple[int, int, bytes]]:
    """(line number, byte offset of the line, raw line) for every line."""
    lineno = 0
    while True:
      start = self.offset
      raw = self._readline(lineno + 1)
      if not raw:
        return
      lineno += 1
      yield lineno, start, raw

  def _readline(self, line: int) -> bytes:
    try:
      raw = self._f.readline()
    except (EOFError, OSError, zlib.error) as e:
      raise self.error(e, line) from None
    self.offset += len(raw)
    return raw


def _decode_line(raw: bytes, path: pathlib.Path, lineno: int, domain: str = "",
                 offset: int = 0) -> str:
  try:
    return raw.decode("utf-8")
  except UnicodeDecodeError as e:
    raise SourceError(f"{path}:{lineno}: not valid UTF-8 ({e.reason} at byte "
                      f"{e.start} of the line)"
                      f"{_context(path, domain, offset + e.start)}") from None


def _decode_block(decoder: codecs.IncrementalDecoder, block: bytes, final: bool,
                  path: pathlib.Path, line: int, domain: str = "",
                  offset: int = 0) -> str:
  """Decodes the next block; on bad UTF-8 names the line (`line` = line at block start)
  and the byte offset (`offset` = offset of the block's first byte)."""
  pending = decoder.getstate()[0]
  try:
    return decoder.decode(block, final=final)
  except UnicodeDecodeError as e:
    bad = line + (pending + block)[:e.start].count(b"\n")
    at = offset - len(pending) + e.start
    raise SourceError(f"{path}:{bad}: not valid UTF-8 ({e.reason})"
                      f"{_context(path, domain, at)}") from None


def _iter_text_whole(path: pathlib.Path, domain: str = "") -> Iterator[Document]:
  """The whole file is one document (decoded incrementally, so errors name the line)."""
  decoder = codecs.getincrementaldecoder("utf-8")()
  pieces: list[str] = []
  lineno = 1
  with _Reader(path, domain) as f:
    while True:
      start = f.offset
      block = f.read(_READ_BYTES, lineno)
      final = not block
      text = _decode_block(decoder, block, final, path, lineno, domain, start)
      lineno += text.count("\n")
      pieces.append(text)
      if final:
        break
  text = "".join(pieces)
  if text.strip():
    yield Document(text=text, where=f"{path}:1")


def _iter_text_split(path: pathlib.Path, separator: str,
                     domain: str = "") -> Iterator[Document]:
  """Documents separated by `separator`, streamed block by block."""
  decoder = codecs.getincrementaldecoder("utf-8")()
  buf = ""
  line = 1  # line where `buf` starts
  with _Reader(path, domain) as f:
    while True:
      start = f.offset
      block = f.read(_READ_BYTES, line + buf.count("\n"))
      final = not block
      buf += _decode_block(decoder, block, final, path, line + buf.count("\n"), domain,
                           start)
      while True:
        i = buf.find(separator)
        if i < 0:
          break
        piece = buf[:i]
        if piece.strip():
          yield Document(text=piece, where=f"{path}:{line}")
        line += piece.count("\n") + separator.count("\n")
        buf = buf[i + len(separator):]
      if final:
        break
  if buf.strip():
    yield Document(text=buf, where=f"{path}:{line}")


def _fields(spec: Any) -> tuple[str, str, str]:
  text_field = _get(spec, "text_field", "text") or "text"
  prompt_field = _get(spec, "prompt_field", "") or ""
  response_field = _get(spec, "response_field", "") or ""
  if bool(prompt_field) != bool(response_field):
    raise DataError("domain spec: set both 'prompt_field' and 'response_field' "
                    f"(got prompt_field={prompt_field!r}, response_field={response_field!r})")
  return text_field, prompt_field, response_field


def _field(record: Mapping[str, Any], key: str, where: str) -> str:
  if key not in record:
    raise DataError(f"{where}: record has no field {key!r} "
                    f"(fields: {sorted(record)[:10]})")
  value = record[key]
  if value is None:
    return ""
  if not isinstance(value, str):
    raise DataError(f"{where}: field {key!r} is {type(value).__name__}, not a string")
  return value


def _iter_jsonl(path: pathlib.Path, spec: Any, domain: str = "") -> Iterator[Document]:
  text_field, prompt_field, response_field = _fields(spec)
  with _Reader(path, domain) as f:
    for lineno, start, raw in f.lines():
      line = _decode_line(raw, path, lineno, domain, start)
      if not line.strip():
        continue
      where = f"{path}:{lineno}"
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise SourceError(f"{where}: not valid JSON ({e.msg} at column {e.colno})"
                          f"{_context(path, domain, start + e.pos)}") from None
      if not isinstance(record, dict):
        raise SourceError(f"{where}: expected a JSON object, got "
                          f"{type(record).__name__}{_context(path, domain, start)}")
      if prompt_field:
        prompt = _field(record, prompt_field, where)
        text = _field(record, response_field, where)
      else:
        prompt, text = "", _field(record, text_field, where)
      if text.strip() or prompt.strip():
        yield Document(text=text, prompt=prompt, where=where)


def _iter_parquet(path: pathlib.Path, spec: Any, domain: str = "") -> Iterator[Document]:
  import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
  text_field, prompt_field, response_field = _fields(spec)
  columns = [prompt_field, response_field] if prompt_field else [text_field]
  try:
    pf = pq.ParquetFile(path)
  except Exception as e:  # pylint: disable=broad-except
    label = f" (domain {domain!r})" if domain else ""
    raise SourceError(f"{path}: not a readable Parquet file ({e}){label}") from None
  names = set(pf.schema_arrow.names)
  for c in columns:
    if c not in names:
      raise DataError(f"{path}: Parquet file has no column {c!r} (columns: {sorted(names)})")
  row = 0
  for batch in pf.iter_batches(batch_size=4096, columns=columns):
    cols = [batch.column(c).to_pylist() for c in columns]
    for i in range(batch.num_rows):
      where = f"{path}:row {row + i}"
      vals = [col[i] for col in cols]
      for c, v in zip(columns, vals):
        if v is not None and not isinstance(v, str):
          raise DataError(f"{where}: column {c!r} is {type(v).__name__}, not a string")
      vals = [v or "" for v in vals]
      prompt, text = (vals[0], vals[1]) if prompt_field else ("", vals[0])
      if text.strip() or prompt.strip():
        yield Document(text=text, prompt=prompt, where=where)
    row += batch.num_rows


def iter_documents(spec: Any, base_dir: str | os.PathLike[str] | None = None, *,
                   domain: str = "") -> Iterator[Document]:
  """Streams the documents of one domain spec; raises `DataError` on bad input.

  spec: a `domain_spec` ConfigDict or a mapping with the same keys.
  base_dir: directory relative paths are resolved against (default: the cwd).
  domain: the domain's name, used in error messages.
  """
  fmt = _get(spec, "format", "text") or "text"
  label = f"domain {domain!r}: " if domain else ""
  if fmt not in FORMATS:
    raise DataError(f"{label}unknown format {fmt!r} (domain spec key 'format'); "
                    f"known: {', '.join(FORMATS)}")
  files = resolve_paths(spec, base_dir, domain)
  separator = _get(spec, "separator", "") or ""
  count = 0
  for path in files:
    if fmt == "text":
      docs = (_iter_text_split(path, separator, domain) if separator
              else _iter_text_whole(path, domain))
    elif fmt == "jsonl":
      docs = _iter_jsonl(path, spec, domain)
    else:
      docs = _iter_parquet(path, spec, domain)
    for doc in docs:
      count += 1
      yield doc
  if count == 0:
    raise DataError(f"{label}empty domain: no documents in "
                    f"{', '.join(str(p) for p in files)}")
