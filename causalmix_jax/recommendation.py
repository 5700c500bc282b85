"""The recommended mixture and its evidence, with the mixture.json format and a domain-weight
YAML exporter (the `train_weights:` mapping Levanter/Olmix/RegMix-style trainers read)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
from typing import Any, Mapping

from causalmix_jax import artifacts

FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Interval:
  """A posterior summary: mean and the central credible interval [lo, hi]."""
  mean: float
  lo: float
  hi: float

  def to_dict(self) -> dict[str, float]:
    return {"mean": float(self.mean), "lo": float(self.lo), "hi": float(self.hi)}

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "Interval":
    return cls(float(d["mean"]), float(d["lo"]), float(d["hi"]))


@dataclasses.dataclass(frozen=True)
class Improvement:
  """How much better the recommendation is than a baseline mixture (positive = better,
  in the outcome's units), with its interval and the posterior probability of being
  better, all from joint posterior draws."""
  mean: float
  lo: float
  hi: float
  prob_better: float

  def to_dict(self) -> dict[str, float]:
    return {"mean": float(self.mean), "lo": float(self.lo), "hi": float(self.hi),
            "prob_better": float(self.prob_better)}

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "Improvement":
    return cls(float(d["mean"]), float(d["lo"]), float(d["hi"]), float(d["prob_better"]))


@dataclasses.dataclass(frozen=True)
class Recommendation:
  """A recommended mixture (canonical domain order) and the reasons for it."""
  domains: tuple[str, ...]
  weights: dict[str, float]
  predicted: Interval
  reference: dict[str, float]
  reference_predicted: Interval
  uniform_predicted: Interval
  improvement_over_reference: Improvement
  improvement_over_uniform: Improvement
  outcome: str
  maximize: bool
  method: str
  objective: str
  ci: float = 0.9
  objective_value: float | None = None  # the optimised objective (outcome units; PI: prob)
  constraints: dict[str, Any] = dataclasses.field(default_factory=dict)
  covariates: dict[str, float] = dataclasses.field(default_factory=dict)
  support: dict[str, Any] = dataclasses.field(default_factory=dict)
  zeroed: tuple[str, ...] = ()  # domains set to 0 by the sampler's smallest weight
  theta: dict[str, float] = dataclasses.field(default_factory=dict)
  diagnostics: dict[str, Any] = dataclasses.field(default_factory=dict)
  # The sweep's best-known mixture (empty when the surface does not record its sweep)
  # and the recommendation's improvement over it.
  best_known: dict[str, float] = dataclasses.field(default_factory=dict)
  improvement_over_best_known: Improvement | None = None

  def __post_init__(self):
    if list(self.weights) != list(self.domains):
      raise ValueError("Recommendation.weights must be keyed by the domains in order")

  def weight_vector(self) -> list[float]:
    return [self.weights[d] for d in self.domains]

  def to_dict(self) -> dict[str, Any]:
    """The mixture.json object."""
    return {
        "format_version": FORMAT_VERSION,
        "domains": list(self.domains),
        "weights": {d: float(self.weights[d]) for d in self.domains},
        "predicted": self.predicted.to_dict(),
        "reference": {"weights": {d: float(v) for d, v in self.reference.items()},
                      "predicted": self.reference_predicted.to_dict()},
        "uniform": {"weights": {d: 1.0 / len(self.domains) for d in self.domains},
                    "predicted": self.uniform_predicted.to_dict()},
        **({"best_known": {"weights": {d: float(v) for d, v in self.best_known.items()}}}
           if self.best_known else {}),
        "improvement": {"over_reference": self.improvement_over_reference.to_dict(),
                        "over_uniform": self.improvement_over_uniform.to_dict(),
                        **({"over_best_known": self.improvement_over_best_known.to_dict()}
                           if self.improvement_over_best_known is not None else {})},
        "outcome": self.outcome,
        "maximize": bool(self.maximize),
        "method": self.method,
        "objective": self.objective,
        "ci": float(self.ci),
        "objective_value": (None if self.objective_value is None
                            else float(self.objective_value)),
        "constraints": _jsonable(self.constraints),
        "covariates": {k: float(v) for k, v in self.covariates.items()},
        "support": _jsonable(self.support),
        "zeroed": list(self.zeroed),
        "theta": {d: float(v) for d, v in self.theta.items()},
        "diagnostics": _jsonable(self.diagnostics),
    }

  def to_json(self, indent: int | None = 2) -> str:
    return json.dumps(self.to_dict(), indent=indent)

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "Recommendation":
    for key in ("domains", "weights", "predicted"):
      if key not in d:
        raise ValueError(f"mixture.json: missing key {key!r}")
    domains = tuple(d["domains"])
    missing = [x for x in domains if x not in d["weights"]]
    if missing:
      raise ValueError(f"mixture.json: no weight for domain(s) {missing}")
    nan_iv = {"mean": math.nan, "lo": math.nan, "hi": math.nan}
    nan_imp = dict(nan_iv, prob_better=math.nan)
    ref = d.get("reference", {})
    imp = d.get("improvement", {})
    return cls(
        domains=domains,
        weights={x: float(d["weights"][x]) for x in domains},
        predicted=Interval.from_dict(d["predicted"]),
        reference={k: float(v) for k, v in ref.get("weights", {}).items()},
        reference_predicted=Interval.from_dict(ref.get("predicted", nan_iv)),
        uniform_predicted=Interval.from_dict(d.get("uniform", {}).get("predicted", nan_iv)),
        improvement_over_reference=Improvement.from_dict(imp.get("over_reference", nan_imp)),
        improvement_over_uniform=Improvement.from_dict(imp.get("over_uniform", nan_imp)),
        outcome=str(d.get("outcome", "")),
        maximize=bool(d.get("maximize", False)),
        method=str(d.get("method", "")),
        objective=str(d.get("objective", "")),
        ci=float(d.get("ci", 0.9)),
        objective_value=(None if d.get("objective_value") is None
                         else float(d["objective_value"])),
        constraints=dict(d.get("constraints", {})),
        covariates={k: float(v) for k, v in d.get("covariates", {}).items()},
        support=dict(d.get("support", {})),
        zeroed=tuple(d.get("zeroed", ())),
        theta={k: float(v) for k, v in d.get("theta", {}).items()},
        diagnostics=dict(d.get("diagnostics", {})),
        best_known={k: float(v) for k, v in d.get("best_known", {}).get("weights",
                                                                      {}).items()},
        improvement_over_best_known=(Improvement.from_dict(imp["over_best_known"])
                                     if "over_best_known" in imp else None),
    )

  @classmethod
  def from_json(cls, text: str) -> "Recommendation":
    return cls.from_dict(json.loads(text))

  def to_yaml(self) -> str:
    """Domain weights as YAML: a `train_weights:` mapping (domain -> weight, canonical
    order), preceded by comments with the prediction. Keys are always double-quoted, so
    any domain name is safe; values are full-precision floats."""
    lines = [
        f"# Data mixture recommended by causalmix_jax (method {self.method}, objective "
        f"{self.objective}).",
        f"# Predicted {self.outcome or 'outcome'}: {self.predicted.mean:.6g} "
        f"[{self.predicted.lo:.6g}, {self.predicted.hi:.6g}] ({self.ci:.0%} interval).",
        "train_weights:",
    ]
    for d in self.domains:
      lines.append(f"  {json.dumps(d)}: {float(self.weights[d])!r}")
    return "\n".join(lines) + "\n"

  def write(self, out_dir: str | os.PathLike[str]) -> pathlib.Path:
    """Writes mixture.json and mixture.yaml atomically; returns the JSON path."""
    out_dir = pathlib.Path(out_dir)
    path = artifacts.write_json(out_dir / "mixture.json", self.to_dict())
    with artifacts.atomic_path(out_dir / "mixture.yaml") as tmp:
      tmp.write_text(self.to_yaml())
    return path


def parse_yaml_weights(text: str) -> dict[str, float]:
  """Reads back the `train_weights:` mapping written by `Recommendation.to_yaml` (no
  PyYAML needed)."""
  out: dict[str, float] = {}
  inside = False
  for line in text.splitlines():
    if not line.strip() or line.lstrip().startswith("#"):
      continue
    if not line.startswith(" "):
      inside = line.strip() == "train_weights:"
      continue
    if inside:
      key, _, val = line.strip().rpartition(":")
      out[json.loads(key) if key.startswith('"') else key] = float(val)
  return out


def load_recommendation(path: str | os.PathLike[str]) -> Recommendation:
  return Recommendation.from_dict(artifacts.read_json(path, "mixture.json"))


def _jsonable(obj: Any) -> Any:
  """Plain JSON values (numpy scalars/arrays converted; non-finite floats -> None)."""
  def clean(v: Any) -> Any:
    if isinstance(v, dict):
      return {str(k): clean(x) for k, x in v.items()}
    if isinstance(v, list):
      return [clean(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
      return None
    return v
  return clean(json.loads(artifacts.to_json(obj, indent=None)))
