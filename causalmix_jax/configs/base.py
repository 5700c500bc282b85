"""Assembles the full ml_collections config from its sections, with named variants.

`get_config("")` is the default study; `get_config("smoke")` is the tiny configuration
the tests use; `get_config("cpu")` fits a laptop CPU. Variants can be combined with
commas ("cpu,smoke"). Every section lives in its own module under `configs/` and exposes
`section(variants: frozenset[str]) -> ConfigDict`. The returned config is locked, so an
override of a key that does not exist is an error.
"""

from __future__ import annotations

import ml_collections

from causalmix_jax.configs import data as data_cfg
from causalmix_jax.configs import model as model_cfg
from causalmix_jax.configs import optimise as optimise_cfg
from causalmix_jax.configs import reference as reference_cfg
from causalmix_jax.configs import report as report_cfg
from causalmix_jax.configs import surface as surface_cfg
from causalmix_jax.configs import sweep as sweep_cfg
from causalmix_jax.configs import validate as validate_cfg

KNOWN_VARIANTS = frozenset({"smoke", "cpu"})

# Config keys whose value is a mapping keyed by domain (or outcome) name. The names are
# only known once the pool is, so each entry is set from the command line as
# --config.<key>.<name>=<value> (launch/main.py adds the entry).
DOMAIN_MAPPINGS = ("target.weights", "optimise.domain_min", "optimise.domain_max",
                   "optimise.pinned", "optimise.outcome_weights", "pool.deploy.fraction",
                   "pool.deploy.dup_rate", "pool.deploy.quality")


def set_mapping_entry(cfg: ml_collections.ConfigDict, key: str, name: str,
                      value: str | float) -> None:
  """cfg.<key>[name] = float(value) for a key of DOMAIN_MAPPINGS; errors name the key."""
  if key not in DOMAIN_MAPPINGS:
    raise KeyError(f"config key {key} is not a domain mapping; mappings: "
                   f"{', '.join(DOMAIN_MAPPINGS)}")
  try:
    number = float(value)
  except ValueError:
    raise ValueError(f"--config.{key}.{name}={value!r}: not a number") from None
  node = cfg
  for part in key.split("."):
    node = node[part]
  with cfg.unlocked():
    node[name] = number


def parse_variants(arg: str | None) -> frozenset[str]:
  """Parses "a,b" into a set of variant names, rejecting unknown ones."""
  names = frozenset(v.strip() for v in (arg or "").split(",") if v.strip())
  unknown = names - KNOWN_VARIANTS
  if unknown:
    raise ValueError(
        f"unknown config variant(s) {sorted(unknown)}; known: {sorted(KNOWN_VARIANTS)}")
  return names


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the locked config for the comma-separated variants in `arg`."""
  variants = parse_variants(arg)
  cfg = ml_collections.ConfigDict()
  cfg.variants = ",".join(sorted(variants))
  cfg.seed = 0
  # Name of the outcome column (`y_<name>`) the surface and optimiser work on.
  cfg.outcome = "target"
  cfg.pool = data_cfg.pool_section(variants)
  cfg.covariates = data_cfg.covariates_section(variants)
  cfg.reference = reference_cfg.section(variants)
  cfg.mixing = data_cfg.mixing_section(variants)
  cfg.mesh = model_cfg.mesh_section(variants)
  cfg.proxy = model_cfg.proxy_section(variants)
  cfg.target = model_cfg.target_section(variants)
  cfg.design = sweep_cfg.design_section(variants)
  cfg.sweep = sweep_cfg.sweep_section(variants)
  cfg.surface = surface_cfg.section(variants)
  cfg.optimise = optimise_cfg.section(variants)
  cfg.validate = validate_cfg.section(variants)
  cfg.report = report_cfg.section(variants)
  cfg.lock()
  return cfg
