"""Tests for the Recommendation type: mixture.json and YAML round trips, atomic writes."""

import json
import math

import pytest

from causalmix_jax.recommendation import (Improvement, Interval, Recommendation,
                                          load_recommendation, parse_yaml_weights)

DOMAINS = ("arxiv", "web: crawl #2", 'quo"te')


def _rec(**kw) -> Recommendation:
  args = dict(
      domains=DOMAINS,
      weights={"arxiv": 0.1, "web: crawl #2": 0.6000000000000001, 'quo"te': 0.3},
      predicted=Interval(2.5, 2.4, 2.61),
      reference={d: 1 / 3 for d in DOMAINS},
      reference_predicted=Interval(2.7, 2.6, 2.8),
      uniform_predicted=Interval(2.7, 2.6, 2.8),
      improvement_over_reference=Improvement(0.2, 0.1, 0.3, 0.97),
      improvement_over_uniform=Improvement(0.2, 0.1, 0.3, 0.97),
      outcome="target", maximize=False, method="S", objective="mean", objective_value=2.5,
      constraints={"min_weight": 0.0, "pinned": {"arxiv": 0.1}, "trust_radius": 0.0},
      covariates={"x_size": 1.5}, support={"inside": True, "max_distance_sd": 0.0},
      zeroed=("arxiv",), theta={d: 0.01 * i for i, d in enumerate(DOMAINS)},
      diagnostics={"search_seconds": 0.2})
  args.update(kw)
  return Recommendation(**args)


def test_gain_over_the_best_known_mixture_round_trips_and_may_be_absent():
  rec = _rec(best_known={"arxiv": 0.5, "web: crawl #2": 0.25, 'quo"te': 0.25},
             improvement_over_best_known=Improvement(0.05, -0.01, 0.1, 0.8))
  assert Recommendation.from_json(rec.to_json()) == rec
  d = json.loads(rec.to_json())
  assert d["improvement"]["over_best_known"]["lo"] == -0.01
  old = _rec()  # a mixture.json written before the field, or by a surface without it
  assert "over_best_known" not in json.loads(old.to_json())["improvement"]
  back = Recommendation.from_json(old.to_json())
  assert back.best_known == {} and back.improvement_over_best_known is None


def test_json_round_trip_is_exact():
  rec = _rec()
  back = Recommendation.from_json(rec.to_json())
  assert back == rec
  d = json.loads(rec.to_json())
  # The mixture.json contract keys.
  for key in ("domains", "weights", "predicted", "reference", "constraints", "covariates"):
    assert key in d
  assert d["predicted"] == {"mean": 2.5, "lo": 2.4, "hi": 2.61}
  assert list(d["weights"]) == list(DOMAINS)
  assert d["reference"]["weights"]["arxiv"] == pytest.approx(1 / 3)
  assert d["uniform"]["weights"]["arxiv"] == pytest.approx(1 / 3)
  assert d["improvement"]["over_reference"]["prob_better"] == 0.97


def test_yaml_round_trip_with_and_without_pyyaml():
  rec = _rec()
  text = rec.to_yaml()
  assert parse_yaml_weights(text) == rec.weights  # exact floats
  yaml = pytest.importorskip("yaml")
  parsed = yaml.safe_load(text)
  assert parsed == {"train_weights": rec.weights}
  assert list(parsed["train_weights"]) == list(DOMAINS)


def test_write_and_load(tmp_path):
  rec = _rec()
  path = rec.write(tmp_path / "optimise")
  assert path.name == "mixture.json"
  assert load_recommendation(path) == rec
  assert parse_yaml_weights((tmp_path / "optimise" / "mixture.yaml").read_text()) == \
      rec.weights
  assert not [p for p in (tmp_path / "optimise").iterdir() if p.name.endswith(".tmp")]


def test_minimal_mixture_json_loads_and_bad_ones_fail():
  rec = Recommendation.from_dict({"domains": ["a", "b"], "weights": {"a": 0.5, "b": 0.5},
                                  "predicted": {"mean": 1.0, "lo": 0.9, "hi": 1.1}})
  assert rec.weights == {"a": 0.5, "b": 0.5}
  assert math.isnan(rec.improvement_over_reference.mean)
  with pytest.raises(ValueError, match=r"no weight for domain.*'b'"):
    Recommendation.from_dict({"domains": ["a", "b"], "weights": {"a": 1.0},
                              "predicted": {"mean": 1.0, "lo": 0.9, "hi": 1.1}})
  with pytest.raises(ValueError, match="missing key 'predicted'"):
    Recommendation.from_dict({"domains": ["a"], "weights": {"a": 1.0}})
  with pytest.raises(ValueError, match="keyed by the domains in order"):
    _rec(weights={"arxiv": 1.0})
