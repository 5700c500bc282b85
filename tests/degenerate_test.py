"""Degenerate inputs fail early with errors that name what is wrong: sparse and broken
runs tables, runs a surface cannot learn from, bad recommend arguments, covariates off
the sweep's range, unreadable source files and unusable pool domains."""

from __future__ import annotations

import functools
import gzip
import logging
import shutil

import numpy as np
import pandas as pd
import pytest

import fixture_pool
from causalmix_jax import api
from causalmix_jax import runs as runs_lib
from causalmix_jax.configs import base
from causalmix_jax.configs import data as data_cfg
from causalmix_jax.data import pool as pool_lib
from causalmix_jax.data import sources
from causalmix_jax.runs import DegenerateRunsError, RunsTableError
from causalmix_jax.surface import fit

# Its module-level fixtures and caches are built once: one xdist worker runs it all.
pytestmark = pytest.mark.xdist_group("degenerate")

SMALL_SEARCH = dict(n_candidates=64, n_steps=4)


def _frame(n: int = 16, seed: int = 0) -> pd.DataFrame:
  """n runs over three domains, one varying and one constant covariate, an outcome
  every run has (loss) and per-task scores each run has only for its own task."""
  rng = np.random.default_rng(seed)
  w = rng.dirichlet(np.ones(3), n)
  x = rng.integers(0, 2, n).astype(float)
  task = np.arange(n) % 2
  return pd.DataFrame({
      "run_id": [f"r{i}" for i in range(n)], "seed": 0,
      "w_a": w[:, 0], "w_b": w[:, 1], "w_c": w[:, 2], "x_size": x, "x_const": 1.0,
      "y_loss": 3.0 - w[:, 0] + 0.1 * x + 0.01 * rng.normal(size=n),
      "y_task_a": np.where(task == 0, w[:, 1], np.nan),
      "y_task_b": np.where(task == 1, w[:, 2], np.nan)})


@functools.lru_cache(maxsize=None)
def _surface():
  runs = runs_lib.Runs(_frame(), outcomes=["loss"])
  return api.fit_surface(runs, "loss", method="dml")


# -- runs tables ---------------------------------------------------------------------------


def test_sparse_outcomes_load_when_only_the_fitted_one_is_checked(tmp_path):
  path = tmp_path / "sparse.csv"
  _frame().to_csv(path, index=False)
  with pytest.raises(RunsTableError, match=r"sparse\.csv, column 'y_task_a'.*8 such rows"):
    runs_lib.load_runs(path)
  runs = runs_lib.load_runs(path, outcomes=["y_loss"])
  assert runs.checked_outcomes == ("loss",)
  assert len(runs.select(np.arange(12))) == 12  # revalidation keeps the same scope
  with pytest.raises(RunsTableError,
                     match=r"sparse\.csv, column 'y_task_b': NaN/inf outcome in 8 of 16"):
    fit.fit_surface(runs, "task_b", method="dml")
  with pytest.raises(RunsTableError, match=r"column 'y_nope'.*outcome column is missing"):
    runs_lib.load_runs(path, outcomes=["nope"])


def test_sparse_table_is_fittable_for_a_complete_outcome():
  s = _surface()
  assert s.outcome == "loss" and s.info["n_runs"] == 16


def test_missing_weight_column_is_named(tmp_path):
  full = _frame()
  no_c = full.drop(columns=["w_c"])
  with pytest.raises(RunsTableError, match=r"column 'w_\*': every row's weights sum "
                     r"below 1.*a w_<domain> column looks missing"):
    runs_lib.Runs(no_c, outcomes=["loss"])
  with pytest.raises(RunsTableError, match=r"column 'w_c': required column is missing "
                     r"\(its tokens_ column"):
    runs_lib.Runs(no_c.assign(tokens_a=1e6, tokens_b=1e6, tokens_c=1e6), outcomes=["loss"])
  with pytest.raises(RunsTableError, match=r"column 'w_c': required column is missing "
                     r"\(the table's metadata"):
    runs_lib.Runs(no_c, outcomes=["loss"], meta={"domains": ["a", "b", "c"]})
  a, b = tmp_path / "a.csv", tmp_path / "b.csv"
  full.to_csv(a, index=False)
  no_c.assign(run_id=[f"s{i}" for i in range(len(no_c))]).to_csv(b, index=False)
  with pytest.raises(RunsTableError, match=r"b\.csv, column 'w_c': required column is "
                     r"missing \(every row's weights sum below 1"):
    runs_lib.load_runs([a, b], outcomes=["loss"])


def test_constant_covariate_warning_is_short_and_once(caplog):
  f = _frame().assign(**{f"x_k{i}": 1.0 for i in range(9)})
  with caplog.at_level(logging.WARNING, logger="causalmix_jax.runs"):
    runs = runs_lib.Runs(f, source="once.csv", outcomes=["loss"])
    runs.select(np.arange(10)).with_outcome("twice", np.ones(10))
    runs_lib.Runs(f, source="once.csv", outcomes=["loss"])
  lines = [r.getMessage() for r in caplog.records if "constant covariate" in r.getMessage()]
  assert len(lines) == 1, lines
  assert lines[0].startswith("once.csv: 10 constant covariate column(s)")
  assert lines[0].endswith("and 5 more")


# -- surfaces ------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["stack", "dml"])
def test_degenerate_runs_are_named_before_any_fit(method, caplog):
  f = _frame()
  cases = [
      (f.assign(y_loss=2.5), r"src\.csv, column 'y_loss': the outcome is constant "
                             r"\(2\.5 in all 16 usable runs\)"),
      (f.assign(w_a=0.2, w_b=0.3, w_c=0.5),
       r"src\.csv, column 'y_loss': the mixture effect is unidentifiable: the 16 usable "
       r"runs use 1 distinct mixture"),
      (f.assign(status=["ok"] * 9 + ["diverged"] * 7),
       r"src\.csv, column 'y_loss': 9 usable runs \(7 more with a status other than "
       rf"'ok'\); the '{method}' surface needs at least 10"),
  ]
  for frame, match in cases:
    runs = runs_lib.Runs(frame, source="src.csv", outcomes=["loss"])
    with caplog.at_level(logging.WARNING):
      with pytest.raises(DegenerateRunsError, match=match):
        fit.fit_surface(runs, "loss", method=method)
  assert "stacking needs" not in caplog.text  # checked before the stack's fallback


def test_predict_warns_once_when_covariates_leave_the_sweep_range(caplog):
  s = _surface()  # may warn about the table's constant column: not what is tested
  w = np.full((1, 3), 1 / 3)
  caplog.clear()
  with caplog.at_level(logging.WARNING, logger="causalmix_jax.surface.surface"):
    s.predict(w, {"size": 0.5, "const": 1.0})
    assert not caplog.records
    s.predict(w, {"size": 4.0, "const": 1.0})
    s.predict(w, {"size": 9.0, "const": 1.0})
  assert len(caplog.records) == 1
  msg = caplog.records[0].getMessage()
  assert "furthest: size = 4" in msg and "sweep sd from its mean" in msg


# -- recommend -----------------------------------------------------------------------------


def test_recommend_with_few_starts():
  s = _surface()
  for n_starts in (1, 4):
    rec = api.recommend(s, covariates={"size": 1.0, "const": 1.0}, method="S",
                        n_starts=n_starts, **SMALL_SEARCH)
    assert abs(sum(rec.weights.values()) - 1.0) < 1e-9


@pytest.mark.parametrize("kw,match", [
    (dict(n_starts=0), r"n_starts must be >= 1, got 0"),
    (dict(n_candidates=0), r"n_candidates must be >= 1"),
    (dict(n_steps=-1), r"n_steps must be >= 0"),
    (dict(n_starts=2.5), r"n_starts must be an integer"),
    (dict(seed=-1), r"seed must be >= 0"),
    (dict(ci=1.0), r"ci must be in \(0, 1\)"),
    (dict(ci=float("nan")), r"ci must be in \(0, 1\)"),
    (dict(covariates={"size": float("nan"), "const": 1.0}),
     r"covariates: non-finite value for feature\(s\) \['size'\]"),
    (dict(constraints={"budget_tokens": -5.0}), r"constraints.budget_tokens must be > 0"),
    (dict(constraints={"tokens": {"a": 1e6, "b": 0.0, "c": 1e6}, "budget_tokens": 1e6}),
     r"constraints.tokens\['b'\] must be > 0"),
    (dict(reference=[float("nan"), 0.5, 0.5]), r"reference: non-finite weight.*\['a'\]"),
])
def test_recommend_arguments_are_checked(kw, match):
  with pytest.raises(ValueError, match=match):
    api.recommend(_surface(), **{"method": "A", **kw})


# -- sources and pools ---------------------------------------------------------------------


def _jsonl(n: int) -> bytes:
  return "".join(f'{{"text": "document number {i}"}}\n' for i in range(n)).encode()


@pytest.mark.parametrize("name,content,match", [
    ("cut.jsonl.gz", lambda: gzip.compress(_jsonl(4000))[:-2000],
     r"cut\.jsonl\.gz:\d+: truncated gzip file.*\(domain 'web', decompressed byte offset "
     r"\d+\)"),
    ("plain.jsonl.gz", lambda: _jsonl(3),
     r"plain\.jsonl\.gz:1: not a gzip file.*\(domain 'web', decompressed byte offset 0\)"),
    ("utf.jsonl", lambda: b'{"text": "ok"}\n{"text": "\xff"}\n',
     r"utf\.jsonl:2: not valid UTF-8.*\(domain 'web', byte offset 25\)"),
    ("bad.jsonl", lambda: b'{"text": "ok"}\n{"text": oops}\n',
     r"bad\.jsonl:2: not valid JSON \(Expecting value at column 10\) \(domain 'web', "
     r"byte offset 24\)"),
])
def test_unreadable_sources_name_file_domain_and_place(tmp_path, name, content, match):
  path = tmp_path / name
  path.write_bytes(content())
  with pytest.raises(sources.SourceError, match=match):
    list(sources.iter_documents({"paths": [str(path)], "format": "jsonl"}, domain="web"))


def _pool_config(extra: dict):
  cfg = base.get_config("smoke")
  with cfg.unlocked():
    cfg.pool.source = "files"
    cfg.pool.domains = {**fixture_pool.domains(), **extra}
    cfg.pool.target_eval = fixture_pool.target_eval()
    cfg.pool.heldout_fraction = 0.2
  return cfg


def test_pool_refuses_tiny_and_duplicate_domains(tmp_path):
  tiny = tmp_path / "tiny.txt"
  tiny.write_text("0123456789")
  out = tmp_path / "out"
  need = int(base.get_config("smoke").proxy.model.seq_len) + 1
  with pytest.raises(sources.DataError, match=rf"domain 'tiny' is too small: .*minimum of "
                     rf"{need} training tokens.*'tiny': 12 training tokens"):
    pool_lib.build_pool(_pool_config({"tiny": data_cfg.domain_spec(str(tiny))}), out)
  assert not out.exists() or not (out / "tokens").exists()
  notes = fixture_pool.FIXTURES / "prose" / "notes.txt"
  for name in ("Prose", "pro-se"):
    with pytest.raises(sources.DataError, match=rf"domain names 'prose' and '{name}'|"
                       rf"domain names '{name}' and 'prose'"):
      pool_lib.build_pool(_pool_config({name: data_cfg.domain_spec(str(notes))}), out)
  with pytest.raises(sources.DataError, match=r"domains 'prose' and 'zprose' read the "
                     r"same files"):
    pool_lib.build_pool(_pool_config({"zprose": data_cfg.domain_spec(
        str(notes), separator="\n%\n")}), out)
  copy = tmp_path / "copy.txt"
  shutil.copy(notes, copy)
  with pytest.raises(sources.DataError, match=r"domains 'copy' and 'prose' hold "
                     r"identical documents"):
    pool_lib.build_pool(_pool_config({"copy": data_cfg.domain_spec(
        str(copy), separator="\n%\n")}), out)


def test_a_single_pool_state_is_warned_once(caplog):
  frame = _frame(n=24, seed=3).assign(x_size=1.0)
  frame["x_other"] = 2.0
  runs = runs_lib.Runs(frame, source="one_state.csv", outcomes=["loss"])
  with caplog.at_level(logging.WARNING):
    fit.check_runs(runs, "loss", "dml", fit.default_config())
    fit.check_runs(runs, "loss", "dml", fit.default_config())
  msgs = [r.getMessage() for r in caplog.records if "one pool state" in r.getMessage()]
  assert len(msgs) == 1
  assert msgs[0].startswith("one_state.csv, column 'y_loss': every run has the same "
                            "covariates (one pool state)")
