"""Tests for the runs table: RegMix and Olmix import, validation errors, round trips."""

import pathlib

import numpy as np
import pandas as pd
import pytest

from causalmix_jax import runs as runs_lib
from causalmix_jax.runs import RunsTableError

REGMIX = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "regmix"
OLMIX = pathlib.Path(__file__).resolve().parent / "fixtures" / "olmix"
needs_regmix = pytest.mark.skipif(not (REGMIX / "train_mixture_1m.csv").exists(),
                                  reason=f"RegMix data not at {REGMIX}")


def _good_frame(n: int = 4) -> pd.DataFrame:
  rng = np.random.default_rng(0)
  w = rng.dirichlet(np.ones(3), n)
  return pd.DataFrame({
      "run_id": [f"r{i}" for i in range(n)], "seed": np.arange(n),
      "w_b": w[:, 0], "w_a": w[:, 1], "w_c": w[:, 2],
      "x_size": rng.normal(size=n), "y_loss": rng.normal(size=n) + 3.0,
  })


def _write(tmp_path, frame, name="runs.csv"):
  path = tmp_path / name
  frame.to_csv(path, index=False)
  return path


@needs_regmix
def test_regmix_import_shapes_and_names():
  r = runs_lib.load_runs(REGMIX)
  assert len(r) == 512
  assert len(r.domains) == 17 and len(r.outcomes) == 13
  assert "pile_cc" in r.domains and "pile_cc" in r.outcomes
  assert r.domains == sorted(r.domains)
  assert not any(d.startswith("train_") for d in r.domains)
  np.testing.assert_allclose(r.W.sum(1), 1.0, atol=1e-12)
  assert r.X.shape == (512, 0) and r.features == []
  assert r.constant_features == ()
  assert 0 < r.meta["n_renormalised"] < 512
  # Row 1 of the RegMix file: gutenberg 0.209, pile_cc 0.787, philpapers 0.004.
  i = list(r.run_ids).index("regmix-1")
  assert r.W[i, r.domains.index("pile_cc")] == pytest.approx(0.787, abs=1e-9)
  assert r.y("pile_cc")[i] == pytest.approx(5.169477939605713)
  assert r.tokens is None and r.epochs() is None


@needs_regmix
def test_regmix_explicit_pair_matches_directory():
  a = runs_lib.from_regmix(REGMIX / "train_mixture_1m.csv",
                           REGMIX / "train_pile_loss_1m.csv")
  b = runs_lib.load_runs(REGMIX)
  pd.testing.assert_frame_equal(a.to_frame(), b.to_frame())


def test_regmix_rounding_renormalised_and_far_rows_rejected(tmp_path):
  mix = pd.DataFrame({"index": [1, 2], "train_the_pile_a": [0.333, 0.5],
                      "train_the_pile_b": [0.333, 0.5], "train_the_pile_c": [0.333, 0.0]})
  loss = pd.DataFrame({"index": [1, 2], "metric/the_pile_a_val_loss": [3.0, 4.0]})
  mix.to_csv(tmp_path / "train_mixture_t.csv", index=False)
  loss.to_csv(tmp_path / "train_pile_loss_t.csv", index=False)
  r = runs_lib.load_runs(tmp_path)
  assert r.meta["n_renormalised"] == 1 and r.outcomes == ["a"]
  np.testing.assert_allclose(r.W.sum(1), 1.0)
  mix.loc[1, "train_the_pile_c"] = 0.05
  mix.to_csv(tmp_path / "train_mixture_t.csv", index=False)
  with pytest.raises(RunsTableError, match=r"train_mixture_t\.csv.*row 1.*index 2.*1\.05"):
    runs_lib.load_runs(tmp_path)


def test_olmix_fixture_import():
  r = runs_lib.load_runs(OLMIX)
  assert len(r) == 12 and len(r.domains) == 4
  assert r.meta["format"] == "olmix"
  assert "eval_arc_easy_accuracy" in r.maximize
  assert r.meta["outcome_names"]["eval_arc_easy_BPB_v2"] == "eval/arc_easy (BPB v2)"
  assert r.meta["domain_names"]["dclm_software"] == "dclm:software"
  np.testing.assert_allclose(r.W.sum(1), 1.0, atol=1e-12)
  tokens = r.tokens
  assert tokens is not None and tokens.shape == (12, 4)
  assert tokens[0, r.domains.index("dclm_software")] == 4e8
  ep = r.epochs()
  np.testing.assert_allclose(ep, r.W * 6e8 / tokens)
  ratios = pd.read_csv(OLMIX / "ratios.csv")
  j = r.domains.index("dclm_health")
  np.testing.assert_allclose(r.W[:, j], ratios["dclm:health"] / ratios.iloc[:, 2:].sum(axis=1))


def test_properties_select_with_outcome(tmp_path):
  r = runs_lib.load_runs(_write(tmp_path, _good_frame(6)), maximize=["loss"])
  assert r.domains == ["a", "b", "c"] and r.features == ["size"]
  assert r.maximize == {"loss"}
  sub = r.select(np.array([True, False, True, False, True, False]))
  assert list(sub.run_ids) == ["r0", "r2", "r4"]
  assert list(r.select([5, 1]).run_ids) == ["r5", "r1"]
  r2 = r.with_outcome("acc", np.arange(6.0), maximize=True)
  assert r2.outcomes == ["loss", "acc"] and r2.maximize == {"loss", "acc"}
  np.testing.assert_array_equal(r2.y("y_acc"), np.arange(6.0))
  with pytest.raises(KeyError, match="nope"):
    r.y("nope")
  # The matrices are read once per table; what a caller does to its copy stays there.
  w = r.W
  w[:] = -1.0
  x = r.X
  x[:] = np.nan
  np.testing.assert_array_equal(r.W, r.to_frame()[["w_a", "w_b", "w_c"]].to_numpy())
  np.testing.assert_array_equal(r.X, r.to_frame()[["x_size"]].to_numpy())
  np.testing.assert_array_equal(sub.W, r.W[[0, 2, 4]])


def test_select_equals_validating_the_subset(tmp_path):
  frame = _good_frame(6)
  frame["x_flag"] = [1.0, 2.0, 1.0, 2.0, 1.0, 2.0]  # constant on the even rows
  r = runs_lib.load_runs(_write(tmp_path, frame), maximize=["loss"])
  rows = [4, 0, 2]
  fast = r.select(rows)
  slow = runs_lib.Runs(r.to_frame().iloc[rows], source=r.source, maximize=r.maximize,
                       meta=r.meta, outcomes=r.checked_outcomes)
  pd.testing.assert_frame_equal(fast.to_frame(), slow.to_frame())
  assert fast.constant_features == slow.constant_features
  assert "x_flag" in fast.constant_features and "x_flag" not in r.constant_features
  assert (fast.maximize, fast.meta, fast.source) == (slow.maximize, slow.meta, slow.source)
  with pytest.raises(runs_lib.RunsTableError, match="no rows"):
    r.select(np.zeros(6, bool))


@pytest.mark.parametrize("mutate, pattern", [
    (lambda f: f.drop(columns=["run_id"]), r"bad\.csv, column 'run_id'.*missing"),
    (lambda f: f.drop(columns=["seed"]), r"bad\.csv, column 'seed'.*missing"),
    (lambda f: f.drop(columns=["w_a", "w_b", "w_c"]), r"bad\.csv, column 'w_<domain>'"),
    (lambda f: f.assign(w_a=f.w_a.mask(f.index == 2)),
     r"bad\.csv, column 'w_a', row 2 \(run_id 'r2'\): NaN"),
    (lambda f: f.assign(x_size=f.x_size.mask(f.index == 1)),
     r"bad\.csv, column 'x_size', row 1 \(run_id 'r1'\): NaN"),
    (lambda f: f.assign(y_loss=f.y_loss.mask(f.index == 3)),
     r"bad\.csv, column 'y_loss', row 3 \(run_id 'r3'\): NaN/inf outcome"),
    (lambda f: f.assign(w_b=np.where(f.index == 1, -0.1, f.w_b),
                        w_a=np.where(f.index == 1, f.w_a + f.w_b + 0.1, f.w_a)),
     r"bad\.csv, column 'w_b', row 1 \(run_id 'r1'\): negative weight"),
    (lambda f: f.assign(w_c=np.where(f.index == 2, f.w_c + 1e-3, f.w_c)),
     r"bad\.csv, column 'w_\*', row 2 \(run_id 'r2'\): weights sum to 1\.001"),
    (lambda f: f.assign(run_id=["r0", "r1", "r0", "r3"]),
     r"bad\.csv, column 'run_id': duplicated run_id 'r0' in rows 0, 2"),
    (lambda f: f.assign(x_size=["1.0", "big", "2", "3"]),
     r"bad\.csv, column 'x_size', row 1 \(run_id 'r1'\): non-numeric value 'big'"),
    (lambda f: f.assign(seed=[0, 1, 2.5, 3]),
     r"bad\.csv, column 'seed', row 2 \(run_id 'r2'\): seed must be an integer"),
    (lambda f: f.assign(tokens_a=[1e6, 0.0, 1e6, 1e6], tokens_b=1e6, tokens_c=1e6),
     r"bad\.csv, column 'tokens_a', row 1 \(run_id 'r1'\): token counts must be > 0"),
])
def test_validation_errors_name_file_column_row(tmp_path, mutate, pattern):
  path = _write(tmp_path, mutate(_good_frame()), "bad.csv")
  with pytest.raises(RunsTableError, match=pattern):
    runs_lib.load_runs(path)


def test_failed_runs_may_lack_outcomes(tmp_path):
  f = _good_frame()
  f["status"] = ["ok", "diverged", "ok", "ok"]
  f.loc[1, "y_loss"] = np.nan
  r = runs_lib.load_runs(_write(tmp_path, f))
  np.testing.assert_array_equal(r.ok, [True, False, True, True])
  assert np.isnan(r.y("loss")[1])


def test_constant_covariates_are_a_warning(tmp_path):
  f = _good_frame().assign(x_const=7.0)
  r = runs_lib.load_runs(_write(tmp_path, f))
  assert r.constant_features == ("x_const",)


def test_parquet_csv_round_trip(tmp_path):
  f = _good_frame(5)
  f["tokens_a"], f["tokens_b"], f["tokens_c"] = 1e9, 2e9, 3e9
  f["budget_tokens"] = 5e8
  f["status"] = "ok"
  r = runs_lib.Runs(f, source="mem", maximize=["loss"], meta={"note": "x"})
  out = runs_lib.write_runs(r, tmp_path / "sweep" / "runs.parquet")
  assert out.exists() and (tmp_path / "sweep" / "runs.csv").exists()
  assert not [p for p in (tmp_path / "sweep").iterdir() if p.name.startswith(".")]
  back_pq = runs_lib.load_runs(out)
  back_csv = runs_lib.load_runs(tmp_path / "sweep" / "runs.csv")
  back_dir = runs_lib.load_runs(tmp_path / "sweep")
  pd.testing.assert_frame_equal(back_pq.to_frame(), r.to_frame())
  pd.testing.assert_frame_equal(back_csv.to_frame(), r.to_frame())
  assert back_pq.maximize == {"loss"} and back_pq.meta == {"note": "x"}
  assert back_dir.maximize == {"loss"}
  np.testing.assert_allclose(back_pq.epochs(), r.W * 5e8 / np.array([1e9, 2e9, 3e9]))


def test_several_files_concatenate_and_clash(tmp_path):
  a = _write(tmp_path, _good_frame(3), "a.csv")
  b_frame = _good_frame(3).assign(run_id=["s0", "s1", "s2"])
  b = _write(tmp_path, b_frame, "b.csv")
  r = runs_lib.load_runs([a, b])
  assert len(r) == 6 and r.domains == ["a", "b", "c"]
  dup = _write(tmp_path, _good_frame(3), "dup.csv")
  with pytest.raises(RunsTableError, match=r"dup\.csv, column 'run_id', row 0.*'r0'.*a\.csv"):
    runs_lib.load_runs([a, dup])
  other = _good_frame(3).rename(columns={"w_c": "w_d"}).assign(run_id=["t0", "t1", "t2"])
  o = _write(tmp_path, other, "other.csv")
  with pytest.raises(RunsTableError, match=r"other\.csv.*domains differ"):
    runs_lib.load_runs([a, o])


def test_missing_path_and_empty_dir(tmp_path):
  with pytest.raises(RunsTableError, match="no such file"):
    runs_lib.load_runs(tmp_path / "nope.csv")
  with pytest.raises(RunsTableError, match="holds no runs table"):
    runs_lib.load_runs(tmp_path)


def test_scales_are_the_varying_size_columns_and_bad_ones_are_named():
  frame = pd.DataFrame({"run_id": ["a", "b", "c"], "seed": 0, "w_x": [0.5, 0.2, 1.0],
                        "w_y": [0.5, 0.8, 0.0], "y_loss": [1.0, 2.0, 3.0],
                        "params": [1e6, 1e7, 1e7], "budget_tokens": 5e8})
  runs = runs_lib.Runs(frame, source="t.csv")
  np.testing.assert_allclose(runs.scales(), [[6.0], [7.0], [7.0]])  # budget is constant
  bad = runs_lib.Runs(frame.assign(params=[1e6, 0.0, 1e7]), source="t.csv")
  with pytest.raises(runs_lib.RunsTableError,
                     match=r"t\.csv, column 'params', row 1 \(run_id 'b'\): params varies"):
    bad.scales()
