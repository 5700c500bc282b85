"""The data pool: tokenises every domain (streaming, memory bounded) into per-domain token
arrays on disk, holds out documents for evaluation, and loads the result memory-mapped.

On disk (`<out_dir>`):
  pool.json                 domains (canonical order = sorted names), tokenizer, counts
  tokens/<domain>/{train,train_mask,doc_starts,heldout,heldout_mask,heldout_doc_starts}.npy
  tokens/_target/{target,target_mask,doc_starts}.npy
Each document is stored as `BOS doc EOS`; masks are 1 where a token counts in the loss.

`build_pool` refuses domains the sweep cannot use: names that differ only in case or
punctuation, two domains with the same documents, and a domain with fewer training
tokens than one proxy window (`min_domain_tokens`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import pathlib
import re
import shutil
import time
from typing import Any, Iterable, Mapping

import numpy as np

from causalmix_jax import artifacts
from causalmix_jax.data import tokenize
from causalmix_jax.data.sources import DataError, Document, iter_documents

log = logging.getLogger(__name__)

DEFAULT_POOL_DIR = pathlib.Path(__file__).resolve().parent / "default_pool"
TARGET_DIR = "_target"
_DOMAIN_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_FLUSH_TOKENS = 1 << 20
_COPY_BLOCK = 1 << 22


@dataclasses.dataclass
class Pool:
  """A loaded pool. Per-domain arrays are 1-D (memory-mapped when loaded from disk)."""
  domains: list[str]
  vocab_size: int
  pad_id: int
  bos_id: int
  eos_id: int
  train: dict[str, np.ndarray]
  train_mask: dict[str, np.ndarray]
  doc_starts: dict[str, np.ndarray]
  heldout: dict[str, np.ndarray]
  heldout_mask: dict[str, np.ndarray]
  heldout_doc_starts: dict[str, np.ndarray]
  target: np.ndarray
  target_mask: np.ndarray
  target_doc_starts: np.ndarray
  tokenizer: dict[str, Any] = dataclasses.field(default_factory=lambda: {"kind": "byte"})
  path: pathlib.Path | None = None
  meta: dict[str, Any] = dataclasses.field(default_factory=dict)

  def n_tokens(self) -> dict[str, int]:
    return {d: int(len(self.train[d])) for d in self.domains}

  def doc_lengths(self, domain: str) -> np.ndarray:
    """Token length of each document of the domain's train stream (int64[docs])."""
    return doc_lengths(self.doc_starts[domain], len(self.train[domain]))

  def domain_index(self, name: str) -> int:
    if name not in self.domains:
      raise DataError(f"domain {name!r} is not in the pool (domains: {self.domains})")
    return self.domains.index(name)


def doc_lengths(starts: np.ndarray, n_stream: int) -> np.ndarray:
  """Token length of each document of a stream from its start offsets."""
  starts = np.asarray(starts, np.int64)
  return np.diff(np.append(starts, n_stream)).astype(np.int64)


# ----------------------------------------------------------------------------- specs


def _as_dict(spec: Any) -> dict[str, Any]:
  if hasattr(spec, "to_dict"):
    return spec.to_dict()
  return dict(spec)


def _has_paths(spec: Any) -> bool:
  return bool(spec) and bool(_as_dict(spec).get("paths"))


def domain_specs(cfg: Any) -> tuple[dict[str, dict[str, Any]], dict[str, Any],
                                    pathlib.Path]:
  """(domain name -> spec, target spec, base dir for relative paths) of `cfg.pool`."""
  pc = cfg.pool
  source = pc.source
  if source == "default":
    manifest_path = DEFAULT_POOL_DIR / "manifest.json"
    if not manifest_path.is_file():
      raise DataError(
          f"the embedded default pool is missing ({manifest_path} not found); reinstall "
          "the package, or set pool.source='files' with pool.domains and "
          "pool.target_eval")
    manifest = artifacts.read_json(manifest_path, "default pool manifest")
    specs = {k: dict(v) for k, v in manifest.get("domains", {}).items()}
    target = manifest.get("target_eval") or {}
    base = DEFAULT_POOL_DIR
    # Explicit specs extend or override the embedded ones.
    specs.update({k: _as_dict(v) for k, v in _as_dict(pc.domains).items()})
    if _has_paths(pc.target_eval):
      target = _as_dict(pc.target_eval)
  elif source == "files":
    specs = {k: _as_dict(v) for k, v in _as_dict(pc.domains).items()}
    target = _as_dict(pc.target_eval) if pc.target_eval else {}
    base = pathlib.Path.cwd()
    if not specs:
      raise DataError("pool.domains is empty; with pool.source='files' give at least one "
                      "domain (configs.data.domain_spec)")
  else:
    raise DataError(f"pool.source {source!r} unknown; known: 'default', 'files'")
  if not target or not target.get("paths"):
    raise DataError("pool.target_eval is not set: the held-out target evaluation set is "
                    "required (a configs.data.domain_spec)")
  for name in specs:
    if not _DOMAIN_RE.match(name):
      raise DataError(f"domain name {name!r} (pool.domains) must be letters, digits, "
                      "'_', '.', '-' and start with a letter or digit")
  seen: dict[str, str] = {}
  for name in sorted(specs):
    key = re.sub(r"[^0-9a-z]", "", name.lower())
    if key in seen:
      raise DataError(f"domain names {seen[key]!r} and {name!r} (pool.domains) differ "
                      "only in case or punctuation; rename one, or merge them into one "
                      "domain")
    seen[key] = name
  return specs, target, base


def min_domain_tokens(cfg: Any) -> int:
  """Fewest training tokens a domain may have: one proxy training window
  (`proxy.model.seq_len` + 1 tokens), which every pool state of the sweep must expose
  in every domain. 1 when the config has no proxy model."""
  try:
    return int(cfg.proxy.model.seq_len) + 1
  except (AttributeError, KeyError, TypeError):
    return 1


def _read_settings(name: str, spec: Mapping[str, Any], base: pathlib.Path
                   ) -> tuple[Any, ...]:
  """What a domain reads: its resolved files and format settings."""
  from causalmix_jax.data.sources import resolve_paths  # pylint: disable=import-outside-toplevel
  files = tuple(str(f.resolve()) for f in resolve_paths(spec, base, name))
  return (files,) + tuple(str(spec.get(k, "") or "") for k in (
      "format", "separator", "text_field", "prompt_field", "response_field"))


def _check_distinct_sources(specs: Mapping[str, Mapping[str, Any]],
                            base: pathlib.Path) -> None:
  """Refuses two domains that read the same files with the same settings."""
  seen: dict[tuple[Any, ...], str] = {}
  for name in sorted(specs):
    key = _read_settings(name, specs[name], base)
    if key in seen:
      raise DataError(f"domains {seen[key]!r} and {name!r} read the same files with the "
                      f"same settings ({_short_list(key[0])}); drop one")
    seen[key] = name


def _short_list(items: Iterable[Any], limit: int = 3) -> str:
  items = [str(i) for i in items]
  return ", ".join(items[:limit]) + (f" and {len(items) - limit} more"
                                     if len(items) > limit else "")


def _check_built(per_domain: Mapping[str, dict[str, Any]], digests: Mapping[str, str],
                 capped: Mapping[str, bool], min_tokens: int) -> None:
  """Refuses domains below `min_tokens` training tokens, and two domains with the same
  documents (warns when they agree only up to pool.max_tokens_per_domain)."""
  small = [d for d in sorted(per_domain) if per_domain[d]["tokens"] < min_tokens]
  if small:
    parts = []
    for d in small:
      e = per_domain[d]
      held = (f", {e['heldout_documents']} more held out ({e['heldout_tokens']} tokens)"
              if e["heldout_documents"] else "")
      cap = " (cut at pool.max_tokens_per_domain)" if capped[d] else ""
      parts.append(f"{d!r}: {e['tokens']} training tokens{cap} in {e['documents']} "
                   f"document(s){held}, from {_short_list(e['sources'])}")
    raise DataError(
        f"domain {small[0]!r} is too small: {len(small)} domain(s) below the minimum of "
        f"{min_tokens} training tokens (one proxy window, proxy.model.seq_len + 1): "
        + "; ".join(parts) + ". Add data, merge the domain into another, or lower "
        "pool.heldout_fraction or raise pool.max_tokens_per_domain")
  seen: dict[str, str] = {}
  for d in sorted(per_domain):
    other = seen.setdefault(digests[d], d)
    if other == d:
      continue
    what = (f"domains {other!r} and {d!r} hold identical documents "
            f"({per_domain[d]['documents'] + per_domain[d]['heldout_documents']} "
            f"documents, {_short_list(per_domain[other]['sources'])} and "
            f"{_short_list(per_domain[d]['sources'])})")
    if capped[d] or capped[other]:
      log.warning("pool: %s up to pool.max_tokens_per_domain; is one a copy of the "
                  "other?", what)
      continue
    raise DataError(f"{what}: one is a copy of the other; drop one")


# ----------------------------------------------------------------------------- writing


class _ArrayWriter:
  """Appends to a raw binary file in chunks; `finish` assembles a .npy (memory bounded)."""

  def __init__(self, path: pathlib.Path, dtype: np.dtype):
    self.path = path
    self.dtype = np.dtype(dtype)
    self._raw = path.with_suffix(".raw")
    self._f = open(self._raw, "wb")
    self._buf: list[np.ndarray] = []
    self._buffered = 0
    self.length = 0

  def append(self, arr: np.ndarray) -> None:
    arr = np.asarray(arr, self.dtype)
    self._buf.append(arr)
    self._buffered += arr.size
    self.length += arr.size
    if self._buffered >= _FLUSH_TOKENS:
      self._flush()

  def _flush(self) -> None:
    if self._buf:
      self._f.write(np.concatenate(self._buf).tobytes())
      self._buf, self._buffered = [], 0

  def finish(self) -> None:
    self._flush()
    self._f.close()
    out = np.lib.format.open_memmap(self.path, mode="w+", dtype=self.dtype,
                                    shape=(self.length,))
    step = _COPY_BLOCK
    with open(self._raw, "rb") as f:
      for lo in range(0, self.length, step):
        n = min(step, self.length - lo)
        out[lo:lo + n] = np.frombuffer(f.read(n * self.dtype.itemsize), self.dtype)
    out.flush()
    del out
    self._raw.unlink()


class _StreamWriter:
  """One token stream (tokens, mask, document starts) on disk."""

  def __init__(self, directory: pathlib.Path, prefix: str):
    directory.mkdir(parents=True, exist_ok=True)
    starts_name = "doc_starts" if prefix in ("train", "target") else f"{prefix}_doc_starts"
    self.tokens = _ArrayWriter(directory / f"{prefix}.npy", np.int32)
    self.mask = _ArrayWriter(directory / f"{prefix}_mask.npy", np.uint8)
    self.starts = _ArrayWriter(directory / f"{starts_name}.npy", np.int64)
    self.documents = 0

  def add(self, ids: np.ndarray, mask: np.ndarray) -> None:
    self.starts.append(np.array([self.tokens.length], np.int64))
    self.tokens.append(ids)
    self.mask.append(mask)
    self.documents += 1

  @property
  def n_tokens(self) -> int:
    return self.tokens.length

  def finish(self) -> None:
    for w in (self.tokens, self.mask, self.starts):
      w.finish()


def _is_heldout(doc: Document, seed: int, domain: str, fraction: float) -> bool:
  if fraction <= 0:
    return False
  h = hashlib.blake2b(digest_size=8)
  h.update(f"{seed}\x00{domain}\x00".encode())
  h.update(doc.prompt.encode("utf-8", "surrogatepass"))
  h.update(b"\x00")
  h.update(doc.text.encode("utf-8", "surrogatepass"))
  u = int.from_bytes(h.digest(), "little") / 2.0**64
  return u < fraction


def _relative(paths: Iterable[pathlib.Path], base: pathlib.Path) -> list[str]:
  out = []
  for p in paths:
    try:
      out.append(str(p.resolve().relative_to(base.resolve())))
    except ValueError:
      out.append(str(p))
  return out


def _write_domain(name: str, spec: Mapping[str, Any], base: pathlib.Path,
                  tok: tokenize.Tokenizer, directory: pathlib.Path, *, seed: int,
                  heldout_fraction: float, max_tokens: int
                  ) -> tuple[dict[str, Any], str, bool]:
  """Tokenises one domain into `directory`; returns its pool.json entry, a digest of
  its documents, and whether pool.max_tokens_per_domain stopped the reading."""
  from causalmix_jax.data.sources import resolve_paths  # pylint: disable=import-outside-toplevel
  files = resolve_paths(spec, base, name)
  train = _StreamWriter(directory, "train")
  held = _StreamWriter(directory, "heldout")
  pending: tuple[np.ndarray, np.ndarray] | None = None  # last train doc, not yet written
  pending_tokens = 0
  truncated = capped = False
  digest = hashlib.blake2b(digest_size=16)
  t0 = time.time()
  docs = iter_documents(spec, base, domain=name)
  for doc in docs:
    _digest_update(digest, doc)
    ids, mask = tokenize.encode_document(tok, doc.text, doc.prompt)
    if _is_heldout(doc, seed, name, heldout_fraction):
      held.add(ids, mask)
      continue
    if max_tokens and train.n_tokens + pending_tokens + len(ids) >= max_tokens:
      room = max_tokens - train.n_tokens - pending_tokens
      if pending is not None:
        train.add(*pending)
      pending, pending_tokens = (ids[:room], mask[:room]), room
      truncated = len(ids) > room
      capped = True
      break
    if pending is not None:
      train.add(*pending)
    pending, pending_tokens = (ids, mask), len(ids)
    if (train.documents + 1) % 20000 == 0:
      log.info("pool: domain %s: %d documents, %d tokens (%.0fs)", name,
               train.documents + held.documents, train.n_tokens, time.time() - t0)
  if max_tokens and held.documents == 0 and heldout_fraction > 0:
    # The cap may have stopped reading early: hold out the next unread document.
    extra = next(docs, None)
    if extra is not None:
      _digest_update(digest, extra)
      held.add(*tokenize.encode_document(tok, extra.text, extra.prompt))
  if pending is not None:
    # Keep at least one held-out document when the domain has more than one.
    if held.documents == 0 and heldout_fraction > 0 and train.documents >= 1 and not truncated:
      held.add(*pending)
    else:
      train.add(*pending)
  if train.documents == 0:
    raise DataError(f"domain {name!r}: no training documents left after holding out "
                    f"{held.documents} (pool.heldout_fraction={heldout_fraction})")
  train.finish()
  held.finish()
  log.info("pool: domain %s: %d train documents (%d tokens), %d held out (%.1fs)", name,
           train.documents, train.n_tokens, held.documents, time.time() - t0)
  entry = {"documents": train.documents, "tokens": train.n_tokens,
           "heldout_documents": held.documents, "heldout_tokens": held.n_tokens,
           "truncated": truncated, "sources": _relative(files, base)}
  return entry, digest.hexdigest(), capped


def _digest_update(h: Any, doc: Document) -> None:
  """Adds one document (length-prefixed prompt and text) to a content digest."""
  for part in (doc.prompt, doc.text):
    b = part.encode("utf-8", "surrogatepass")
    h.update(len(b).to_bytes(8, "little"))
    h.update(b)


def _write_target(spec: Mapping[str, Any], base: pathlib.Path, tok: tokenize.Tokenizer,
                  directory: pathlib.Path, max_tokens: int) -> dict[str, Any]:
  from causalmix_jax.data.sources import resolve_paths  # pylint: disable=import-outside-toplevel
  files = resolve_paths(spec, base, "target_eval")
  out = _StreamWriter(directory, "target")
  for doc in iter_documents(spec, base, domain="target_eval"):
    ids, mask = tokenize.encode_document(tok, doc.text, doc.prompt)
    if max_tokens and out.n_tokens + len(ids) > max_tokens:
      room = max_tokens - out.n_tokens
      if room > 0:
        out.add(ids[:room], mask[:room])
      break
    out.add(ids, mask)
  out.finish()
  return {"documents": out.documents, "tokens": out.n_tokens,
          "sources": _relative(files, base)}


def build_pool(cfg: Any, out_dir: str | os.PathLike[str]) -> pathlib.Path:
  """Builds the pool of `cfg.pool` into `out_dir`; returns the path of pool.json.

  Tokens are written to a temporary directory and swapped in only when every domain
  succeeded, so a failure leaves an existing pool untouched.
  """
  out_dir = pathlib.Path(out_dir)
  specs, target_spec, base = domain_specs(cfg)
  tok = tokenize.make_tokenizer(cfg.pool.tokenizer)
  seed = int(getattr(cfg, "seed", 0))
  fraction = float(cfg.pool.heldout_fraction)
  if not 0.0 <= fraction < 1.0:
    raise DataError(f"pool.heldout_fraction must be in [0, 1), got {fraction}")
  max_tokens = int(cfg.pool.max_tokens_per_domain)
  out_dir.mkdir(parents=True, exist_ok=True)
  tmp = out_dir / f".tokens.tmp.{os.getpid()}"
  if tmp.exists():
    shutil.rmtree(tmp)
  domains = sorted(specs)
  _check_distinct_sources(specs, base)
  per_domain: dict[str, Any] = {}
  digests: dict[str, str] = {}
  capped: dict[str, bool] = {}
  try:
    for d in domains:
      per_domain[d], digests[d], capped[d] = _write_domain(
          d, specs[d], base, tok, tmp / d, seed=seed, heldout_fraction=fraction,
          max_tokens=max_tokens)
    _check_built(per_domain, digests, capped, min_domain_tokens(cfg))
    target = _write_target(target_spec, base, tok, tmp / TARGET_DIR, max_tokens)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  final = out_dir / "tokens"
  old = out_dir / f".tokens.old.{os.getpid()}"
  if final.exists():
    os.replace(final, old)
  os.replace(tmp, final)
  shutil.rmtree(old, ignore_errors=True)
  meta = {
      "domains": domains,
      "tokenizer": tok.describe(),
      "vocab_size": int(tok.vocab_size),
      "pad_id": int(tok.pad_id), "bos_id": int(tok.bos_id), "eos_id": int(tok.eos_id),
      "per_domain": per_domain,
      "target_eval": target,
      "heldout_fraction": fraction,
      "max_tokens_per_domain": max_tokens,
      "seed": seed,
      "source": cfg.pool.source,
  }
  return artifacts.write_json(out_dir / "pool.json", meta)


# ----------------------------------------------------------------------------- loading


def _load(path: pathlib.Path) -> np.ndarray:
  if not path.exists():
    raise DataError(f"pool array missing: {path} (rebuild the pool)")
  return np.load(path, mmap_mode="r")


def load_pool(pool_dir: str | os.PathLike[str]) -> Pool:
  """Loads a built pool (`pool_dir` holds pool.json, or is the path of pool.json)."""
  pool_dir = pathlib.Path(pool_dir)
  if pool_dir.name == "pool.json":
    pool_dir = pool_dir.parent
  meta = artifacts.read_json(pool_dir / "pool.json", "pool.json")
  domains = list(meta["domains"])
  tdir = pool_dir / "tokens"
  arrays: dict[str, dict[str, np.ndarray]] = {k: {} for k in (
      "train", "train_mask", "doc_starts", "heldout", "heldout_mask",
      "heldout_doc_starts")}
  for d in domains:
    for k in arrays:
      arrays[k][d] = _load(tdir / d / f"{k}.npy")
  tgt = tdir / TARGET_DIR
  return Pool(domains=domains, vocab_size=int(meta["vocab_size"]),
              pad_id=int(meta["pad_id"]), bos_id=int(meta["bos_id"]),
              eos_id=int(meta["eos_id"]), target=_load(tgt / "target.npy"),
              target_mask=_load(tgt / "target_mask.npy"),
              target_doc_starts=_load(tgt / "doc_starts.npy"),
              tokenizer=dict(meta.get("tokenizer", {"kind": "byte"})), path=pool_dir,
              meta=meta, **arrays)


def from_documents(domain_docs: Mapping[str, Iterable[str]], target_docs: Iterable[str],
                   tok: tokenize.Tokenizer | None = None) -> Pool:
  """An in-memory pool from lists of texts (no held-out split); for tests and examples."""
  tok = tok or tokenize.ByteTokenizer()

  def stream(texts: Iterable[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ids, masks, starts, n = [], [], [], 0
    for t in texts:
      i, m = tokenize.encode_document(tok, t)
      starts.append(n)
      n += len(i)
      ids.append(i)
      masks.append(m)
    if not ids:
      return np.zeros(0, np.int32), np.zeros(0, np.uint8), np.zeros(0, np.int64)
    return np.concatenate(ids), np.concatenate(masks), np.asarray(starts, np.int64)

  domains = sorted(domain_docs)
  tr = {d: stream(domain_docs[d]) for d in domains}
  empty = {d: np.zeros(0, np.int32) for d in domains}
  tgt = stream(target_docs)
  return Pool(domains=domains, vocab_size=tok.vocab_size, pad_id=tok.pad_id,
              bos_id=tok.bos_id, eos_id=tok.eos_id,
              train={d: tr[d][0] for d in domains},
              train_mask={d: tr[d][1] for d in domains},
              doc_starts={d: tr[d][2] for d in domains},
              heldout=dict(empty), heldout_mask={d: np.zeros(0, np.uint8) for d in domains},
              heldout_doc_starts={d: np.zeros(0, np.int64) for d in domains},
              target=tgt[0], target_mask=tgt[1], target_doc_starts=tgt[2],
              tokenizer=tok.describe())
