"""The stage registry: what each stage reads, writes and depends on, and the runner that
skips a stage whose artifact is up to date (same config sections, same input data)."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import logging
import pathlib
import time
from typing import Callable, Sequence

import ml_collections

from causalmix_jax import artifacts

log = logging.getLogger(__name__)

StageFn = Callable[[ml_collections.ConfigDict, pathlib.Path], pathlib.Path]


@dataclasses.dataclass(frozen=True)
class StageSpec:
  """A pipeline stage.

  target: "module:function" implementing `run(config, workdir) -> artifact path`.
  output: the stage's main artifact, relative to the workdir.
  inputs: upstream artifacts (relative paths) whose contents feed the stage.
  config_keys: config sections (or dotted keys, "a.b") that affect the stage.
  """
  name: str
  target: str
  output: str
  inputs: tuple[str, ...]
  config_keys: tuple[str, ...]
  # Optional "module:function" mapping the config to a string describing external
  # inputs (e.g. the pool's source files), hashed into the stage's stamp.
  fingerprint: str | None = None
  # Upstream artifacts that are used (and hashed) when present, but not required.
  optional_inputs: tuple[str, ...] = ()

  def load(self) -> StageFn:
    module, fn = self.target.split(":")
    return getattr(importlib.import_module(module), fn)

  @property
  def stage_dir(self) -> str:
    return pathlib.PurePosixPath(self.output).parts[0]


STAGES: dict[str, StageSpec] = {s.name: s for s in [
    StageSpec("pool", "causalmix_jax.data.pool_stage:run", "pool/pool.json", (),
              ("seed", "pool", "covariates"),
              fingerprint="causalmix_jax.data.pool_stage:source_fingerprint"),
    StageSpec("design", "causalmix_jax.interventions:run_stage",
              "design/interventions.npz", ("pool/pool.json", "pool/covariates.json"),
              ("seed", "design", "proxy")),
    StageSpec("sweep", "causalmix_jax.sweep:run_stage", "sweep/runs.parquet",
              ("pool/pool.json", "design/interventions.npz"),
              ("seed", "proxy", "sweep", "mesh")),
    StageSpec("fit", "causalmix_jax.surface.stage:run", "surface/surface.json",
              ("sweep/runs.parquet",),
              ("seed", "surface", "outcome", "optimise.outcome_weights")),
    StageSpec("optimise", "causalmix_jax.optimise:run_stage", "optimise/mixture.json",
              ("surface/surface.json", "pool/covariates.json"),
              ("seed", "optimise", "outcome", "target"),
              optional_inputs=("pool/pool.json", "surface/posterior.npz")),
    # The mixture comes from optimise/mixture.json unless target.weights or
    # target.mixture_path say otherwise (train_target names what is missing).
    StageSpec("target", "causalmix_jax.train_target:run_stage", "target/summary.json",
              ("pool/pool.json",), ("seed", "target", "mixing", "mesh"),
              optional_inputs=("optimise/mixture.json",)),
    StageSpec("report", "causalmix_jax.report:run_stage", "report/report.md",
              ("surface/surface.json", "optimise/mixture.json"), ("report", "outcome"),
              optional_inputs=("pool/pool.json", "pool/covariates.json",
                               "sweep/runs.parquet", "surface/posterior.npz",
                               "target/summary.json")),
]}

ORDER: tuple[str, ...] = tuple(STAGES)


def config_digest(cfg: ml_collections.ConfigDict, keys: Sequence[str]) -> str:
  d = cfg.to_dict()
  sub = {}
  for k in keys:  # "a" or a dotted path "a.b"
    v: object = d
    for part in k.split("."):
      v = v.get(part) if isinstance(v, dict) else None
    sub[k] = v
  return hashlib.sha256(
      json.dumps(sub, sort_keys=True, default=str).encode()).hexdigest()


def stage_digest(spec: StageSpec, cfg: ml_collections.ConfigDict,
                 workdir: pathlib.Path) -> str:
  """Hash of the stage's config sections and of the contents of its inputs."""
  h = hashlib.sha256(config_digest(cfg, spec.config_keys).encode())
  if spec.fingerprint:
    module, fn = spec.fingerprint.split(":")
    h.update(getattr(importlib.import_module(module), fn)(cfg).encode())
  for rel in spec.inputs + spec.optional_inputs:
    p = workdir / rel
    if p.exists():
      h.update(rel.encode())
      h.update(artifacts.file_digest(p).encode())
  return h.hexdigest()


def _is_writer() -> bool:
  try:
    import jax
    return jax.process_index() == 0
  except Exception:  # pylint: disable=broad-except
    return True


def run_stage(name: str, cfg: ml_collections.ConfigDict, workdir: str | pathlib.Path,
              *, force: bool = False) -> pathlib.Path:
  """Runs one stage unless its artifact exists with a matching stamp."""
  if name not in STAGES:
    raise KeyError(f"unknown stage {name!r}; known: {', '.join(ORDER)}")
  spec = STAGES[name]
  workdir = pathlib.Path(workdir)
  for rel in spec.inputs:
    if not (workdir / rel).exists():
      raise FileNotFoundError(
          f"stage {name!r} needs {workdir / rel}; run the stage that writes it first "
          f"(launch/main.py --stage=all runs them in order)")
  out = workdir / spec.output
  stage_dir = workdir / spec.stage_dir
  stamp_path = stage_dir / "stamp.json"
  digest = stage_digest(spec, cfg, workdir)
  if not force and out.exists() and stamp_path.exists():
    stamp = json.loads(stamp_path.read_text())
    if stamp.get("digest") == digest:
      log.info("stage %s: up to date (%s), skipped", name, out)
      return out
  stage_dir.mkdir(parents=True, exist_ok=True)
  if _is_writer():
    artifacts.write_json(stage_dir / "config.json", cfg.to_dict())
  t0 = time.time()
  log.info("stage %s: running", name)
  result = spec.load()(cfg, workdir)
  if _is_writer():
    artifacts.write_json(stamp_path, {"stage": name, "digest": digest,
                                      "seconds": time.time() - t0,
                                      "artifact": spec.output})
  log.info("stage %s: done in %.1fs -> %s", name, time.time() - t0, result)
  return pathlib.Path(result)


def run_stages(names: Sequence[str], cfg: ml_collections.ConfigDict,
               workdir: str | pathlib.Path, *, force: bool = False) -> list[pathlib.Path]:
  """Runs stages in pipeline order. `names` may contain "all"."""
  if "all" in names:
    names = ORDER
  unknown = [n for n in names if n not in STAGES]
  if unknown:
    raise KeyError(f"unknown stage(s) {unknown}; known: all, {', '.join(ORDER)}")
  ordered = [n for n in ORDER if n in names]
  return [run_stage(n, cfg, workdir, force=force) for n in ordered]
