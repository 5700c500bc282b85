"""A typed, lazy view of one study's workdir: every artifact a stage writes, read back
through one object, with each artifact's path defined once (here).

  from causalmix_jax import api
  study = api.open_study("/tmp/qs")
  study.runs.run_ids
  study.surface().cate(...)
  study.mixture.weights

Each view is read on first use and then cached; a missing artifact raises a
`MissingArtifactError` that names the file and the stage that writes it.
"""

from __future__ import annotations

import functools
import os
import pathlib
from typing import Any

import numpy as np

from causalmix_jax import artifacts

# Artifact paths, relative to the workdir. Stages and readers use these names only.
POOL_DIR = "pool"
POOL_JSON = "pool/pool.json"
COVARIATES_JSON = "pool/covariates.json"
DEPLOY_JSON = "pool/deploy.json"
REFERENCE_DIR = "reference"
REFERENCE_JSON = "reference/reference.json"
DOC_SCORES_NPZ = "reference/doc_scores.npz"
REFERENCE_COVARIATES_JSON = "reference/covariates.json"
DESIGN_NPZ = "design/interventions.npz"
DESIGN_JSON = "design/design.json"
RUNS_PARQUET = "sweep/runs.parquet"
SURFACE_DIR = "surface"
SURFACE_JSON = "surface/surface.json"
POSTERIOR_NPZ = "surface/posterior.npz"
SURFACE_DIAGNOSTICS = "surface/diagnostics.json"
MIXTURE_JSON = "optimise/mixture.json"
VALIDATE_DIR = "validate"
VALIDATE_RESULTS = "validate/results.parquet"
VALIDATE_SUMMARY = "validate/summary.json"
ANALYSIS_DIR = "analysis"
INTERPRETATION_JSON = "analysis/interpretation.json"
THETA_PNG = "analysis/cate_theta.png"
PARTIAL_DEPENDENCE_PNG = "analysis/cate_partial_dependence.png"
RANKING_PNG = "analysis/cate_ranking.png"
TARGET_DIR = "target"
TARGET_SUMMARY = "target/summary.json"
REPORT_DIR = "report"
REPORT_MD = "report/report.md"

# Which stage writes each artifact (its first path component), for error messages.
_WRITER = {"pool": "pool", "reference": "reference", "design": "design", "sweep": "sweep", "surface": "fit",
           "optimise": "optimise", "validate": "validate", "analysis": "analyse",
           "target": "target", "report": "report"}


class MissingArtifactError(FileNotFoundError):
  """An artifact the caller asked for has not been written (yet)."""


class Study:
  """The artifacts of one workdir. Cheap to construct; nothing is read until asked."""

  def __init__(self, workdir: str | os.PathLike[str]):
    self.workdir = pathlib.Path(workdir)
    self._surfaces: dict[str | None, Any] = {}

  def __repr__(self) -> str:
    done = [s for s, rel in (("pool", POOL_JSON), ("reference", REFERENCE_JSON),
                             ("design", DESIGN_NPZ),
                             ("sweep", RUNS_PARQUET), ("fit", SURFACE_JSON),
                             ("optimise", MIXTURE_JSON), ("validate", VALIDATE_SUMMARY),
                             ("analyse", INTERPRETATION_JSON), ("target", TARGET_SUMMARY),
                             ("report", REPORT_MD)) if self.has(rel)]
    return f"Study({str(self.workdir)!r}, stages done: {', '.join(done) or 'none'})"

  def path(self, rel: str) -> pathlib.Path:
    return self.workdir / rel

  def has(self, rel: str) -> bool:
    return self.path(rel).exists()

  def require(self, rel: str, what: str) -> pathlib.Path:
    """The artifact's path; a `MissingArtifactError` naming its stage when absent."""
    p = self.path(rel)
    if not p.exists():
      stage = _WRITER.get(pathlib.PurePosixPath(rel).parts[0], "?")
      raise MissingArtifactError(
          f"{what} not found: {p} (written by the {stage} stage; run "
          f"launch/main.py --stage={stage} with this workdir first)")
    return p

  # -- pool ------------------------------------------------------------------------------

  @functools.cached_property
  def pool(self) -> Any:
    """The tokenised pool (`data.pool.Pool`)."""
    from causalmix_jax.data import pool as pool_lib  # pylint: disable=import-outside-toplevel
    self.require(POOL_JSON, "pool")
    return pool_lib.load_pool(self.path(POOL_DIR))

  @functools.cached_property
  def pool_json(self) -> dict[str, Any]:
    return artifacts.read_json(self.require(POOL_JSON, "pool.json"), "pool.json")

  @functools.cached_property
  def tokens(self) -> dict[str, float]:
    """Unique training tokens per domain (`pool.json`'s `per_domain[d]["tokens"]`)."""
    path = self.path(POOL_JSON)
    per = self.pool_json.get("per_domain")
    if not isinstance(per, dict):
      raise ValueError(f"{path}: no 'per_domain' entry with token counts")
    out = {}
    for d in self.pool_json.get("domains", list(per)):
      if d not in per or "tokens" not in per[d]:
        raise ValueError(f"{path}: per_domain[{d!r}] has no 'tokens' count")
      out[d] = float(per[d]["tokens"])
    return out

  @functools.cached_property
  def covariates(self) -> dict[str, Any]:
    """The pool's covariates (per-domain and pool-level statistics, plus `vector`)."""
    return artifacts.read_json(self.require(COVARIATES_JSON, "pool covariates"),
                               "pool covariates")

  @functools.cached_property
  def covariate_vector(self) -> dict[str, float]:
    """The flat `x_*` covariate vector of the pool's full state (with the reference
    features when the reference stage is on)."""
    if "vector" not in self.covariates:
      raise ValueError(f"{self.path(COVARIATES_JSON)}: no 'vector' entry (the flattened "
                       "x_ features)")
    vector = dict(self.covariates["vector"])
    if self.reference_enabled:
      vector.update(self.reference_covariates["full"])
    return vector

  # -- reference model -------------------------------------------------------------------

  @functools.cached_property
  def reference(self) -> dict[str, Any]:
    """The reference stage's summary (`{"enabled": False}` when it is off)."""
    return artifacts.read_json(self.require(REFERENCE_JSON, "reference summary"),
                               "reference summary")

  @property
  def reference_enabled(self) -> bool:
    """Whether the reference stage ran with reference.enabled (workdirs without a
    reference/ directory: no)."""
    return self.has(REFERENCE_JSON) and bool(self.reference.get("enabled"))

  @functools.cached_property
  def doc_scores(self) -> Any:
    """The reference model's per-document scores (`data.doc_scores.DocScores`), or None
    when the reference stage is off."""
    if not self.reference_enabled:
      return None
    from causalmix_jax.data import doc_scores as doc_scores_lib  # pylint: disable=import-outside-toplevel
    return doc_scores_lib.DocScores.load(self.require(DOC_SCORES_NPZ, "document scores"))

  @functools.cached_property
  def reference_covariates(self) -> dict[str, Any]:
    """{"full": reference features of the full pool, "deploy": {"state", "covariates"}
    of the pool the recommendation is for}."""
    return artifacts.read_json(self.require(REFERENCE_COVARIATES_JSON,
                                            "reference covariates"), "reference covariates")

  @functools.cached_property
  def deploy(self) -> dict[str, Any]:
    """The pool the recommendation is for (`pool.deploy`): {"state": {"name",
    "n_tokens", "dup_rate"[, "quality"]}, "covariates": {x_...}}. With the reference
    stage on, the reference stage's copy (its covariates include the reference features
    and the quality filter). Workdirs built before it was recorded answer with the full
    pool."""
    if self.reference_enabled:
      return dict(self.reference_covariates["deploy"])
    if self.has(DEPLOY_JSON):
      return artifacts.read_json(self.path(DEPLOY_JSON), "deploy pool state")
    return {"state": {"name": "full", "n_tokens": dict(self.tokens),
                      "dup_rate": {d: 0.0 for d in self.tokens}},
            "covariates": self.covariate_vector}

  @property
  def deploy_tokens(self) -> dict[str, float]:
    """Unique tokens per domain of the pool the recommendation is for."""
    return {d: float(v) for d, v in self.deploy["state"]["n_tokens"].items()}

  @property
  def deploy_covariates(self) -> dict[str, float]:
    """The covariate vector of the pool the recommendation is for."""
    return dict(self.deploy["covariates"])

  # -- design and sweep ------------------------------------------------------------------

  @functools.cached_property
  def design(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(per-run arrays of interventions.npz, design.json)."""
    path = self.require(DESIGN_NPZ, "design")
    with np.load(path, allow_pickle=False) as z:
      arrays = {k: z[k] for k in z.files}
    return arrays, artifacts.read_json(self.require(DESIGN_JSON, "design.json"), "design")

  @functools.cached_property
  def runs(self) -> Any:
    """The sweep's runs table (`runs.Runs`)."""
    from causalmix_jax import runs as runs_lib  # pylint: disable=import-outside-toplevel
    return runs_lib.load_runs(self.require(RUNS_PARQUET, "runs table"))

  # -- surface and mixture ---------------------------------------------------------------

  def surface_dir(self, outcome: str | None = None) -> pathlib.Path:
    """Where the surface for `outcome` lives: `surface/` for the study's outcome, or
    `surface/<outcome>/` for the extra outcomes of a multi-outcome objective."""
    base = self.path(SURFACE_DIR)
    if outcome is not None and (base / outcome / "surface.json").exists():
      return base / outcome
    return base

  def surface(self, outcome: str | None = None) -> Any:
    """The fitted surface (for `outcome`, default the study's own)."""
    if outcome not in self._surfaces:
      from causalmix_jax.surface.surface import load_surface  # pylint: disable=import-outside-toplevel
      d = self.surface_dir(outcome)
      self.require(str(d.relative_to(self.workdir) / "surface.json"), "surface")
      s = load_surface(d)
      if outcome is not None and s.outcome != outcome.removeprefix("y_"):
        raise MissingArtifactError(
            f"no surface for outcome {outcome!r}: {d / outcome} is absent and {d} is "
            f"fitted for {s.outcome!r} (list the outcome in optimise.outcome_weights and "
            "run --stage=fit)")
      self._surfaces[outcome] = s
    return self._surfaces[outcome]

  @functools.cached_property
  def surface_diagnostics(self) -> dict[str, Any]:
    return artifacts.read_json(self.require(SURFACE_DIAGNOSTICS, "surface diagnostics"),
                               "surface diagnostics")

  @functools.cached_property
  def mixture(self) -> Any:
    """The optimise stage's recommendation (`recommendation.Recommendation`)."""
    from causalmix_jax.recommendation import load_recommendation  # pylint: disable=import-outside-toplevel
    return load_recommendation(self.require(MIXTURE_JSON, "mixture.json"))

  # -- analysis --------------------------------------------------------------------------

  @functools.cached_property
  def interpretation(self) -> Any:
    """The analyse stage's CATE interpretation of the surface over the sweep's pool
    states (`analysis.interpretation.Interpretation`)."""
    from causalmix_jax.analysis.interpretation import Interpretation  # pylint: disable=import-outside-toplevel
    doc = artifacts.read_json(self.require(INTERPRETATION_JSON, "CATE interpretation"),
                              "CATE interpretation")
    return Interpretation.from_dict(doc)

  # -- validation and target -------------------------------------------------------------

  @functools.cached_property
  def validation(self) -> Any:
    """The validate stage's table: one row per mixture (realized mean and interval over
    seeds, paired difference to the recommendation, prediction where made)."""
    import pandas as pd  # pylint: disable=import-outside-toplevel
    doc = artifacts.read_json(self.require(VALIDATE_SUMMARY, "validation summary"),
                              "validation summary")
    return pd.DataFrame(doc["table"])

  @functools.cached_property
  def validation_runs(self) -> Any:
    """Every validation run (one row per mixture and seed, with its `mixture` names)."""
    import pandas as pd  # pylint: disable=import-outside-toplevel
    return pd.read_parquet(self.require(VALIDATE_RESULTS, "validation results"))

  @functools.cached_property
  def target(self) -> dict[str, Any]:
    """The target stage's summary (final losses, per-domain evaluation, timings)."""
    return artifacts.read_json(self.require(TARGET_SUMMARY, "target summary"),
                               "target summary")
