"""The stage graph and its runner: what each stage reads, writes and depends on; a stage
whose artifact is up to date (same config sections, same input data) is skipped, a stale
upstream is named instead of silently reused, and a workdir stays bound to its study."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import pathlib
import time
from typing import Any, Callable, Sequence

import ml_collections

from causalmix_jax import artifacts
from causalmix_jax import sharding
from causalmix_jax import study as study_lib
from causalmix_jax.stages import analyse
from causalmix_jax.stages import design
from causalmix_jax.stages import fit
from causalmix_jax.stages import optimise
from causalmix_jax.stages import pool
from causalmix_jax.stages import reference
from causalmix_jax.stages import report
from causalmix_jax.stages import sweep
from causalmix_jax.stages import target
from causalmix_jax.stages import validate

log = logging.getLogger(__name__)

StageFn = Callable[[ml_collections.ConfigDict, pathlib.Path], pathlib.Path]
STUDY_JSON = "study.json"


class StaleUpstreamError(RuntimeError):
  """An upstream stage's artifact no longer matches the config or its own inputs."""


class StudyMismatchError(RuntimeError):
  """The workdir holds another study's artifacts."""


@dataclasses.dataclass(frozen=True)
class StageSpec:
  """A pipeline stage.

  fn: `run(config, workdir) -> artifact path`.
  output: the stage's main artifact, relative to the workdir.
  inputs: upstream artifacts (relative paths) whose contents feed the stage.
  config_keys: config sections (or dotted keys, "a.b") that affect the stage.
  fingerprint: maps the config to a string describing external inputs (e.g. the pool's
    source files), hashed into the stage's stamp.
  optional_inputs: upstream artifacts used (and hashed) when present, but not required.
  """
  name: str
  fn: StageFn
  output: str
  inputs: tuple[str, ...]
  config_keys: tuple[str, ...]
  fingerprint: Callable[[ml_collections.ConfigDict], str] | None = None
  optional_inputs: tuple[str, ...] = ()

  @property
  def stage_dir(self) -> str:
    return pathlib.PurePosixPath(self.output).parts[0]


S = study_lib
_REFERENCE = (S.REFERENCE_JSON, S.DOC_SCORES_NPZ, S.REFERENCE_COVARIATES_JSON)
STAGES: dict[str, StageSpec] = {s.name: s for s in [
    StageSpec("pool", pool.run, S.POOL_JSON, (), ("seed", "pool", "covariates"),
              fingerprint=pool.source_fingerprint),
    StageSpec("reference", reference.run, S.REFERENCE_JSON, (S.POOL_JSON,),
              ("seed", "reference", "pool.deploy", "covariates")),
    StageSpec("design", design.run, S.DESIGN_NPZ, (S.POOL_JSON, S.COVARIATES_JSON),
              ("seed", "design", "proxy", "reference.enabled"),
              optional_inputs=_REFERENCE),
    StageSpec("sweep", sweep.run, S.RUNS_PARQUET, (S.POOL_JSON, S.DESIGN_NPZ),
              ("seed", "proxy", "sweep", "mesh"), optional_inputs=(S.DOC_SCORES_NPZ,)),
    StageSpec("fit", fit.run, S.SURFACE_JSON, (S.RUNS_PARQUET,),
              ("seed", "surface", "outcome", "optimise.outcome_weights")),
    StageSpec("optimise", optimise.run, S.MIXTURE_JSON, (S.SURFACE_JSON, S.COVARIATES_JSON),
              ("seed", "optimise", "outcome", "target"),
              optional_inputs=(S.POOL_JSON, S.POSTERIOR_NPZ, S.DEPLOY_JSON) + _REFERENCE),
    StageSpec("validate", validate.run, S.VALIDATE_SUMMARY,
              (S.POOL_JSON, S.COVARIATES_JSON, S.RUNS_PARQUET, S.SURFACE_JSON,
               S.MIXTURE_JSON),
              ("seed", "validate", "proxy", "target", "sweep", "optimise", "surface",
               "outcome", "mesh"), optional_inputs=(S.DEPLOY_JSON,) + _REFERENCE),
    StageSpec("analyse", analyse.run, S.INTERPRETATION_JSON,
              (S.SURFACE_JSON, S.MIXTURE_JSON, S.RUNS_PARQUET), ("report", "outcome"),
              optional_inputs=(S.POSTERIOR_NPZ,)),
    # The mixture comes from optimise/mixture.json unless target.weights or
    # target.mixture_path say otherwise (train_target names what is missing).
    StageSpec("target", target.run, S.TARGET_SUMMARY, (S.POOL_JSON,),
              ("seed", "target", "mixing", "mesh"), optional_inputs=(S.MIXTURE_JSON,)),
    StageSpec("report", report.run, S.REPORT_MD, (S.SURFACE_JSON, S.MIXTURE_JSON),
              ("report", "outcome"),
              optional_inputs=(S.POOL_JSON, S.COVARIATES_JSON, S.RUNS_PARQUET,
                               S.POSTERIOR_NPZ, S.VALIDATE_SUMMARY, S.TARGET_SUMMARY,
                               S.INTERPRETATION_JSON)),
]}

ORDER: tuple[str, ...] = tuple(STAGES)

# Stages without collectives (host computation on files): in a multi-process job only
# process 0 runs them; the others wait at the barrier after the stage and read what it
# wrote. Every other stage runs on every process.
PROCESS_0_STAGES = frozenset({"pool", "reference", "design", "fit", "optimise", "analyse",
                              "report"})


# Config keys added after studies were written, with the value that computes what those
# studies computed. At that value a key is left out of a stage's config section, so a
# stage built before the key existed stays up to date; any other value makes it stale.
ADDED_KEYS: dict[str, Any] = {"surface.stack_discrepancy": "none",
                              "surface.covariate_extrapolation": "linear",
                              "optimise.off_support": "uniform",
                              "optimise.safe_score": "bound",
                              "optimise.off_support_trigger": "range",
                              "optimise.safe_baseline": "uniform",
                              "optimise.mean_guard": "none",
                              "optimise.fallback_score": "bound",
                              "surface.companion": "none",
                              "optimise.decision_average": "companion"}


def _drop_added_defaults(d: dict[str, Any]) -> None:
  """Removes from the config dict `d` every key of ADDED_KEYS at its earlier value."""
  for added, default in ADDED_KEYS.items():
    *path, leaf = added.split(".")
    node: Any = d
    for part in path:
      node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict) and leaf in node and node[leaf] == default:
      del node[leaf]


def _config_section(cfg: ml_collections.ConfigDict, keys: Sequence[str]) -> dict[str, Any]:
  d = cfg.to_dict()
  _drop_added_defaults(d)
  sub = {}
  for k in keys:  # "a" or a dotted path "a.b"
    v: object = d
    for part in k.split("."):
      v = v.get(part) if isinstance(v, dict) else None
    sub[k] = v
  return json.loads(json.dumps(sub, sort_keys=True, default=str))


def config_digest(cfg: ml_collections.ConfigDict, keys: Sequence[str]) -> str:
  return hashlib.sha256(json.dumps(_config_section(cfg, keys), sort_keys=True
                                   ).encode()).hexdigest()


def _fingerprint_digest(spec: StageSpec, cfg: ml_collections.ConfigDict) -> str:
  return hashlib.sha256(spec.fingerprint(cfg).encode()).hexdigest() if spec.fingerprint \
      else ""


def stage_digest(spec: StageSpec, cfg: ml_collections.ConfigDict,
                 workdir: pathlib.Path) -> str:
  """Hash of the stage's config sections, external inputs and the contents of its inputs."""
  h = hashlib.sha256(config_digest(cfg, spec.config_keys).encode())
  if spec.fingerprint:
    h.update(spec.fingerprint(cfg).encode())
  for rel in spec.inputs + spec.optional_inputs:
    p = workdir / rel
    if p.exists():
      h.update(rel.encode())
      h.update(artifacts.file_digest(p).encode())
  return h.hexdigest()


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
  if not isinstance(d, dict):
    return {prefix: d}
  out: dict[str, Any] = {}
  for k, v in d.items():
    out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
  return out


def changed_keys(old: Any, new: Any, limit: int = 8) -> str:
  """The dotted keys whose values differ, as "a.b: 1 -> 2; ..." (at most `limit`)."""
  fo, fn = _flat(old), _flat(new)
  keys = sorted(k for k in set(fo) | set(fn) if fo.get(k) != fn.get(k))
  text = "; ".join(f"{k}: {fo.get(k)!r} -> {fn.get(k)!r}" for k in keys[:limit])
  return text + (f"; and {len(keys) - limit} more" if len(keys) > limit else "")


def _read_stamp(workdir: pathlib.Path, spec: StageSpec) -> dict[str, Any] | None:
  path = workdir / spec.stage_dir / "stamp.json"
  if not path.exists():
    return None
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):
    return None


def upstream_stages(spec: StageSpec, optional: bool = False) -> list[StageSpec]:
  """The stages that write one of `spec`'s required (or, with `optional`, its optional)
  inputs, in pipeline order."""
  rels = spec.optional_inputs if optional else spec.inputs
  dirs = {pathlib.PurePosixPath(rel).parts[0] for rel in rels}
  return [s for s in STAGES.values() if s.stage_dir in dirs and s.name != spec.name]


def staleness(spec: StageSpec, cfg: ml_collections.ConfigDict,
              workdir: pathlib.Path) -> str | None:
  """Why `spec`'s finished artifact no longer matches the config, or None if it does (or
  it was never stamped)."""
  stamp = _read_stamp(workdir, spec)
  if stamp is None or not (workdir / spec.output).exists():
    return None
  section = _config_section(cfg, spec.config_keys)
  if "config" in stamp and stamp["config"] != section:
    return f"its config changed ({changed_keys(stamp['config'], section)})"
  if "fingerprint" in stamp and stamp["fingerprint"] != _fingerprint_digest(spec, cfg):
    return "its input files on disk changed"
  if stamp.get("digest") != stage_digest(spec, cfg, workdir):
    return "its inputs changed"
  return None


def _check_upstream(spec: StageSpec, cfg: ml_collections.ConfigDict,
                    workdir: pathlib.Path, force: bool) -> dict[str, str]:
  """Upstream digests for the stamp. A stale required upstream is an error unless
  `force`; a stale optional one is a warning."""
  digests = {}
  required = {s.name for s in upstream_stages(spec)}
  ups = {s.name: s for s in upstream_stages(spec) + upstream_stages(spec, optional=True)}
  for up in ups.values():
    why = staleness(up, cfg, workdir)
    if why is not None:
      msg = (f"stage {spec.name!r} reads {up.stage_dir}/, which is stale: {why} since "
             f"{up.stage_dir}/ was built. Run --stage={up.name} first (or --stage=all), or "
             "pass --force to use it as it is")
      if up.name in required and not force:
        raise StaleUpstreamError(msg)
      log.warning("%s (%s: continuing)", msg, "--force" if force else "optional input")
    stamp = _read_stamp(workdir, up)
    if stamp is not None:
      digests[up.name] = str(stamp.get("digest"))
  return digests


def bind_study(cfg: ml_collections.ConfigDict, workdir: pathlib.Path,
               study_id: str | None, force: bool) -> None:
  """Binds the workdir to `study_id` (e.g. the config file) on first use; later runs of
  another study are refused unless `force`, naming the config keys that differ."""
  if study_id is None:
    return
  path = workdir / STUDY_JSON
  current = json.loads(json.dumps(cfg.to_dict(), default=str))
  if path.exists():
    bound = artifacts.read_json(path, "study binding")
    if bound.get("study") != study_id:
      diff = changed_keys(bound.get("config", {}), current)
      msg = (f"workdir {workdir} belongs to study {bound.get('study')!r}, not "
             f"{study_id!r} (config keys that differ: {diff or 'none'}); use another "
             "--workdir, or pass --force to rebind it")
      if not force:
        raise StudyMismatchError(msg)
      log.warning("%s (--force: rebinding)", msg)
    elif bound.get("config") == current:
      return
  if artifacts.is_writer():
    artifacts.write_json(path, {"study": study_id, "config": current})


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
  upstream = _check_upstream(spec, cfg, workdir, force)
  out = workdir / spec.output
  stage_dir = workdir / spec.stage_dir
  stamp_path = stage_dir / "stamp.json"
  digest = stage_digest(spec, cfg, workdir)
  stamp = _read_stamp(workdir, spec)
  if not force and out.exists() and stamp is not None and stamp.get("digest") == digest:
    log.info("stage %s: up to date (%s), skipped", name, out)
    return out
  stage_dir.mkdir(parents=True, exist_ok=True)
  if artifacts.is_writer():  # atomic_path's ".<name>.*.tmp" of writes cut short by a kill
    for tmp in stage_dir.glob(".*.tmp"):
      log.info("stage %s: removing %s, left by an interrupted write", name, tmp)
      tmp.unlink(missing_ok=True)
  t0 = time.time()
  log.info("stage %s: running", name)
  result = spec.fn(cfg, workdir)
  if artifacts.is_writer():  # only once the stage has succeeded
    artifacts.write_json(stage_dir / "config.json", cfg.to_dict())
    artifacts.write_json(stamp_path, {
        "stage": name, "digest": digest, "seconds": time.time() - t0,
        "artifact": spec.output, "config": _config_section(cfg, spec.config_keys),
        "fingerprint": _fingerprint_digest(spec, cfg), "upstream": upstream})
  log.info("stage %s: done in %.1fs -> %s", name, time.time() - t0, result)
  return pathlib.Path(result)


def run_stages(names: Sequence[str], cfg: ml_collections.ConfigDict,
               workdir: str | pathlib.Path, *, force: bool = False,
               study_id: str | None = None) -> list[pathlib.Path]:
  """Runs stages in pipeline order. `names` may contain "all". `study_id` (the launch
  script passes the config file and variant) binds the workdir to one study.

  In a multi-process job every process calls this with the same arguments: the
  processes meet at a barrier after each stage, so each stage starts from the artifacts
  process 0 wrote, and the stages of PROCESS_0_STAGES run on process 0 only."""
  if "all" in names:
    names = ORDER
  unknown = [n for n in names if n not in STAGES]
  if unknown:
    raise KeyError(f"unknown stage(s) {unknown}; known: all, {', '.join(ORDER)}")
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  bind_study(cfg, workdir, study_id, force)
  sharding.sync_processes("pipeline: study bound")
  outputs = []
  for name in [n for n in ORDER if n in names]:
    if artifacts.is_writer() or name not in PROCESS_0_STAGES:
      outputs.append(run_stage(name, cfg, workdir, force=force))
    else:
      outputs.append(workdir / STAGES[name].output)
    sharding.sync_processes(f"pipeline: stage {name} done")
  return outputs
