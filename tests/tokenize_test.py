"""Tests for causalmix_jax.data.tokenize: byte ids, document layout and local file
tokenizers (Hugging Face tokenizer.json and SentencePiece), trained here offline."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

from causalmix_jax.data import tokenize
from causalmix_jax.data.sources import DataError

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "pool"


def _corpus() -> list[str]:
  return (FIXTURES / "prose" / "notes.txt").read_text().split("\n%\n") + [
      p.read_text() for p in sorted((FIXTURES / "code").glob("*.py"))]


def test_byte_tokenizer_ids():
  tok = tokenize.make_tokenizer(None)
  assert (tok.vocab_size, tok.pad_id, tok.bos_id, tok.eos_id) == (259, 256, 257, 258)
  assert tok.encode("Ab") == [65, 98]
  assert tok.encode("é") == [0xC3, 0xA9]
  np.testing.assert_array_equal(tok.encode_np("é"), [0xC3, 0xA9])
  assert tok.decode([257, 0xC3, 0xA9, 33, 258, 256]) == "é!"
  assert tokenize.make_tokenizer({"kind": "byte", "path": ""}).describe()["kind"] == "byte"


def test_encode_document_layout_and_mask():
  tok = tokenize.ByteTokenizer()
  ids, mask = tokenize.encode_document(tok, "hi", prompt="Q?")
  np.testing.assert_array_equal(ids, [257, 81, 63, 104, 105, 258])
  np.testing.assert_array_equal(mask, [0, 0, 0, 1, 1, 1])
  ids, mask = tokenize.encode_document(tok, "hi")
  np.testing.assert_array_equal(ids, [257, 104, 105, 258])
  np.testing.assert_array_equal(mask, [0, 1, 1, 1])
  assert ids.dtype == np.int32 and mask.dtype == np.uint8


def test_hf_tokenizer_json(tmp_path):
  from tokenizers import Tokenizer, models, pre_tokenizers, trainers, decoders
  hf = Tokenizer(models.BPE(unk_token="[UNK]"))
  hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  hf.decoder = decoders.ByteLevel()
  hf.train_from_iterator(_corpus(), trainers.BpeTrainer(
      vocab_size=300, special_tokens=["[UNK]", "</s>"], show_progress=False))
  path = tmp_path / "tokenizer.json"
  hf.save(str(path))
  tok = tokenize.make_tokenizer({"kind": "hf", "path": str(path)})
  base = hf.get_vocab_size()
  # EOS is the model's own "</s>"; PAD and BOS are appended after the vocabulary.
  assert tok.eos_id == hf.token_to_id("</s>")
  assert (tok.pad_id, tok.bos_id, tok.vocab_size) == (base, base + 1, base + 2)
  text = "The bridge was older than the town."
  ids = tok.encode(text)
  assert len(ids) < len(text.encode())  # merges learnt from the corpus
  assert tok.decode([tok.bos_id] + ids + [tok.eos_id]) == text
  ids_np, mask = tokenize.encode_document(tok, text)
  assert ids_np[0] == tok.bos_id and ids_np[-1] == tok.eos_id and mask[0] == 0
  assert tok.describe() == {"kind": "hf", "path": str(path.resolve())}


def test_sentencepiece_model(tmp_path):
  import sentencepiece as spm
  corpus = tmp_path / "corpus.txt"
  corpus.write_text("\n".join(line for doc in _corpus() for line in doc.splitlines()
                              if line.strip()))
  prefix = tmp_path / "sp"
  spm.SentencePieceTrainer.Train(
      input=str(corpus), model_prefix=str(prefix), vocab_size=120,
      model_type="unigram", character_coverage=1.0, minloglevel=2)
  tok = tokenize.make_tokenizer({"kind": "sentencepiece", "path": f"{prefix}.model"})
  # SentencePiece defaults: unk 0, bos 1, eos 2, no pad -> pad appended.
  assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.vocab_size) == (1, 2, 120, 121)
  text = "The orchard was planted in rows."
  assert tok.decode(tok.encode(text)) == text


def test_bad_tokenizer_config(tmp_path):
  with pytest.raises(DataError, match="pool.tokenizer.kind 'wordpiece'"):
    tokenize.make_tokenizer({"kind": "wordpiece", "path": ""})
  with pytest.raises(DataError, match="pool.tokenizer.path is empty"):
    tokenize.make_tokenizer({"kind": "hf", "path": ""})
  with pytest.raises(DataError, match=r"pool.tokenizer.path .*missing\.json.* not exist"):
    tokenize.make_tokenizer({"kind": "hf", "path": str(tmp_path / "missing.json")})
  junk = tmp_path / "junk.json"
  junk.write_text("{}")
  with pytest.raises(DataError, match="not a readable tokenizer.json"):
    tokenize.make_tokenizer({"kind": "hf", "path": str(junk)})
