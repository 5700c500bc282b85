"""Tests for causalmix_jax.data.sources: formats, globs, gzip, streaming and bad input."""

from __future__ import annotations

import gzip
import json
import pathlib
import types

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from causalmix_jax.configs import data as data_cfg
from causalmix_jax.data import sources
from causalmix_jax.data.sources import DataError, iter_documents

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "pool"


def test_text_one_document_per_file_with_glob():
  docs = list(iter_documents(data_cfg.domain_spec("code/*.py"), FIXTURES))
  assert len(docs) == 4
  assert [pathlib.Path(d.where.rsplit(":", 1)[0]).name for d in docs] == [
      "fib.py", "gcd.py", "stack.py", "words.py"]
  assert docs[0].text.startswith("def fib(n):")
  assert all(d.prompt == "" for d in docs)


def test_text_split_by_separator_names_lines():
  docs = list(iter_documents(
      data_cfg.domain_spec("prose/notes.txt", separator="\n%\n"), FIXTURES))
  assert len(docs) == 6
  assert docs[1].text.startswith("A lantern")
  # Each document spans two lines plus one separator line.
  assert [int(d.where.rsplit(":", 1)[1]) for d in docs] == [1, 4, 7, 10, 13, 16]


def test_split_across_read_blocks(tmp_path):
  texts = [f"document {i} " + "x" * (3000 + i) for i in range(800)]  # > 2 MB
  path = tmp_path / "big.txt.gz"
  with gzip.open(path, "wt", encoding="utf-8") as f:
    f.write("\n\n".join(texts))
  it = iter_documents(data_cfg.domain_spec(str(path), separator="\n\n"))
  assert isinstance(it, types.GeneratorType)
  docs = list(it)
  assert [d.text for d in docs] == texts


def test_jsonl_text_and_prompt_response_and_gzip(tmp_path):
  docs = list(iter_documents(data_cfg.domain_spec(
      "qa/qa.jsonl", "jsonl", prompt_field="prompt", response_field="response"), FIXTURES))
  assert len(docs) == 8
  assert docs[0].prompt == "What is 2 + 3?" and docs[0].text == "2 + 3 = 5."
  assert docs[2].where.endswith("qa.jsonl:3")
  path = tmp_path / "t.jsonl.gz"
  with gzip.open(path, "wt", encoding="utf-8") as f:
    for i in range(5):
      f.write(json.dumps({"body": f"text {i}"}) + "\n")
    f.write("\n")  # blank lines are skipped
  docs = list(iter_documents(data_cfg.domain_spec(str(path), "jsonl", text_field="body")))
  assert [d.text for d in docs] == [f"text {i}" for i in range(5)]


def test_parquet_in_row_group_batches(tmp_path):
  path = tmp_path / "d.parquet"
  table = pa.table({"content": [f"row {i}" for i in range(10_000)],
                    "other": list(range(10_000))})
  pq.write_table(table, path, row_group_size=3000)
  docs = list(iter_documents(data_cfg.domain_spec(str(path), "parquet",
                                                  text_field="content")))
  assert len(docs) == 10_000
  assert docs[7777].text == "row 7777" and docs[7777].where.endswith(":row 7777")
  with pytest.raises(DataError, match=r"d\.parquet.*no column 'text'"):
    list(iter_documents(data_cfg.domain_spec(str(path), "parquet")))


def test_missing_path_and_unmatched_glob(tmp_path):
  with pytest.raises(DataError, match=r"domain 'web'.*does not exist.*nope\.txt"):
    list(iter_documents(data_cfg.domain_spec(str(tmp_path / "nope.txt")), domain="web"))
  with pytest.raises(DataError, match=r"no files match.*\*\.md"):
    list(iter_documents(data_cfg.domain_spec(str(tmp_path / "*.md"))))


def test_empty_domain(tmp_path):
  (tmp_path / "a.txt").write_text("   \n\n")
  with pytest.raises(DataError, match=r"domain 'blank'.*empty domain.*a\.txt"):
    list(iter_documents(data_cfg.domain_spec(str(tmp_path / "a.txt")), domain="blank"))


def test_non_utf8_names_file_and_line(tmp_path):
  path = tmp_path / "bad.jsonl"
  path.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
  with pytest.raises(DataError, match=r"bad\.jsonl:2: not valid UTF-8"):
    list(iter_documents(data_cfg.domain_spec(str(path), "jsonl")))
  path = tmp_path / "bad.txt"
  path.write_bytes(b"line one\nline two\n\xff\xfe three\n")
  with pytest.raises(DataError, match=r"bad\.txt:3: not valid UTF-8"):
    list(iter_documents(data_cfg.domain_spec(str(path))))


def test_jsonl_bad_line_and_missing_field(tmp_path):
  path = tmp_path / "x.jsonl"
  path.write_text('{"text": "a"}\n{"text": \n')
  with pytest.raises(DataError, match=r"x\.jsonl:2: not valid JSON"):
    list(iter_documents(data_cfg.domain_spec(str(path), "jsonl")))
  path.write_text('{"text": "a"}\n{"txt": "b"}\n')
  with pytest.raises(DataError, match=r"x\.jsonl:2: record has no field 'text'"):
    list(iter_documents(data_cfg.domain_spec(str(path), "jsonl")))
  with pytest.raises(DataError, match=r"x\.jsonl:1: record has no field 'prompt'"):
    list(iter_documents(data_cfg.domain_spec(
        str(path), "jsonl", prompt_field="prompt", response_field="response")))


def test_unknown_format_names_key():
  with pytest.raises(DataError, match="unknown format 'csv'.*'format'"):
    list(iter_documents({"paths": ["x"], "format": "csv"}, domain="d"))


def test_resolve_paths_directory(tmp_path):
  (tmp_path / "sub").mkdir()
  (tmp_path / "sub" / "b.txt").write_text("b")
  (tmp_path / "a.txt").write_text("a")
  files = sources.resolve_paths({"paths": [str(tmp_path)]}, None)
  assert [f.name for f in files] == ["a.txt", "b.txt"]
