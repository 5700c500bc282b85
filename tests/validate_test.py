"""Tests of the validation statistics: distinct mixtures share runs, the design trains
each for every seed with common seeds, and the table's paired differences and intervals
are those of the realized outcomes."""

import types

import numpy as np
import pandas as pd
import pytest

from causalmix_jax import validation
from causalmix_jax.configs import base


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
