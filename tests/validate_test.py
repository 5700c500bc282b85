"""Tests of the validation statistics: distinct mixtures share runs, the design trains
each for every seed with common seeds, the table's paired differences and intervals
are those of the realized outcomes, and the comparison over several studies (and its
script, experiments/shift/compare.py) counts them."""

import importlib
import json
import pathlib
import subprocess
import sys
import types

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from causalmix_jax import validation
from causalmix_jax.configs import base
from causalmix_jax.recommendation import Improvement, Interval, Recommendation


def test_distinct_mixtures_share_rows_and_design_pairs_seeds():
  mixtures = validation.candidate_mixtures(
      ["recommended", "uniform", "natural"], ["a", "b"], recommended=[0.7, 0.3],
      tokens_D=np.array([10.0, 10.0]), pick=lambda n: pytest.fail(f"no pick for {n}"))
  w_MxD, index = validation.distinct(mixtures)
  assert len(w_MxD) == 2 and index == {"recommended": 0, "uniform": 1, "natural": 1}
  d = validation.design(w_MxD, seeds=3, n_tokens_D=np.array([10, 20]), budget=64)
  assert list(d["run_id_N"]) == ["v0-r0", "v0-r1", "v0-r2", "v1-r0", "v1-r1", "v1-r2"]
  assert list(d["seed_N"]) == [0, 1, 2, 0, 1, 2]
  np.testing.assert_allclose(d["w_NxD"][3], [0.5, 0.5])


def test_table_paired_differences_and_intervals():
  rec = np.array([1.0, 2.0, 3.0])
  other = rec + np.array([0.1, 0.3, 0.2])  # paired: differences vary far less than levels
  runs = pd.DataFrame({"run_id": [f"v{m}-r{s}" for m in range(2) for s in range(3)],
                       "seed": [0, 1, 2] * 2, "y_target": np.concatenate([rec, other])})
  t = validation.table(runs, {"recommended": 0, "uniform": 1}, "target", ci=0.9,
                       predicted={"recommended": (2.0, 0.5, 2.5), "uniform": (9, 8, 10)})
  r = t.set_index("mixture")
  assert r.loc["uniform", "diff_vs_recommended"] == pytest.approx(0.2)
  half = 2.919986 * 0.1 / np.sqrt(3)  # t(0.95, 2) * sd / sqrt(n)
  assert r.loc["uniform", "diff_hi"] - 0.2 == pytest.approx(half, rel=1e-4)
  assert r.loc["uniform", "hi"] - r.loc["uniform", "mean"] > 5 * half  # unpaired is wide
  assert r.loc["recommended", "runs_in_predicted_interval"] == pytest.approx(2 / 3)
  assert r.loc["uniform", "runs_in_predicted_interval"] == 0.0
  assert bool(r.loc["recommended", "best"]) and not bool(r.loc["uniform", "best"])
  md = validation.markdown(t, {"recommended": np.array([0.5, 0.5])}, ["a", "b"],
                           "target", 0.9)
  assert "| recommended (best) | 3 | 2.0000 |" in md


def test_bad_validate_config_is_named():
  cfg = base.get_config("smoke")
  cfg.validate.mixtures = ("recommended", "nope")
  with pytest.raises(validation.ValidationError, match=r"validate\.mixtures.*'nope'"):
    validation.check_config(cfg.validate)
  cfg.validate.mixtures = ("uniform",)
  with pytest.raises(validation.ValidationError, match="must include 'recommended'"):
    validation.check_config(cfg.validate)
  cfg.validate.mixtures = ("recommended",)
  cfg.validate.scale = "huge"
  with pytest.raises(validation.ValidationError, match=r"validate\.scale='huge'"):
    validation.check_config(cfg.validate)


def test_best_known_is_the_sweeps_best_known_mixture_or_a_named_error():
  cfg = base.get_config("smoke")
  assert "best_known" in cfg.validate.mixtures
  surface = types.SimpleNamespace(domains=("a", "b"), support_stats={
      "best_w": [[0.2, 0.8], [0.5, 0.5]]})
  pick = validation.make_picker(cfg, None, surface, {}, {"a": 10.0, "b": 10.0}, 64.0)
  np.testing.assert_allclose(pick("best_known"), [0.2, 0.8])
  bare = types.SimpleNamespace(domains=("a", "b"), support_stats={})
  pick = validation.make_picker(cfg, None, bare, {}, {"a": 10.0, "b": 10.0}, 64.0)
  with pytest.raises(validation.ValidationError, match="validate.mixtures.*best_known"):
    pick("best_known")


def _study(diffs: dict[str, tuple[float, float, float]], means: dict[str, float],
           over_uniform: tuple[float, float, float], maximize: bool = False,
           outcome: str = "target"):
  """A validation table (paired differences mixture - recommended) and a
  Recommendation reporting `over_uniform` (mean, lo, hi) as its gain over uniform."""
  rows = [{"mixture": "recommended", "mean": means["recommended"], "diff_vs_recommended": 0.0,
           "diff_lo": 0.0, "diff_hi": 0.0}]
  rows += [{"mixture": n, "mean": means[n], "diff_vs_recommended": d, "diff_lo": lo,
            "diff_hi": hi} for n, (d, lo, hi) in diffs.items()]
  iv = Interval(1.0, 0.9, 1.1)
  imp = Improvement(*over_uniform, 0.9)
  rec = Recommendation(domains=("a", "b"), weights={"a": 0.5, "b": 0.5}, predicted=iv,
                       reference={"a": 0.5, "b": 0.5}, reference_predicted=iv,
                       uniform_predicted=iv, improvement_over_reference=imp,
                       improvement_over_uniform=imp, outcome=outcome, maximize=maximize,
                       method="S", objective="safe")
  return pd.DataFrame(rows), rec


def test_compare_studies_counts_verdicts_and_checks_reported_gains():
  t1, r1 = _study({"uniform": (0.10, 0.05, 0.15), "regmix": (-0.02, -0.05, 0.01)},
                  {"recommended": 2.9, "uniform": 3.0, "regmix": 2.88},
                  over_uniform=(0.3, 0.2, 0.4))
  t2, r2 = _study({"uniform": (0.02, -0.01, 0.05), "regmix": (-0.06, -0.09, -0.03)},
                  {"recommended": 2.95, "uniform": 2.97, "regmix": 2.89},
                  over_uniform=(0.03, 0.0, 0.1))
  out = validation.compare_studies([("s1", t1, r1), ("s2", t2, r2)])
  uni, reg = out["mixtures"]["uniform"], out["mixtures"]["regmix"]
  assert uni["per_study"]["s1"] == {"gain": 0.10, "lo": 0.05, "hi": 0.15,
                                    "verdict": "better"}
  assert (uni["better"], uni["level"], uni["worse"]) == (1, 1, 0)
  assert (reg["better"], reg["level"], reg["worse"]) == (0, 1, 1)
  assert out["best"] == {"s1": "regmix", "s2": "regmix"}
  assert [c["where"] for c in out["reported"]["uniform"]] == ["below", "inside"]
  assert "best_known" not in out["reported"]  # not reported by these recommendations
  # Pooled over the two studies: mean 0.06, t interval (1 dof, 90%) by hand.
  half = stats.t.ppf(0.95, 1) * np.std([0.10, 0.02], ddof=1) / np.sqrt(2)
  assert uni["pooled"]["studies"] == 2 and uni["pooled"]["verdict"] == "level"
  assert uni["pooled"]["gain"] == pytest.approx(0.06)
  assert uni["pooled"]["lo"] == pytest.approx(0.06 - half)
  assert uni["pooled"]["hi"] == pytest.approx(0.06 + half)
  md = validation.comparison_markdown(out)
  assert ("| uniform | +0.100 [+0.050, +0.150] | +0.020 [-0.010, +0.050] | 1 / 1 / 0 | "
          f"+0.0600 [{0.06 - half:+.4f}, {0.06 + half:+.4f}] level (n=2) |") in md
  assert "1 of 2 inside the reported interval" in md
  # A maximised outcome: the differences turn, so a mixture that scored higher wins.
  t3, r3 = _study({"uniform": (0.10, 0.05, 0.15)}, {"recommended": 0.5, "uniform": 0.6},
                  over_uniform=(0.1, 0.0, 0.2), maximize=True, outcome="acc")
  up = validation.compare_studies([("m", t3, r3)])
  assert up["mixtures"]["uniform"]["per_study"]["m"] == {
      "gain": -0.10, "lo": -0.15, "hi": -0.05, "verdict": "worse"}
  assert up["best"] == {"m": "uniform"} and up["reported"]["uniform"][0]["where"] == "below"


def test_pooled_gain_adds_up_gains_too_small_to_tell_apart_one_study_at_a_time():
  # Ten designs, each gain level on its own (its interval straddles 0), all positive.
  gains = [0.010, 0.014, 0.008, 0.012, 0.011, 0.009, 0.013, 0.010, 0.012, 0.011]
  p = validation.pooled_gain(gains, 0.9)
  assert p["studies"] == 10 and p["verdict"] == "better" and p["lo"] > 0
  assert p["gain"] == pytest.approx(np.mean(gains))
  assert validation.pooled_gain([-g for g in gains], 0.9)["verdict"] == "worse"
  assert validation.pooled_gain([0.02, -0.02, 0.01, -0.01], 0.9)["verdict"] == "level"
  assert validation.pooled_gain([0.0, 0.0, 0.0], 0.9)["verdict"] == "same"
  one = validation.pooled_gain([0.05], 0.9)
  assert one == {"studies": 1, "gain": 0.05, "lo": None, "hi": None, "verdict": "level"}
  # A wider level widens the interval.
  assert (validation.pooled_gain(gains, 0.99)["lo"]
          < validation.pooled_gain(gains, 0.9)["lo"])


def test_compare_studies_names_bad_input():
  t1, r1 = _study({"uniform": (0.1, 0.0, 0.2)}, {"recommended": 1.0, "uniform": 1.1},
                  over_uniform=(0.1, 0.0, 0.2))
  with pytest.raises(validation.ValidationError, match="study s2: the validation table "
                     "has no 'recommended' row"):
    validation.compare_studies([("s1", t1, r1), ("s2", t1.iloc[1:], r1)])
  _, r_acc = _study({}, {"recommended": 1.0}, (0, 0, 0), maximize=True, outcome="acc")
  with pytest.raises(validation.ValidationError, match="study s2: outcome 'acc'"):
    validation.compare_studies([("s1", t1, r1), ("s2", t1, r_acc)])
  with pytest.raises(validation.ValidationError, match="labels repeat"):
    validation.compare_studies([("s1", t1, r1), ("s1", t1, r1)])


def test_compare_script_reads_workdirs_and_names_a_missing_artifact(tmp_path):
  root = pathlib.Path(__file__).resolve().parents[1]
  workdirs = []
  for name, gain in (("seed_a", 0.1), ("seed_b", -0.05)):
    table, rec = _study({"uniform": (gain, gain - 0.02, gain + 0.02)},
                        {"recommended": 3.0, "uniform": 3.0 + gain},
                        over_uniform=(0.05, 0.0, 0.2))
    wd = tmp_path / name
    (wd / "validate").mkdir(parents=True)
    (wd / "optimise").mkdir()
    (wd / "validate" / "summary.json").write_text(json.dumps(
        {"table": table.to_dict("records")}))
    (wd / "optimise" / "mixture.json").write_text(rec.to_json())
    workdirs.append(wd)
  script = [sys.executable, str(root / "experiments" / "shift" / "compare.py")]
  proc = subprocess.run(script + [f"--workdir={w}" for w in workdirs]
                        + [f"--out={tmp_path / 'cmp.md'}"],
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert result["studies"] == ["seed_a", "seed_b"]
  assert result["mixtures"]["uniform"]["better"] == 1
  assert result["mixtures"]["uniform"]["worse"] == 1
  assert [c["where"] for c in result["reported"]["uniform"]] == ["inside", "below"]
  assert "| uniform | +0.100" in (tmp_path / "cmp.md").read_text()
  assert result["mixtures"]["uniform"]["pooled"]["studies"] == 2
  assert result["mixtures"]["uniform"]["pooled"]["gain"] == pytest.approx(0.025)
  (workdirs[1] / "validate" / "summary.json").unlink()
  proc = subprocess.run(script + [f"--workdir={w}" for w in workdirs],
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert f"--workdir={workdirs[1]}: validation summary not found" in proc.stderr
  assert "validate stage" in proc.stderr


def test_compare_studies_sets_apart_a_mixture_that_was_the_recommendation():
  # The recommendation was uniform: they share runs, so the difference is exactly 0.
  t, r = _study({"uniform": (0.0, 0.0, 0.0), "natural": (0.05, 0.01, 0.09)},
                {"recommended": 3.0, "uniform": 3.0, "natural": 3.05},
                over_uniform=(0.0, 0.0, 0.0))
  out = validation.compare_studies([("s", t, r)])
  uni = out["mixtures"]["uniform"]
  assert uni["per_study"]["s"]["verdict"] == "same"
  assert (uni["better"], uni["level"], uni["worse"], uni["same"]) == (0, 0, 0, 1)
  assert "uniform" not in out["reported"]
  assert "| uniform | = recommended | 0 / 0 / 0 (the recommendation on 1) | – |" in (
      validation.comparison_markdown(out))


def test_unguarded_is_the_pick_before_the_safe_check_against_uniform():
  _, rec = _study({}, {"recommended": 1.0}, (0, 0, 0))
  # No check recorded (another objective): the recommendation itself.
  np.testing.assert_allclose(validation.unguarded_weights(rec, ["b", "a"]), [0.5, 0.5])
  rec.diagnostics["safe_check"] = {"ran": True, "replaced": True,
                                   "bound_pick": {"a": 0.9, "b": 0.1}}
  np.testing.assert_allclose(validation.unguarded_weights(rec, ["b", "a"]), [0.1, 0.9])
  given = validation.candidate_mixtures(
      ["recommended", "unguarded"], ["a", "b"], recommended=[0.5, 0.5],
      tokens_D=np.array([1.0, 1.0]), pick=lambda n: pytest.fail(f"no pick for {n}"),
      unguarded=validation.unguarded_weights(rec, ["a", "b"]))
  np.testing.assert_allclose(given["unguarded"], [0.9, 0.1])
  picked = validation.candidate_mixtures(
      ["recommended", "unguarded"], ["a", "b"], recommended=[0.5, 0.5],
      tokens_D=np.array([1.0, 1.0]), pick=lambda n: np.array([0.3, 0.7]))
  np.testing.assert_allclose(picked["unguarded"], [0.3, 0.7])
  cfg = base.get_config("smoke")
  cfg.validate.mixtures = ("recommended", "unguarded")
  validation.check_config(cfg.validate)  # a known name


def test_picker_runs_the_optimiser_once_for_recommended_and_unguarded(monkeypatch):
  # The module (the package re-exports its function under the same name).
  recommend_lib = importlib.import_module("causalmix_jax.optimise.recommend")
  settings = importlib.import_module("causalmix_jax.optimise.settings")
  calls, asked = [], {}

  def fake_recommend(surface, **kw):
    calls.append(kw["objective"])
    asked.update(kw)
    return types.SimpleNamespace(
        weights={"a": 0.5, "b": 0.5},
        diagnostics={"safe_check": {"ran": True, "replaced": True,
                                    "bound_pick": {"a": 0.8, "b": 0.2}}})
  monkeypatch.setattr(recommend_lib, "recommend", fake_recommend)
  monkeypatch.setattr(settings, "reference_from_config", lambda *a: None)
  monkeypatch.setattr(settings, "constraints_from_config", lambda *a: None)
  cfg = base.get_config("smoke")
  surface = types.SimpleNamespace(domains=("a", "b"), features=())
  pick = validation.make_picker(cfg, None, surface, {}, {"a": 10.0, "b": 10.0}, 64.0)
  np.testing.assert_allclose(pick("unguarded"), [0.8, 0.2])
  np.testing.assert_allclose(pick("recommended"), [0.5, 0.5])
  assert calls == [str(cfg.optimise.objective)]
  # The re-made recommendation uses the optimise config's safe-objective settings.
  assert {k: asked[k] for k in settings.SAFE_SETTINGS} == settings.safe_settings(
      cfg.optimise)
  cfg.optimise.safe_baseline = "uniform"
  validation.make_picker(cfg, None, surface, {}, {"a": 10.0, "b": 10.0}, 64.0)(
      "recommended")
  assert asked["safe_baseline"] == "uniform"


def test_shift_transfer_variant_trains_a_bigger_target_on_the_same_study():
  from experiments.shift import config as shift_config  # pylint: disable=import-outside-toplevel
  settings = importlib.import_module("causalmix_jax.optimise.settings")
  for smoke in (False, True):
    plain = shift_config.get_config("smoke" if smoke else None)
    moved = shift_config.get_config("smoke,transfer" if smoke else "transfer")
    assert plain.validate.scale == "proxy" and moved.validate.scale == "target"
    assert tuple(moved.validate.mixtures) == shift_config.TRANSFER_MIXTURES
    # 4x the proxies' tokens, and (but for the smoke test's) 8x-wider layers.
    assert settings.target_budget_tokens(moved) == 4 * settings.target_budget_tokens(plain)
    assert moved.target.model.seq_len == moved.proxy.model.seq_len
    assert moved.target.model.preset == ("proxy" if smoke else "proxy_large")
    # Every stage before optimise is the plain study's, so a study's copy needs no refit.
    as_data = lambda v: v.to_dict() if hasattr(v, "to_dict") else v  # noqa: E731
    for key in ("seed", "pool", "reference", "design", "proxy", "sweep", "surface",
                "optimise", "outcome"):
      assert as_data(moved[key]) == as_data(plain[key]), key
    assert as_data(moved.target) != as_data(plain.target)
