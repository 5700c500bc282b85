"""Tests for the analysis layer: the `Interpretation` round-trips through JSON, the plots
are pure (they draw on given axes, write nothing, leave the backend alone), and the
`analyse` stage writes `analysis/interpretation.json` and its figures."""

from __future__ import annotations

import collections
import json
import pathlib

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from causalmix_jax import artifacts
from causalmix_jax import pipeline
from causalmix_jax import study as study_lib
from causalmix_jax.analysis import interpretation
from causalmix_jax.analysis import plots
from causalmix_jax.configs import base
from causalmix_jax.configs import report as report_config
from causalmix_jax.stages import analyse as analyse_stage
from causalmix_jax.surface import surface as surface_lib

Prediction = collections.namedtuple("Prediction", "mean lo hi")
DOMAINS = ("a", "b", "c")
FEATURES = ("x_share__a", "x_dup__b", "x_noise")


class Surface:
  """theta_a = -x0, theta_b = 0.3 * tanh(3 * (x1 - 0.5)), theta_c = 0 (loss); with
  `flat`, every theta is -0.1 wherever the pool state."""
  domains = DOMAINS
  features = FEATURES
  outcome = "loss"
  maximize = False

  def __init__(self, flat: bool = False):
    self.flat = flat

  def theta(self, x=None, ci=0.9):
    x = np.asarray(x, dtype=np.float64)
    x2 = np.atleast_2d(x)
    if self.flat:
      mean = np.full((x2.shape[0], 3), -0.1)
    else:
      mean = np.stack([-x2[:, 0], 0.3 * np.tanh(3 * (x2[:, 1] - 0.5)),
                       np.zeros(x2.shape[0])], axis=1)
    mean = mean[0] if x.ndim == 1 else mean
    return Prediction(mean, mean - 0.05 * (1 + ci), mean + 0.05 * (1 + ci))


def _rows(n=40, seed=0):
  return np.random.default_rng(seed).uniform(0.0, 1.0, size=(n, 3))


def _interp(surface=None, n=40, **overrides):
  cfg = report_config.section(frozenset({"smoke"}))
  cfg.update({"tree_depth": 2, "n_grid": 5, **overrides})
  return interpretation.interpret(surface or Surface(), _rows(n), None, cfg)


# ---------------------------------------------------------------- the artifact


def test_interpretation_round_trips_through_json():
  res = _interp()
  again = interpretation.Interpretation.from_dict(json.loads(json.dumps(res.to_dict())))
  assert again == res
  assert again.to_dict() == res.to_dict()
  np.testing.assert_array_equal(again.theta.mean_NxD, res.theta.mean_NxD)
  assert again.favour_tree.root.feature == res.favour_tree.root.feature
  assert again.rules == res.rules and again.ranking == res.ranking
  assert again.domain_rules == res.domain_rules
  assert [c.feature for c in again.partial_dependence] == list(FEATURES)
  # through the artifact writer too, and a different interpretation is not equal
  assert interpretation.Interpretation.from_dict(
      json.loads(artifacts.to_json(res.to_dict()))) == res
  assert _interp(tree_depth=1) != res
  skipped = interpretation.interpret(Surface(), None, None, report_config.section(
      frozenset()))
  assert interpretation.Interpretation.from_dict(
      json.loads(json.dumps(skipped.to_dict()))) == skipped


def test_interpretation_of_another_format_is_refused():
  doc = _interp().to_dict()
  doc["format_version"] = 99
  with pytest.raises(ValueError, match="format_version 99.*--stage=analyse"):
    interpretation.Interpretation.from_dict(doc)


# ---------------------------------------------------------------- pure plots


@pytest.fixture
def no_backend_switch(monkeypatch, tmp_path):
  """Fails on `matplotlib.use` and checks the backend is the one matplotlib chose; runs
  in an empty directory to catch stray files."""
  backend = matplotlib.get_backend()
  def refuse(*args, **kwargs):
    raise AssertionError("a plot switched the matplotlib backend")
  monkeypatch.setattr(matplotlib, "use", refuse)
  monkeypatch.chdir(tmp_path)
  yield tmp_path
  assert matplotlib.get_backend() == backend
  assert not list(tmp_path.iterdir())
  plt.close("all")


def test_plots_are_pure_and_draw_on_given_axes(no_backend_switch):
  del no_backend_switch
  res = _interp()
  for fig in (plots.plot_theta(res), plots.plot_ranking(res),
              plots.plot_partial_dependence(res, max_panels=2)):
    assert isinstance(fig, matplotlib.figure.Figure)
  fig, ax = plt.subplots()
  assert plots.plot_theta(res, ax=ax) is fig and ax.get_title().startswith("Marginal")
  assert plots.plot_ranking(res, ax=ax) is fig
  fig, axes = plt.subplots(1, 3)
  assert plots.plot_partial_dependence(res, ax=axes, max_panels=2) is fig
  assert axes[0].get_xlabel() == "x_share__a"
  with pytest.raises(ValueError, match="2 panels; got 1 axes"):
    plots.plot_partial_dependence(res, ax=axes[:1], max_panels=2)
  # nothing moves the mixture on a flat surface: no partial-dependence panel
  assert plots.plot_partial_dependence(_interp(Surface(flat=True))) is None


def test_report_figures_are_pure(no_backend_switch):
  del no_backend_switch
  Row = collections.namedtuple("Row", "name weights_D predicted")
  rows = [Row("recommended", np.array([0.5, 0.3, 0.2]), (2.9, 2.8, 3.0)),
          Row("uniform", np.full(3, 1 / 3), None)]
  assert isinstance(plots.plot_mixtures(rows, DOMAINS, "loss"), matplotlib.figure.Figure)
  fig, axes = plt.subplots(1, 2)
  assert plots.plot_mixtures(rows, DOMAINS, "loss", ax=axes) is fig
  series = {"loss": ([0.0, 1.0], [3.0, 2.5]), "eval_loss/a": ([0.0, 1.0], [3.1, 2.9])}
  fig = plots.plot_losses(series)
  assert [a.get_title() for a in fig.axes] == ["Target run: training loss",
                                               "Target run: evaluation loss"]
  with pytest.raises(ValueError, match="at least one"):
    plots.plot_losses({})


# ---------------------------------------------------------------- the stage


@pytest.fixture
def workdir(tmp_path, monkeypatch):
  """surface.json (loading a `Surface`), mixture.json and a runs table over 8 states."""
  surf = {"surface": Surface()}
  monkeypatch.setattr(surface_lib, "load_surface", lambda d: surf["surface"])
  wd = tmp_path / "wd"
  artifacts.write_json(wd / study_lib.SURFACE_JSON, {"method": "fake"})
  artifacts.write_json(wd / study_lib.MIXTURE_JSON, {
      "domains": list(DOMAINS), "weights": {"a": 0.5, "b": 0.3, "c": 0.2},
      "predicted": {"mean": 2.8, "lo": 2.7, "hi": 2.9},
      "reference": {"weights": {"a": 0.2, "b": 0.4, "c": 0.4}}})
  n = 32
  w = np.random.default_rng(1).dirichlet(np.ones(3), size=n)
  states = _rows(8)[np.arange(n) % 8]
  frame = pd.DataFrame({"run_id": [f"r{i}" for i in range(n)], "seed": np.zeros(n, int)})
  for k, d in enumerate(DOMAINS):
    frame[f"w_{d}"] = w[:, k]
  for j, f in enumerate(FEATURES):
    frame[f] = states[:, j]
  frame["status"] = "ok"
  frame["y_loss"] = 3.0 + w[:, 0]
  artifacts.write_parquet(wd / study_lib.RUNS_PARQUET, frame)
  return wd, surf


def test_analyse_stage_writes_interpretation_and_figures(workdir):
  wd, surf = workdir
  cfg = base.get_config("smoke")
  cfg.report.min_samples_leaf = 2
  out = analyse_stage.run(cfg, wd)
  assert out == wd / study_lib.INTERPRETATION_JSON
  res = study_lib.Study(wd).interpretation
  assert res.skipped == "" and res.n_rows == 8 and res.n_rows_total == 8
  assert res.ranking[0].feature == "x_share__a"
  assert any("favour a" in r.text for r in res.rules)
  for rel in (study_lib.THETA_PNG, study_lib.PARTIAL_DEPENDENCE_PNG,
              study_lib.RANKING_PNG):
    assert (wd / rel).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert not list((wd / study_lib.ANALYSIS_DIR).glob(".*.tmp"))
  # a flat surface draws no partial dependence: the earlier figure does not linger
  surf["surface"] = Surface(flat=True)
  analyse_stage.run(cfg, wd)
  assert study_lib.Study(wd).interpretation.rules[0].favour == ""
  assert not (wd / study_lib.PARTIAL_DEPENDENCE_PNG).exists()
  assert (wd / study_lib.THETA_PNG).exists()


def test_analyse_stage_in_the_pipeline(workdir, monkeypatch):
  wd, _ = workdir
  cfg = base.get_config("smoke")
  spec = pipeline.STAGES["analyse"]
  assert pipeline.ORDER.index("validate") < pipeline.ORDER.index("analyse") \
      < pipeline.ORDER.index("target")
  assert study_lib.INTERPRETATION_JSON in pipeline.STAGES["report"].optional_inputs
  assert pipeline.run_stage("analyse", cfg, wd) == wd / spec.output
  assert (wd / study_lib.ANALYSIS_DIR / "stamp.json").exists()
  monkeypatch.setattr(analyse_stage.interpretation, "interpret", None)  # up to date
  pipeline.run_stage("analyse", cfg, wd)
  with pytest.raises(study_lib.MissingArtifactError, match="analyse stage"):
    study_lib.Study(wd / "empty").interpretation


def test_analyse_stage_checks_config_and_only_process_zero_writes(workdir, monkeypatch):
  wd, _ = workdir
  cfg = base.get_config("smoke")
  cfg.report.n_grid = 1
  with pytest.raises(ValueError, match="config key report.n_grid"):
    analyse_stage.run(cfg, wd)
  cfg.report.n_grid = 5
  monkeypatch.setattr(artifacts, "is_writer", lambda: False)
  assert analyse_stage.run(cfg, wd) == wd / study_lib.INTERPRETATION_JSON
  assert not (wd / study_lib.ANALYSIS_DIR).exists()


def test_reference_weights_follow_the_surface_domains(workdir):
  wd, _ = workdir
  mix = study_lib.Study(wd).mixture
  np.testing.assert_allclose(analyse_stage.reference_weights(mix, ("c", "b", "a")),
                             [0.4, 0.4, 0.2])
  with pytest.raises(ValueError, match=r"domain\(s\) \['d'\]"):
    analyse_stage.reference_weights(mix, ("a", "b", "c", "d"))


def test_no_backend_switch_in_the_package():
  root = pathlib.Path(interpretation.__file__).resolve().parents[1]
  offenders = [str(p.relative_to(root)) for p in root.rglob("*.py")
               if "matplotlib.use(" in p.read_text()]
  assert not offenders


def test_pred_vs_actual_draws_a_point_outside_its_own_interval():
  """The prediction is the draws' mean and the interval their quantiles: with skewed
  draws the mean can lie outside the interval, which once crashed the fit stage."""
  cv = {"y": [1.0, 2.0, 3.0], "pred": [1.1, 2.5, 2.9], "lo": [1.0, 1.8, 2.95],
        "hi": [1.2, 2.2, 3.3], "r2": 0.9, "spearman": 1.0}
  fig = plots.plot_pred_vs_actual(cv, "y")
  ax = fig.axes[0]
  segments = ax.collections[0].get_segments()
  assert len(segments) == 3
  np.testing.assert_allclose(segments[1], [[2.0, 1.8], [2.0, 2.2]])
  np.testing.assert_allclose(ax.lines[0].get_ydata(), cv["pred"])
  plt.close(fig)
