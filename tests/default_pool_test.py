"""Tests for the shipped default pool: manifest, files, fields, licences, math, target."""

from __future__ import annotations

import functools
import gzip
import json
import pathlib
import re

import pytest

POOL_DIR = (pathlib.Path(__file__).resolve().parent.parent / "causalmix_jax" / "data"
            / "default_pool")
ENTRY_KEYS = {"paths", "format", "text_field", "prompt_field", "response_field"}
MAX_COMPRESSED_BYTES = 5 * 1024 * 1024
_STEP = re.compile(
    r"^Step (\d+): (?:[^:]*: )?(-?\d+) ([-+*/]) (-?\d+) = (-?\d+)(?: remainder (\d+))?$")


@functools.cache
def manifest() -> dict:
  return json.loads((POOL_DIR / "manifest.json").read_text(encoding="utf-8"))


@functools.cache
def records(file_name: str) -> tuple[dict, ...]:
  with gzip.open(POOL_DIR / file_name, "rt", encoding="utf-8") as f:
    return tuple(json.loads(line) for line in f)


def entries() -> dict[str, dict]:
  return {**manifest()["domains"], "target_eval": manifest()["target_eval"]}


def fields(entry: dict) -> list[str]:
  return [entry[k] for k in ("text_field", "prompt_field", "response_field") if entry[k]]


def texts(name: str) -> set[str]:
  entry = entries()[name]
  return {"\n".join(r[f] for f in fields(entry)) for path in entry["paths"]
          for r in records(path)}


def test_manifest_is_valid_and_files_exist():
  m = manifest()
  assert set(m) == {"domains", "target_eval", "licenses"}
  assert len(m["domains"]) >= 6
  for name, entry in entries().items():
    assert set(entry) == ENTRY_KEYS, name
    assert entry["format"] == "jsonl", name
    assert entry["paths"] == [f"{name}.jsonl.gz"], name
    assert (POOL_DIR / entry["paths"][0]).is_file(), name
    if entry["text_field"]:
      assert not entry["prompt_field"] and not entry["response_field"], name
    else:
      assert entry["prompt_field"] and entry["response_field"], name
  assert m["domains"]["math"]["prompt_field"] == "prompt"
  assert m["domains"]["math"]["response_field"] == "response"
  listed = {p for e in entries().values() for p in e["paths"]}
  on_disk = {p.name for p in POOL_DIR.glob("*.jsonl.gz")}
  assert listed == on_disk


def test_every_line_has_the_declared_fields_and_is_clean():
  for name, entry in entries().items():
    for i, rec in enumerate(records(entry["paths"][0])):
      for f in fields(entry):
        value = rec.get(f)
        assert isinstance(value, str) and value.strip(), f"{name} line {i + 1}: {f}"
        assert "\r" not in value and "\t" not in value, f"{name} line {i + 1}"
        assert value == value.strip("\n"), f"{name} line {i + 1}"


def test_domains_have_enough_documents_and_differing_sizes():
  sizes = {}
  for name, entry in manifest()["domains"].items():
    recs = records(entry["paths"][0])
    assert len(recs) >= 50, name
    sizes[name] = sum(len(v.encode("utf-8")) for r in recs for v in r.values())
    assert sizes[name] >= 100_000, name
    assert len(texts(name)) == len(recs), f"{name} has exact duplicates"
  assert max(sizes.values()) >= 3 * min(sizes.values()), sizes


def test_directory_is_small():
  total = sum(p.stat().st_size for p in POOL_DIR.iterdir() if p.is_file())
  assert total <= MAX_COMPRESSED_BYTES


def test_gzip_is_deterministic():
  for path in POOL_DIR.glob("*.jsonl.gz"):
    header = path.read_bytes()[:10]
    assert header[:3] == b"\x1f\x8b\x08", path.name
    assert header[3] == 0, f"{path.name} stores a file name"
    assert header[4:8] == b"\0\0\0\0", f"{path.name} stores an mtime"


def test_licences_cover_every_domain():
  lic = manifest()["licenses"]
  licences_md = (POOL_DIR / "LICENSES.md").read_text(encoding="utf-8")
  readme = (POOL_DIR / "README.md").read_text(encoding="utf-8")
  for name in entries():
    assert len(lic.get(name, "")) > 20, name
    assert f"## {name}" in licences_md, name
    assert f"`{name}`" in readme, name
  assert "scripts/build_default_pool.py" in readme


def test_math_worked_steps_are_correct():
  n_checked = 0
  for rec in records("math.jsonl.gz"):
    lines = rec["response"].split("\n")
    assert lines[-1].startswith("Answer: "), rec
    last = None
    for k, line in enumerate(lines[:-1], start=1):
      m = _STEP.match(line)
      assert m, f"unparsable step {line!r}"
      step, a, op, b, c, rem = m.groups()
      a, b, c, step = int(a), int(b), int(c), int(step)
      assert step == k, line
      if op == "+":
        assert a + b == c, line
      elif op == "-":
        assert a - b == c, line
      elif op == "*":
        assert a * b == c, line
      elif rem is None:
        assert b != 0 and a == b * c, line
      else:
        assert 0 <= int(rem) < b and a == b * c + int(rem), line
      last = (c, rem)
      n_checked += 1
    assert last is not None, rec
    answer_numbers = re.findall(r"-?\d+", lines[-1])
    assert str(last[0]) in answer_numbers, rec
    if last[1] is not None:
      assert last[1] in answer_numbers, rec
  assert n_checked >= 1000


def test_math_prompts_are_distinct():
  prompts = [r["prompt"] for r in records("math.jsonl.gz")]
  assert len(set(prompts)) == len(prompts)


def test_target_eval_differs_from_every_domain():
  target = texts("target_eval")
  assert len(target) >= 50
  for name in manifest()["domains"]:
    assert not target & texts(name), name


@pytest.mark.parametrize("name", ["code", "docs", "literature", "scripture"])
def test_domains_look_like_their_source(name):
  sample = list(texts(name))[:50]
  marker = {"code": r"^(?:@|def |class |async def )", "docs": r"\*[\w.-]+\*|\|[\w.-]+\|",
            "literature": r"^[A-Z][A-Za-z. ]+\.$", "scripture": r"^1 "}[name]
  hits = sum(bool(re.search(marker, t, re.M)) for t in sample)
  assert hits >= 45, (name, hits)
