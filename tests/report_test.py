"""Tests for the report stage on a tiny fake workdir: the Markdown holds the mixture table
and the interpreter's rules (rendered from the analyse stage's interpretation.json, never
recomputed), the PNGs exist, the HTML is self-contained, optional pieces that are missing
are stated and required ones fail naming the file. Tables leave out what carries no
information (constant covariates, negligible ranking rows, default constraints), and
comparisons between mixtures read as the recommendation's improvement (positive =
better)."""

from __future__ import annotations

import collections
import json
import pathlib
import re

import numpy as np
import pandas as pd
import pytest

from causalmix_jax import artifacts
from causalmix_jax import report
from causalmix_jax import study as study_lib
from causalmix_jax.analysis import interpretation
from causalmix_jax.analysis import tree as tree_lib
from causalmix_jax.configs import base
from causalmix_jax.stages import analyse as analyse_stage
from causalmix_jax.stages import report as report_stage
from causalmix_jax.surface import surface as surface_lib

Prediction = collections.namedtuple("Prediction", "mean lo hi")
DOMAINS = ("code", "math", "web")
FEATURES = ("share__code", "share__math")


class FakeSurface:
  """Loss surface: y = sum_d theta_d(x) * log w_d with theta_math = -0.2 * share__code."""
  domains = DOMAINS
  features = FEATURES
  outcome = "target"
  maximize = frozenset()

  def _theta(self, x2):
    return np.stack([np.full(len(x2), -0.05), -0.2 * x2[:, 0], np.full(len(x2), -0.02)],
                    axis=1)

  def theta(self, x=None, ci=0.9):
    x = np.asarray([0.3, 0.3] if x is None else x, dtype=np.float64)
    m = self._theta(np.atleast_2d(x))
    m = m[0] if x.ndim == 1 else m
    return Prediction(m, m - 0.01, m + 0.01)

  def predict(self, w, x=None, ci=0.9):
    x = np.asarray([0.3, 0.3] if x is None else x, dtype=np.float64)
    w = np.atleast_2d(np.asarray(w, dtype=np.float64))
    m = 3.0 + (np.log(np.clip(w, 1e-6, None)) * self._theta(x[None])).sum(axis=1)
    return Prediction(m, m - 0.05, m + 0.05)

  def support(self, x):
    return {"max_z": 0.5, "outside": False}


def _png(path: pathlib.Path) -> None:
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(2, 2))
  ax.plot([0, 1], [0, 1])
  fig.savefig(path)
  plt.close(fig)


def _write(path: pathlib.Path, obj) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(obj))


def _workdir(root: pathlib.Path, *, optional: bool = True) -> pathlib.Path:
  wd = root / "wd"
  _write(wd / "surface" / "surface.json", {"method": "fake"})
  _write(wd / "optimise" / "mixture.json", {
      "domains": list(DOMAINS),
      "weights": {"code": 0.25, "math": 0.55, "web": 0.20},
      "predicted": {"mean": 2.81, "lo": 2.75, "hi": 2.87},
      "reference": {"weights": {"code": 0.4, "math": 0.2, "web": 0.4}},
      "constraints": {"min_weight": 0.0, "max_weight": 1.0, "trust_radius": 0.0},
      "covariates": {"x_share__code": 0.5, "x_share__math": 0.2},
  })
  if not optional:
    return wd
  _write(wd / "pool" / "pool.json", {"domains": list(DOMAINS), "per_domain": {
      "code": {"tokens": 3000, "documents": 10}, "math": {"tokens": 1000, "documents": 4},
      "web": {"tokens": 6000, "documents": 30}}})
  _write(wd / "pool" / "covariates.json", {
      "domains": list(DOMAINS),
      "per_domain": {d: {"share": s, "dup": 0.1} for d, s in zip(DOMAINS, (0.3, 0.1, 0.6))},
      "pool": {"total_tokens": 10000, "n_domains": 3}})
  rng = np.random.default_rng(0)
  n = 40
  w = rng.dirichlet(np.ones(3), size=n)
  states = rng.uniform(0.05, 0.6, size=(8, 2))[np.arange(n) % 8]
  frame = pd.DataFrame({"run_id": [f"r{i}" for i in range(n)], "seed": np.arange(n) % 2})
  for k, d in enumerate(DOMAINS):
    frame[f"w_{d}"] = w[:, k]
  frame["x_share__code"] = states[:, 0]
  frame["x_share__math"] = states[:, 1]
  for d in DOMAINS:  # constant over the sweep's pool states: left out of the report
    frame[f"x_dup__{d}"] = 0.1
  frame["x_n_domains"] = 3.0
  frame["status"] = ["ok"] * (n - 3) + ["diverged"] * 3
  frame["y_target"] = np.where(frame["status"] == "ok", rng.normal(3.0, 0.1, n), np.nan)
  (wd / "sweep").mkdir(parents=True)
  frame.to_parquet(wd / "sweep" / "runs.parquet")
  _write(wd / "surface" / "diagnostics.json", {"r_hat_max": 1.01, "heldout_r2": 0.83,
                                               "coverage": {"ci90": 0.9}})
  _png(wd / "surface" / "pred_vs_actual.png")
  _write(wd / "target" / "summary.json", {
      "steps": 100, "final_train_loss": 2.9, "target_loss": 3.05, "domains": list(DOMAINS),
      "eval_loss": {"code": 2.5, "math": 3.1, "web": 3.3},
      "weights": {"code": 0.25, "math": 0.55, "web": 0.2}, "mesh": {"data": 1}})
  row = lambda name, mean, diff: {  # noqa: E731
      "mixture": name, "seeds": 3, "mean": mean, "lo": mean - 0.1, "hi": mean + 0.1,
      "diff_vs_recommended": diff, "diff_lo": diff - 0.02, "diff_hi": diff + 0.02,
      "predicted": 3.0, "predicted_lo": 2.95, "predicted_hi": 3.2,
      "runs_in_predicted_interval": 1.0, "best": name == "recommended"}
  _write(wd / "validate" / "summary.json", {
      "outcome": "target", "scale": "proxy", "seeds": 3, "budget_tokens": 4096, "ci": 0.9,
      "domains": list(DOMAINS), "table": [row("recommended", 3.1, 0.0),
                                          row("uniform", 3.25, 0.15)]})
  (wd / "target" / "metrics.jsonl").write_text("".join(
      json.dumps({"step": s, "loss": 4.0 - s / 100, "train_loss/code": 4.1 - s / 100,
                  "eval_loss/code": 3.0 - s / 200, "target_loss": 3.2 - s / 300})
      + "\n" for s in range(0, 101, 20)))
  return wd


@pytest.fixture
def cfg():
  c = base.get_config("smoke")
  with c.unlocked():
    c.report.min_samples_leaf = 2
  return c


@pytest.fixture(autouse=True)
def fake_surface(monkeypatch):
  def load(surface_dir):
    del surface_dir  # Study names a missing surface.json before loading
    return FakeSurface()
  monkeypatch.setattr(surface_lib, "load_surface", load)


def _table(md: str, first_header: str) -> list[list[str]]:
  lines = md.splitlines()
  start = next(i for i, ln in enumerate(lines) if ln.startswith(f"| {first_header} |"))
  rows = []
  for ln in lines[start + 2:]:
    if not ln.startswith("|"):
      break
    rows.append([c.strip() for c in ln.strip("|").split("|")])
  return rows


def test_report_on_full_fake_workdir(tmp_path, cfg):
  wd = _workdir(tmp_path)
  analyse_stage.run(cfg, wd)
  out = report_stage.run(cfg, wd)
  assert out == wd / "report" / "report.md"
  md = out.read_text()
  # mixture table: one row per domain, recommended / reference / uniform columns
  assert "| domain | recommended | reference | uniform |" in md
  rows = {r[0]: r[1:] for r in _table(md, "domain | recommended")}
  assert rows["math"] == ["0.55", "0.2", "0.3333"]
  assert rows["code"][:2] == ["0.25", "0.4"]
  pred = {r[0]: r for r in _table(md, "mixture")}
  assert pred["recommended"][1] == "2.81" and pred["recommended"][-1] == "mixture.json"
  assert pred["uniform"][-1] == "surface"  # predicted here with the surface
  # the recommendation's improvement, in predicted mean: positive = better (lower loss)
  surf, x = FakeSurface(), np.array([0.5, 0.2])
  for name, w in (("uniform", np.full(3, 1 / 3)), ("reference", np.array([0.4, 0.2, 0.4]))):
    gain = float(surf.predict(w, x).mean[0]) - 2.81
    assert gain > 0 and pred[name][3] == report._fmt(gain)
  assert "| mixture | predicted mean | 90% interval | improvement | from |" in md
  assert "recommended - this" not in md and "paired difference" not in md
  assert md.count("Sign convention:") == 1
  assert ("the improvement is the other mixture's `target` minus the recommended's" in md)
  # default constraints: one sentence, no table
  assert "No constraints beyond the defaults (every weight in [0, 1]" in md
  assert "| min_weight |" not in md and "| trust_radius |" not in md
  # pool, sweep and target sections; the covariates the sweep held constant are left out
  assert "| web | 6,000 | 30 | 0.6 |" in md
  assert "| domain | share |" in md and "| total_tokens | 10,000 |" in md
  assert "dup |" not in md and "| n_domains |" not in md
  assert ("4 covariates are constant across the sweep's 8 pool states and are not shown "
          "(a `const` cell is one of them, in a row and a column where others vary): "
          "dup__code, dup__math, dup__web, n_domains.") in md
  assert "40 proxy runs over 3 domains, 8 distinct pool states" in md
  assert "| diverged | 3 |" in md
  assert "heldout_r2" in md and "| final_train_loss | 2.9 |" in md
  assert "| math | 0.55 | 3.1 |" in md  # weight trained and held-out loss per domain
  assert "Missing pieces" not in md
  assert "| recommended (best) | 3.1 | [3, 3.2] | 0 | [-0.02, 0.02] | 3 | [2.95, 3.2] |" in md
  assert "| uniform | 3.25 | [3.15, 3.35] | 0.15 | [0.13, 0.17] | 3 | [2.95, 3.2] |" in md
  assert "realized 3.1: inside the predictive interval" in md
  assert (wd / "report" / "validation.png").exists()
  # the interpreter names math as favoured where share__code is high
  rules = re.findall(r"`(if .*?)`", md)
  assert any("share__code >" in r and "favour math" in r for r in rules)
  # share__math moves nothing: its ranking row is dropped and counted (the artifact keeps it)
  ranking = _table(md, "covariate | mixture shift")
  assert [r[0] for r in ranking] == ["share__code"]
  assert ("1 covariate of 2 is not shown: its mixture shift is negligible, below 1% of the "
          "largest or below 0.001") in md
  doc = json.loads((wd / study_lib.INTERPRETATION_JSON).read_text())
  assert [e["feature"] for e in doc["ranking"]] == ["share__code", "share__math"]
  assert doc["ranking"][1]["mixture_shift"] == 0.0
  assert "negative theta favours d" in md
  # figures beside the report, referenced from it, embedded in the HTML
  pngs = sorted(p.name for p in out.parent.glob("*.png"))
  for name in ("mixture.png", "pred_vs_actual.png", "target_losses.png", "cate_theta.png",
               "cate_partial_dependence.png", "cate_ranking.png"):
    assert name in pngs
    assert (out.parent / name).read_bytes()[:4] == b"\x89PNG"
  for name in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md):
    assert (out.parent / name).exists()
  page = (out.parent / "report.html").read_text()
  assert page.count("data:image/png;base64,") == len(re.findall(r"!\[", md))
  assert "src='mixture.png'" not in page
  assert (out.parent / "metrics.jsonl").exists()


def test_missing_optional_pieces_are_stated(tmp_path, cfg):
  wd = _workdir(tmp_path, optional=False)
  md = report_stage.run(cfg, wd).read_text()
  assert "## Missing pieces" in md
  for piece in ("pool.json", "covariates.json", "runs table", "diagnostics",
                "pred_vs_actual", "target summary", "CATE interpretation not found"):
    assert piece in md
  assert "| domain | recommended | reference | uniform |" in md
  assert (wd / "report" / "mixture.png").exists()


def _no_computing(monkeypatch):
  """Makes every CATE computation (and the surface's theta) fail."""
  def boom(*args, **kwargs):
    raise AssertionError("the report computed part of the CATE interpretation")
  for name in ("interpret", "theta_over_rows", "partial_dependence", "rank_covariates"):
    monkeypatch.setattr(interpretation, name, boom)
  monkeypatch.setattr(tree_lib, "fit_tree", boom)
  monkeypatch.setattr(FakeSurface, "theta", boom)


def test_cate_section_renders_the_written_interpretation(tmp_path, cfg, monkeypatch):
  wd = _workdir(tmp_path)
  analyse_stage.run(cfg, wd)
  path = wd / study_lib.INTERPRETATION_JSON
  doc = json.loads(path.read_text())
  doc["rules"][0]["text"] = "if share__code > 0.5: favour planted"
  doc["domain_rules"]["web"] = ["always: +0.123 [8 rows]"]
  path.write_text(json.dumps(doc))
  _no_computing(monkeypatch)
  md = report_stage.run(cfg, wd).read_text()
  assert "- `if share__code > 0.5: favour planted`" in md
  assert "- `web: always: +0.123 [8 rows]`" in md
  assert _table(md, "covariate | mixture shift")[0][0] == "share__code"
  for name in ("cate_theta.png", "cate_partial_dependence.png", "cate_ranking.png"):
    assert (wd / "report" / name).read_bytes() == (wd / "analysis" / name).read_bytes()
    assert f"]({name})" in md
  assert "Missing pieces" not in md


def test_skipped_interpretation_states_why(tmp_path, cfg, monkeypatch):
  wd = _workdir(tmp_path)
  with monkeypatch.context() as m:
    m.setattr(FakeSurface, "features", ())
    analyse_stage.run(cfg, wd)
  _no_computing(monkeypatch)
  md = report_stage.run(cfg, wd).read_text()
  assert interpretation.NO_COVARIATES in md
  assert "cate_theta.png" not in md and "Missing pieces" not in md


def test_missing_required_pieces_fail_naming_the_file(tmp_path, cfg):
  wd = _workdir(tmp_path, optional=False)
  (wd / "optimise" / "mixture.json").unlink()
  with pytest.raises(FileNotFoundError, match=r"optimise/mixture\.json"):
    report_stage.run(cfg, wd)
  wd = _workdir(tmp_path / "b", optional=False)
  (wd / "surface" / "surface.json").unlink()
  with pytest.raises(FileNotFoundError, match=r"surface/surface\.json"):
    report_stage.run(cfg, wd)


def test_real_surface_loader_names_the_file(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"surface/surface\.json.*--stage=fit"):
    study_lib.Study(tmp_path).surface()


def test_mixture_domains_must_match_surface(tmp_path, cfg):
  wd = _workdir(tmp_path, optional=False)
  mix = json.loads((wd / "optimise" / "mixture.json").read_text())
  mix["weights"] = {"code": 0.5, "web": 0.5}
  (wd / "optimise" / "mixture.json").write_text(json.dumps(mix))
  with pytest.raises(ValueError, match=r"no weight for domain\(s\) \['math'\]"):
    report_stage.run(cfg, wd)


def test_markdown_and_html_render_blocks(tmp_path):
  blocks = [report.Heading("T", 1), report.Para("a `b|c`"),
            report.Table(("x", "y"), (("1|2", "3"),)), report.Bullets(("p", "q"))]
  md = report.render_markdown(blocks)
  assert "# T" in md and "| 1\\|2 | 3 |" in md and "- p\n- q" in md
  page = report.render_html(blocks, tmp_path, "t")
  assert "<code>b|c</code>" in page and "<td>1|2</td>" in page


def test_mixture_json_from_the_recommendation_writer(tmp_path, cfg):
  rec_mod = pytest.importorskip("causalmix_jax.recommendation")
  wd = _workdir(tmp_path, optional=False)
  iv = rec_mod.Interval
  imp = rec_mod.Improvement
  rec = rec_mod.Recommendation(
      domains=DOMAINS, weights={"code": 0.3, "math": 0.5, "web": 0.2},
      predicted=iv(2.8, 2.7, 2.9), reference={"code": 0.4, "math": 0.2, "web": 0.4},
      reference_predicted=iv(3.1, 3.0, 3.2), uniform_predicted=iv(3.0, 2.9, 3.1),
      improvement_over_reference=imp(0.3, 0.2, 0.4, 0.99),
      improvement_over_uniform=imp(0.2, 0.1, 0.3, 0.95), outcome="target",
      maximize=False, method="S", objective="mean",
      covariates={"x_share__code": 0.5, "x_share__math": 0.2},
      support={"inside": True, "max_distance_sd": 0.0}, zeroed=("web",),
      theta={"code": -0.05, "math": -0.1, "web": -0.02})
  rec.write(wd / "optimise")
  md = report_stage.run(cfg, wd).read_text()
  rows = {r[0]: r[1:] for r in _table(md, "domain | recommended")}
  assert rows["math"] == ["0.5", "0.2", "0.3333", "-0.1"]
  pred = {r[0]: r for r in _table(md, "mixture")}
  assert [pred[n][1] for n in ("recommended", "reference", "uniform")] == ["2.8", "3.1", "3"]
  assert all(pred[n][-1] == "mixture.json" for n in pred)
  imp_rows = {r[0]: r[1:] for r in _table(md, "baseline")}
  assert imp_rows["over reference"] == ["0.3", "[0.2, 0.4]", "0.99"]
  assert "zeroed: [web]" in md and "support: inside=True" in md


def test_only_process_zero_writes(tmp_path, cfg, monkeypatch):
  wd = _workdir(tmp_path, optional=False)
  monkeypatch.setattr(artifacts, "is_writer", lambda: False)
  out = report_stage.run(cfg, wd)
  assert out == wd / "report" / "report.md"
  assert not (wd / "report").exists()


@pytest.mark.parametrize("key,value", [("tree_depth", -1), ("n_grid", 1), ("ci", 1.5),
                                       ("grid_quantile_lo", 0.99)])
def test_bad_report_config_names_the_key(tmp_path, cfg, key, value):
  wd = _workdir(tmp_path, optional=False)
  cfg.report[key] = value
  with pytest.raises(ValueError, match=f"config key report.{key}"):
    report_stage.run(cfg, wd)


def test_under_covering_intervals_are_flagged_under_the_recommendation(tmp_path, cfg):
  wd = _workdir(tmp_path)
  diag = json.loads((wd / "surface" / "diagnostics.json").read_text())
  diag["heldout_interval_coverage"] = 0.4
  (wd / "surface" / "diagnostics.json").write_text(json.dumps(diag))
  md = report_stage.run(cfg, wd).read_text()
  assert ("Warning: on held-out pool states the surface's 90% intervals covered only 40% "
          "of runs, so the intervals and P(better) above are optimistic") in md
  diag["heldout_interval_coverage"] = 0.9
  (wd / "surface" / "diagnostics.json").write_text(json.dumps(diag))
  assert "Warning: on held-out" not in report_stage.run(cfg, wd).read_text()


def test_recommendation_outside_the_swept_range_is_flagged(tmp_path, cfg, monkeypatch):
  wd = _workdir(tmp_path)
  monkeypatch.setattr(FakeSurface, "support_stats", {"w_max": [0.6, 0.5, 0.6]},
                      raising=False)
  md = report_stage.run(cfg, wd).read_text()
  assert ("Warning: the recommended mixture leaves the range the sweep tried: math 0.550 "
          "(sweep's largest 0.500).") in md
  monkeypatch.setattr(FakeSurface, "support_stats", {"w_max": [0.6, 0.6, 0.6]},
                      raising=False)
  assert "leaves the range" not in report_stage.run(cfg, wd).read_text()


def test_higher_is_better_outcome_keeps_the_improvement_convention(tmp_path, cfg,
                                                                  monkeypatch):
  wd = _workdir(tmp_path)
  monkeypatch.setattr(FakeSurface, "maximize", frozenset({"target"}))
  md = report_stage.run(cfg, wd).read_text()
  assert ("`target` is higher-is-better, so the improvement is the recommended mixture's "
          "`target` minus the other's.") in md
  pred = {r[0]: r for r in _table(md, "mixture | predicted mean")}
  gain = 2.81 - float(FakeSurface().predict(np.full(3, 1 / 3), [0.5, 0.2]).mean[0])
  assert gain < 0 and pred["uniform"][3] == report._fmt(gain)
  # validation: uniform realized 3.25 against 3.1, a loss of 0.15 when higher is better
  assert "| uniform | 3.25 | [3.15, 3.35] | -0.15 | [-0.17, -0.13] |" in md
  assert "| recommended (best) | 3.1 | [3, 3.2] | 0 | [-0.02, 0.02] |" in md


def _set_mixture(wd: pathlib.Path, **fields) -> None:
  path = wd / "optimise" / "mixture.json"
  mix = json.loads(path.read_text())
  mix.update(fields)
  path.write_text(json.dumps(mix))


def test_constraints_table_lists_only_what_differs_from_the_defaults(tmp_path, cfg,
                                                                     monkeypatch):
  wd = _workdir(tmp_path, optional=False)
  _set_mixture(wd, constraints={
      "min_weight": {"code": 0.1, "math": 0.0, "web": 0.0}, "max_weight": 1.0,
      "max_epochs": 0.0, "tokens": {"code": 3000.0, "math": 1000.0, "web": 6000.0},
      "budget_tokens": 512.0, "pinned": {}, "trust_radius": 0.2, "trust_kind": "kl",
      "sampler_min_weight": 0.001})
  md = report_stage.run(cfg, wd).read_text()
  assert "No constraints beyond the defaults" not in md
  assert "Constraints that differ from the defaults (every weight in [0, 1]" in md
  assert _table(md, "constraint | value") == [
      ["min_weight", "code=0.1"], ["trust region", "kl radius 0.2 around the reference"]]
  # the safe objective's cap (the sweep's largest weight, at least the reference's) is
  # not a user constraint; a user cap below it is
  monkeypatch.setattr(FakeSurface, "support_stats", {"w_max": [0.3, 0.55, 0.35]},
                      raising=False)
  _set_mixture(wd, objective="safe", constraints={
      "min_weight": 0.0, "max_weight": {"code": 0.4, "math": 0.55, "web": 0.4},
      "trust_radius": 0.0, "sampler_min_weight": 0.001})
  md = report_stage.run(cfg, wd).read_text()
  assert ("No constraints beyond the defaults (every weight in [0, 1], no pinned domain, "
          "no epoch cap, no trust region, the sampler's smallest weight 0.001; the safe "
          "objective caps each domain at the largest weight the sweep gave it, reached by "
          "math).") in md
  assert "| constraint | value |" not in md
  _set_mixture(wd, constraints={"max_weight": {"code": 0.4, "math": 0.55, "web": 0.3}})
  md = report_stage.run(cfg, wd).read_text()
  assert _table(md, "constraint | value") == [["max_weight", "web=0.3"]]


def test_ranking_of_negligible_shifts_is_not_shown(tmp_path, cfg):
  wd = _workdir(tmp_path)
  analyse_stage.run(cfg, wd)
  path = wd / study_lib.INTERPRETATION_JSON
  doc = json.loads(path.read_text())
  for e, shift in zip(doc["ranking"], (2e-6, 1e-6)):
    e["mixture_shift"] = shift
  path.write_text(json.dumps(doc))
  md = report_stage.run(cfg, wd).read_text()
  assert "| covariate | mixture shift |" not in md
  assert ("No covariate moves the recommended mixture: the largest mixture shift of the 2 "
          "covariates is 2e-06, below the 0.001 under which a shift is negligible") in md
  assert "](cate_theta.png)" in md
  assert "cate_ranking.png" not in md and "cate_partial_dependence.png" not in md
  assert "Missing pieces" not in md


def test_reference_model_section(tmp_path, cfg):
  wd = _workdir(tmp_path)
  md = report_stage.run(cfg, wd).read_text()
  assert "### Reference model" not in md  # no reference stage: no section
  _write(wd / "reference" / "reference.json", {
      "enabled": True, "model": {"n_layers": 2, "d_model": 64},
      "training": {"steps": 300, "tokens": 307200, "loss_first": 5.6, "loss_last": 1.9},
      "documents": {"code": 10, "math": 20, "web": 5},
      "scored_tokens": {"code": 1000, "math": 2000, "web": 500},
      "hes_threshold_bits": 5.5, "quality_score": "loss_bits", "keep": "lowest",
      "per_domain": {d: {"ref_loss_bits": 2.0 + i, "ref_entropy_bits": 2.5,
                         "ref_hes_bits": 40.0} for i, d in enumerate(DOMAINS)}})
  _write(wd / "design" / "design.json", {"states": [
      {"name": "full"}, {"name": "q", "quality": {"math": 0.5}}]})
  md = report_stage.run(cfg, wd).read_text()
  assert "### Reference model" in md
  assert "trained here for 300 steps" in md and "scored 35 documents" in md
  rows = _table(md, "domain | loss (bits/token)")
  assert [r[0] for r in rows] == list(DOMAINS) and rows[1][1] == "3"
  assert "1 of the sweep's 2 pool states keeps only part of some domains' documents" in md


def test_safe_check_that_took_uniform_is_explained(tmp_path, cfg):
  wd = _workdir(tmp_path)
  path = wd / "optimise" / "mixture.json"
  mix = json.loads(path.read_text())
  mix.setdefault("diagnostics", {})["safe_check"] = {
      "ran": True, "reasons": ["y_loss: 2 covariate(s) outside the sweep's range (a, b)"],
      "replaced": True, "took_uniform": True,
      "bound_pick_difference_to_uniform_upper_bound": 0.0125}
  path.write_text(json.dumps(mix))
  md = report_stage.run(cfg, wd).read_text()
  assert ("safe check against uniform (ran because y_loss: 2 covariate(s) outside the "
          "sweep's range (a, b)): the lowest-bound mixture's difference to uniform has "
          "upper bound 0.0125, not below 0, so the candidate with the lowest such bound "
          "was taken (uniform itself)") in md
  mix["diagnostics"]["safe_check"].update(fallback="shrink", took_uniform=False,
                                          shrink_fraction=0.375)
  path.write_text(json.dumps(mix))
  assert ("upper bound 0.0125, not below 0, so the point 38% of the way from uniform to "
          "it, the candidate with the lowest such bound, was taken; the surface is sure "
          "of a shorter move toward it, not of the whole one") in report_stage.run(
              cfg, wd).read_text()
  mix["diagnostics"]["safe_check"]["fallback_score"] = "mean"
  path.write_text(json.dumps(mix))
  assert ("so the point 38% of the way from uniform to it, the candidate with the lowest "
          "posterior mean loss among those whose bound is at most 0, was taken") in (
              report_stage.run(cfg, wd).read_text())
  mix["diagnostics"]["safe_check"].update(shrink_fraction=None, fallback_score="bound")
  mix["diagnostics"]["safe_check"].update(fallback="anchors", took_uniform=False,
                                          anchor_difference_upper_bound=-0.004)
  path.write_text(json.dumps(mix))
  assert ("safe check against the anchors (ran because y_loss: 2 covariate(s) outside "
          "the sweep's range (a, b)): the candidate with the lowest worst-case upper "
          "bound against the sweep's best-known mixtures and uniform (-0.004) replaced "
          "the lowest-bound mixture (another candidate)") in report_stage.run(
              cfg, wd).read_text()
  mix["diagnostics"]["safe_check"].update(fallback="uniform", score="mean",
                                          replaced=False)
  path.write_text(json.dumps(mix))
  assert ("the lowest-mean mixture's difference to uniform has upper bound 0.0125, so "
          "it was kept") in report_stage.run(cfg, wd).read_text()
  mix["diagnostics"]["safe_check"]["decision_scale"] = 1.25
  path.write_text(json.dumps(mix))
  assert ("the lowest-mean mixture's difference to uniform has upper bound 0.0125 (its "
          "spread scaled by 1.25, the decision calibration fitted on the sweep's "
          "held-out pool states), so it was kept") in report_stage.run(cfg, wd).read_text()
  # Against the capped uniform ("safe_baseline": "capped"), named as such.
  mix["diagnostics"]["safe_check"].update(
      decision_scale=1.0, replaced=True, fallback="shrink", shrink_fraction=0.5,
      baseline_weights={"a": 0.5, "b": 0.5},
      bound_pick_difference_to_baseline_upper_bound=0.003)
  path.write_text(json.dumps(mix))
  assert ("safe check against the capped uniform (uniform with no domain repeated past "
          "the sweep's most epochs) (ran because y_loss: 2 covariate(s) outside the "
          "sweep's range (a, b)): the lowest-mean mixture's difference to it has upper "
          "bound 0.003, not below 0, so the point 50% of the way from the capped uniform "
          "to it") in report_stage.run(cfg, wd).read_text()
  mix["diagnostics"]["safe_check"].update(shrink_fraction=None, took_baseline=True)
  path.write_text(json.dumps(mix))
  assert ("was taken (the capped uniform itself); the surface is not sure anything beats "
          "the capped uniform") in report_stage.run(cfg, wd).read_text()
  mix["diagnostics"]["safe_check"]["ran"] = False
  path.write_text(json.dumps(mix))
  assert "safe check" not in report_stage.run(cfg, wd).read_text()
  assert "mean guard" not in report_stage.run(cfg, wd).read_text()
  # The mean guard took uniform: said whether or not the check ran.
  mix["diagnostics"]["safe_check"].update(mean_guard="uniform", mean_guard_replaced=True,
                                          pick_mean_difference_to_uniform=0.0042)
  path.write_text(json.dumps(mix))
  assert ("mean guard: the safe objective's pick was expected to do worse than uniform "
          "(posterior mean, by 0.0042), so uniform was taken") in report_stage.run(
              cfg, wd).read_text()
  # With "baseline", against the capped uniform where that is the check's baseline.
  mix["diagnostics"]["safe_check"].update(
      mean_guard="baseline", mean_guard_reference="the capped uniform",
      pick_mean_difference_to_guard_reference=0.0031)
  path.write_text(json.dumps(mix))
  assert ("mean guard: the safe objective's pick was expected to do worse than the capped "
          "uniform (posterior mean, by 0.0031), so the capped uniform was taken"
          ) in report_stage.run(cfg, wd).read_text()
  mix["diagnostics"]["safe_check"].update(mean_guard_replaced=False)
  assert "reported gain over uniform: its spread" not in report_stage.run(
      cfg, wd).read_text()
  # "report": only the reported gain is scaled, and the report says so.
  mix["diagnostics"]["safe_check"].update(decision_scale=1.0, report_scale=1.4)
  path.write_text(json.dumps(mix))
  assert ("reported gain over uniform: its spread scaled by 1.4, the decision "
          "calibration fitted on the sweep's held-out pool states; the safe check "
          "decides on the unscaled spread (surface.decision_calibration = \"report\")"
          ) in report_stage.run(cfg, wd).read_text()


def test_calibration_is_stated_under_the_surface(tmp_path, cfg, monkeypatch):
  wd = _workdir(tmp_path)
  assert "Intervals: calibrated" not in report_stage.run(cfg, wd).read_text()
  cal = {"contrasts": 1200, "level": 0.9, "coverage": 0.9,
         "run_noise": "left in (no replicate runs)", "by_contrast_size": [
             {"size_lo": 0.01, "size_hi": 0.8, "contrasts": 300, "coverage": 0.83},
             {"size_lo": 0.8, "size_hi": 1.6, "contrasts": 600, "coverage": 0.9},
             {"size_lo": 1.6, "size_hi": 2.0, "contrasts": 300, "coverage": 0.97}]}
  monkeypatch.setattr(FakeSurface, "info", {"calibration": cal}, raising=False)
  md = report_stage.run(cfg, wd).read_text()
  assert ("Intervals: calibrated on 1200 held-out contrasts (run noise left in (no "
          "replicate runs)), they covered 0.9 of them at the 90% level; by contrast size "
          "(the L1 distance between the two mixtures) 0.01-0.8: 0.83, 0.8-1.6: 0.9, "
          "1.6-2: 0.97. The intervals of small effects (mixtures close to each other) "
          "are the more likely too narrow, those of large ones too wide. Part of the "
          "small contrasts' misses may be run noise") in md
  # Noise taken out, but dominating: the small contrasts' misses may still be noise.
  cal.update(run_noise="taken out (replicate runs' pure error)", noise_share=0.9)
  assert "may be run noise" in report_stage.run(cfg, wd).read_text()
  cal["noise_share"] = 0.2
  assert "may be run noise" not in report_stage.run(cfg, wd).read_text()
  cal["noise_share"] = 0.9
  cal["by_contrast_size"].reverse()
  for b, lo in zip(cal["by_contrast_size"], (0.01, 0.8, 1.6)):
    b["size_lo"] = lo
  md = report_stage.run(cfg, wd).read_text()
  assert ("The intervals of large effects (mixtures far apart) are the more likely too "
          "narrow, those of small ones too wide.") in md
  assert "run noise, which" not in md
  assert ("they covered 0.9 of them at the 90% level; run noise is 0.9 of their mean "
          "squared error, so they barely see the surface's own error and the intervals' "
          "width rests on the noise's tail; by contrast size") in md
  cal["by_contrast_size"] = cal["by_contrast_size"][:1]
  md = report_stage.run(cfg, wd).read_text()
  assert "the intervals' width rests on the noise's tail." in md
  assert "by contrast size" not in md
  cal["noise_share"] = 0.2
  md = report_stage.run(cfg, wd).read_text()
  assert "run noise is 0.2 of their mean squared error." in md
  # Which spread the factor was fitted against, and the final fit's over the folds'.
  assert "The factor was fitted" not in md
  cal.update(spread="heldout", final_over_heldout_sd=0.87)
  assert ("run noise is 0.2 of their mean squared error. The factor was fitted against "
          "the fold fits' spread, and the final fit's is 0.87 of it: where the surface's "
          "misfit does not shrink with more runs, a new pool's intervals may have only "
          "that share of the width they need (surface.conformal_spread = \"final\" "
          "fits it against the final fit's).") in report_stage.run(cfg, wd).read_text()
  cal["final_over_heldout_sd"] = 1.02
  assert "The factor was fitted" not in report_stage.run(cfg, wd).read_text()
  cal["spread"] = "final"
  assert ("The factor was fitted against the final fit's spread "
          "(surface.conformal_spread = \"final\").") in report_stage.run(
              cfg, wd).read_text()
  cal["spread"] = "split"
  assert ("The intervals' factor was fitted against the final fit's spread, and the "
          "optimiser decides on the factor fitted against the fold fits' "
          "(surface.conformal_spread = \"split\").") in report_stage.run(
              cfg, wd).read_text()
  # What the factor took as its units: said only where pool states were asked for.
  cal["units"] = {"setting": "pairs"}
  assert "conformal units" not in report_stage.run(cfg, wd).read_text()
  assert "surface.conformal_units" not in report_stage.run(cfg, wd).read_text()
  cal["units"] = {"setting": "pools", "units": 48, "quantile": 0.91875}
  assert ("The factor took the 48 held-out pool states as its units, each weighted "
          "equally, at the pooled errors' 0.9187 quantile (surface.conformal_units = "
          "\"pools\").") in report_stage.run(cfg, wd).read_text()
  cal["units"] = {"setting": "pools", "units": 8, "quantile": 1.0125,
                  "reason": "8 pool states; a 90% bound for a new pool needs 9, so the "
                            "largest held-out error sets the scale"}
  assert ("quantile (surface.conformal_units = \"pools\"): 8 pool states; a 90% bound "
          "for a new pool needs 9, so the largest held-out error sets the scale.") in (
              report_stage.run(cfg, wd).read_text())
  cal["units"] = {"setting": "pools", "reason": "the sweep has one pool state: the "
                  "contrasts are the units"}
  assert ("The contrasts stayed the conformal units (the sweep has one pool state: the "
          "contrasts are the units; surface.conformal_units = \"pools\").") in (
              report_stage.run(cfg, wd).read_text())
  # The reports' units apart from the decisions': both factors said.
  cal["units"] = {"setting": "pools_reported", "units": 48, "quantile": 0.91875,
                  "decisions": {"units": "contrasts", "scale": 1.234}}
  assert ("quantile (surface.conformal_units = \"pools_reported\"). The optimiser "
          "decided on the contrasts' factor (1.234); the intervals and the reported "
          "gains carry the pool states'.") in report_stage.run(cfg, wd).read_text()
  cal["units"] = {"setting": "pools_reported", "reason": "the sweep has one pool "
                  "state: the contrasts are the units"}
  md = report_stage.run(cfg, wd).read_text()
  assert "surface.conformal_units = \"pools_reported\")." in md
  assert "The optimiser decided" not in md


def test_covariate_extrapolation_is_stated_under_the_surface(tmp_path, cfg, monkeypatch):
  wd = _workdir(tmp_path)
  info = {"covariate_extrapolation": "linear"}
  monkeypatch.setattr(FakeSurface, "info", info, raising=False)
  assert "Covariates outside the sweep's range" not in report_stage.run(
      cfg, wd).read_text()
  info["covariate_extrapolation"] = "clip_decisions"
  assert ("Covariates outside the sweep's range: the optimiser decides with them "
          "clipped to the sweep's range (the pick and the safe check), while the "
          "predictions, effects and the pick's reported gains shown here extrapolate "
          "them "
          "(surface.covariate_extrapolation = \"clip_decisions\").") in report_stage.run(
              cfg, wd).read_text()
  info["covariate_extrapolation"] = "clip"
  assert "every reader (the optimiser, predictions and effects) sees them clipped" in (
      report_stage.run(cfg, wd).read_text())


def test_covariate_selection_is_stated_under_the_surface(tmp_path, cfg, monkeypatch):
  wd = _workdir(tmp_path)
  assert "Covariates: the stack" not in report_stage.run(cfg, wd).read_text()
  sel = {"setting": "select", "chosen": "blind", "units": 40, "aware_mse": 0.0021,
         "blind_mse": 0.0012, "unit_diff_mean": 0.0019, "unit_diff_se": 0.00095}
  monkeypatch.setattr(FakeSurface, "info", {"covariate_selection": sel}, raising=False)
  md = report_stage.run(cfg, wd).read_text()
  assert ("Covariates: the stack dropped them (held-out contrast error 0.0021 with the "
          "covariates; 0.0012 without (summed per pool state, 0.0019 +- 0.00095 lower), "
          "over 40 held-out states). On the sweep's held-out pool states") in md
  sel.update(chosen="aware", blind_mse=0.0030, unit_diff_mean=-0.0009)
  md = report_stage.run(cfg, wd).read_text()
  assert ("Covariates: the stack kept them (held-out contrast error 0.0021 with the "
          "covariates; 0.003 without (summed per pool state, -0.0009 +- 0.00095 lower), "
          "over 40 held-out states; another set replaces the covariates as capped only "
          "when") in md
  # "select_all": the set on every component is stated beside the others.
  sel.update(setting="select_all", chosen="all", all_mse=0.0011, all_diff_mean=0.001,
             all_diff_se=0.0002)
  md = report_stage.run(cfg, wd).read_text()
  assert ("Covariates: the stack kept every principal component of the pool states "
          "(held-out contrast error 0.0021 with the covariates; 0.003 without (summed "
          "per pool state, -0.0009 +- 0.00095 lower); 0.0011 on all their components "
          "(summed per pool state, 0.001 +- 0.0002 lower), over 40 held-out states;") in md
  # "aware" as set (no selection made): nothing to state.
  monkeypatch.setattr(FakeSurface, "info", {"covariate_selection": {
      "setting": "aware", "chosen": "aware"}}, raising=False)
  assert "Covariates: the stack" not in report_stage.run(cfg, wd).read_text()


def test_held_out_guard_evidence_is_stated_under_the_surface(tmp_path, cfg, monkeypatch):
  wd = _workdir(tmp_path)
  assert "Uniform check: on" not in report_stage.run(cfg, wd).read_text()
  g = {"cells": 48, "changed": 12, "loss_unguarded": 1.7211, "loss_guarded": 1.7226,
       "diff_se": 0.0044, "guard": False}
  monkeypatch.setattr(FakeSurface, "info", {"heldout_guard": g}, raising=False)
  md = report_stage.run(cfg, wd).read_text()
  assert ("Uniform check: on 48 held-out pool states of the sweep, choosing among each "
          "state's own runs (the run nearest uniform standing in for uniform), the check "
          "changed 12 choices, and the checked rule's mean observed loss was 1.723 "
          "against 1.721 without it (difference +0.0015 +- 0.0044). So the default "
          "trigger (\"heldout\") runs the check only off the support. The difference is "
          "within two standard errors: the held-out runs cannot tell the two rules "
          "apart.") in md
  assert "optimise.off_support_trigger = \"always\" checks every pick." in md
  # Evidence beyond two standard errors, for the guard: no "cannot tell".
  g.update(loss_guarded=1.70, diff_se=0.002, guard=True)
  md = report_stage.run(cfg, wd).read_text()
  assert ("(difference -0.0211 +- 0.002). So the default trigger (\"heldout\") runs "
          "the check on every pool.") in md
  assert "cannot tell" not in md
  # A surface saved before the standard error: the means alone.
  del g["diff_se"]
  md = report_stage.run(cfg, wd).read_text()
  assert "without it. So the default trigger" in md and "cannot tell" not in md
  # No held-out decisions (one pool state): nothing to state.
  g.update(cells=0, loss_guarded=None, loss_unguarded=None)
  assert "Uniform check: on" not in report_stage.run(cfg, wd).read_text()


def _report_with_diagnostic(cfg, wd: pathlib.Path, key: str, value: object) -> str:
  """The report after mixture.json's diagnostics[key] is set to `value`."""
  path = wd / "optimise" / "mixture.json"
  mix = json.loads(path.read_text())
  mix.setdefault("diagnostics", {})[key] = value
  path.write_text(json.dumps(mix))
  return report_stage.run(cfg, wd).read_text()


def test_decision_average_is_explained(tmp_path, cfg):
  wd = _workdir(tmp_path)
  used = {"used": True, "prior": "token shares", "surface_pick": {"a": 0.25, "b": 0.75},
          "companion_pick": {"a": 0.5, "b": 0.5}}
  md = _report_with_diagnostic(cfg, wd, "decision_average", used)
  assert ("decision average: the recommendation is the mean of the surface's pick (a=0.25, "
          "b=0.75) and its companion model's pick (a=0.5, b=0.5, the best of Monte-Carlo "
          "mixtures around the token shares); the safe objective's check applies to the "
          "surface's pick, not to the mean") in md
  assert ("around the token shares); the mean passed the safe objective's check and mean "
          "guard") in _report_with_diagnostic(cfg, wd, "decision_average",
                                              {**used, "setting": "checked"})
  assert ("the mean passed the safe objective's mean guard (the off-support check "
          "applies to the surface's pick)") in _report_with_diagnostic(
              cfg, wd, "decision_average", {**used, "setting": "guarded"})
  assert ("the mean passed the safe objective's mean guard, and the safe objective had "
          "kept the surface's own pick") in _report_with_diagnostic(
              cfg, wd, "decision_average", {**used, "setting": "held"})
  assert ("around the token shares; it reads epochs, at the pool's tokens and the "
          "sweep's median budget); the mean passed") in _report_with_diagnostic(
              cfg, wd, "decision_average",
              {**used, "setting": "guarded",
               "companion_pool": "the pool's tokens and the sweep's median budget"})
  assert "decision average" not in _report_with_diagnostic(
      cfg, wd, "decision_average", {"used": False,
                                    "reason": "the surface has no companion"})
