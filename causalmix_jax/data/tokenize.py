"""Tokenisers: byte-level by default (no files needed), or a local Hugging Face
`tokenizer.json` or SentencePiece model. All expose the same small interface.

Byte ids: 0-255 are the UTF-8 bytes, 256 = PAD, 257 = BOS, 258 = EOS (vocab 259).
For file tokenisers, PAD/BOS/EOS are the model's own special tokens when it defines them
(`<pad>`, `<s>`/`<bos>`, `</s>`/`<eos>`, ...), otherwise new ids appended after its vocab.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any, Mapping, Protocol, Sequence

import numpy as np

from causalmix_jax.data.sources import DataError

BYTE_PAD_ID = 256
BYTE_BOS_ID = 257
BYTE_EOS_ID = 258
BYTE_VOCAB_SIZE = 259

_PAD_NAMES = ("<pad>", "[PAD]", "<|pad|>", "<|padding|>")
_BOS_NAMES = ("<s>", "<bos>", "[BOS]", "<|begin_of_text|>", "<|startoftext|>", "[CLS]")
_EOS_NAMES = ("</s>", "<eos>", "[EOS]", "<|end_of_text|>", "<|endoftext|>", "[SEP]")


class Tokenizer(Protocol):
  vocab_size: int
  pad_id: int
  bos_id: int
  eos_id: int

  def encode(self, text: str) -> list[int]: ...

  def encode_np(self, text: str) -> np.ndarray: ...

  def decode(self, ids: Sequence[int]) -> str: ...

  def describe(self) -> dict[str, Any]: ...


class ByteTokenizer:
  """UTF-8 bytes as ids, plus PAD/BOS/EOS."""
  vocab_size = BYTE_VOCAB_SIZE
  pad_id = BYTE_PAD_ID
  bos_id = BYTE_BOS_ID
  eos_id = BYTE_EOS_ID

  def encode(self, text: str) -> list[int]:
    return list(text.encode("utf-8"))

  def encode_np(self, text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32)

  def decode(self, ids: Sequence[int]) -> str:
    arr = np.asarray(ids)
    return arr[arr < 256].astype(np.uint8).tobytes().decode("utf-8", errors="replace")

  def describe(self) -> dict[str, Any]:
    return {"kind": "byte", "path": ""}


def _special(lookup, names: Sequence[str]) -> int | None:
  for n in names:
    i = lookup(n)
    if i is not None and i >= 0:
      return int(i)
  return None


class _FileTokenizer:
  """Shared logic: specials from the model or appended after its vocab."""

  def __init__(self, kind: str, path: str, base_vocab: int, pad: int | None,
               bos: int | None, eos: int | None):
    self.kind, self.path = kind, path
    nxt = base_vocab
    ids = []
    for v in (pad, bos, eos):
      if v is None:
        v, nxt = nxt, nxt + 1
      ids.append(v)
    self.pad_id, self.bos_id, self.eos_id = ids
    self.vocab_size = nxt

  def encode_np(self, text: str) -> np.ndarray:
    return np.asarray(self.encode(text), np.int32)

  def describe(self) -> dict[str, Any]:
    return {"kind": self.kind, "path": self.path}


class HFTokenizer(_FileTokenizer):
  """A local Hugging Face `tokenizers` tokenizer.json."""

  def __init__(self, path: str):
    from tokenizers import Tokenizer as _Tok  # pylint: disable=import-outside-toplevel
    try:
      self._tok = _Tok.from_file(path)
    except Exception as e:  # pylint: disable=broad-except
      raise DataError(f"pool.tokenizer.path {path!r}: not a readable tokenizer.json ({e})"
                      ) from None
    look = self._tok.token_to_id
    super().__init__("hf", path, self._tok.get_vocab_size(with_added_tokens=True),
                     _special(look, _PAD_NAMES), _special(look, _BOS_NAMES),
                     _special(look, _EOS_NAMES))

  def encode(self, text: str) -> list[int]:
    return self._tok.encode(text, add_special_tokens=False).ids

  def decode(self, ids: Sequence[int]) -> str:
    ids = [int(i) for i in ids if int(i) not in (self.pad_id, self.bos_id, self.eos_id)]
    return self._tok.decode(ids)


class SentencePieceTokenizer(_FileTokenizer):
  """A local SentencePiece model file."""

  def __init__(self, path: str):
    import sentencepiece as spm  # pylint: disable=import-outside-toplevel
    self._sp = spm.SentencePieceProcessor()
    try:
      self._sp.Load(path)
    except Exception as e:  # pylint: disable=broad-except
      raise DataError(f"pool.tokenizer.path {path!r}: not a readable SentencePiece model "
                      f"({e})") from None
    def own(i: int) -> int | None:
      return i if i >= 0 else None
    super().__init__("sentencepiece", path, self._sp.GetPieceSize(),
                     own(self._sp.pad_id()), own(self._sp.bos_id()),
                     own(self._sp.eos_id()))

  def encode(self, text: str) -> list[int]:
    return list(self._sp.EncodeAsIds(text))

  def decode(self, ids: Sequence[int]) -> str:
    n = self._sp.GetPieceSize()
    ids = [int(i) for i in ids
           if int(i) < n and int(i) not in (self.pad_id, self.bos_id, self.eos_id)]
    return self._sp.DecodeIds(ids)


def make_tokenizer(tok_cfg: Any = None) -> Tokenizer:
  """Builds the tokenizer of `cfg.pool.tokenizer` ({"kind": "byte"|"hf"|"sentencepiece",
  "path": file}). `None` or an empty config gives the byte tokenizer."""
  if tok_cfg is None:
    return ByteTokenizer()
  get = (tok_cfg.get if isinstance(tok_cfg, Mapping) or hasattr(tok_cfg, "get")
         else lambda k, d=None: getattr(tok_cfg, k, d))
  kind = get("kind", "byte") or "byte"
  path = str(get("path", "") or "")
  if kind == "byte":
    return ByteTokenizer()
  if kind not in ("hf", "sentencepiece"):
    raise DataError(f"pool.tokenizer.kind {kind!r} unknown; known: byte, hf, sentencepiece")
  if not path:
    raise DataError(f"pool.tokenizer.path is empty; kind {kind!r} needs a local file")
  if not pathlib.Path(os.path.expanduser(path)).is_file():
    raise DataError(f"pool.tokenizer.path {path!r} does not exist")
  path = str(pathlib.Path(os.path.expanduser(path)).resolve())
  if kind == "hf":
    return HFTokenizer(path)
  return SentencePieceTokenizer(path)


def encode_document(tok: Tokenizer, text: str, prompt: str = "") -> tuple[np.ndarray,
                                                                         np.ndarray]:
  """`BOS prompt text EOS` as int32 ids and a uint8 loss mask: 1 on the text and EOS, 0 on
  BOS and on prompt tokens (instruction data trains on responses only)."""
  body = tok.encode_np(text)
  head = tok.encode_np(prompt) if prompt else np.zeros((0,), np.int32)
  ids = np.empty(len(head) + len(body) + 2, np.int32)
  ids[0] = tok.bos_id
  ids[1:1 + len(head)] = head
  ids[1 + len(head):-1] = body
  ids[-1] = tok.eos_id
  mask = np.ones(len(ids), np.uint8)
  mask[:1 + len(head)] = 0
  return ids, mask
