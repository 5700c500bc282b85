"""The `optimise` config section turned into optimiser inputs: the feasible set
(`Constraints`), the reference mixture and the target's token budget. Unknown domains
and malformed values are errors that name the config key."""

from __future__ import annotations

from typing import Any

import ml_collections
import numpy as np

from causalmix_jax.optimise import constraints as cons
from causalmix_jax.optimise.recommend import SAFE_SETTINGS
from causalmix_jax.optimise.recommend import default_reference


def safe_settings(oc: ml_collections.ConfigDict) -> dict[str, str]:
  """recommend's safe-objective settings (`SAFE_SETTINGS`) from the optimise config
  section, recommend's defaults where a config predates a key."""
  return {k: str(oc.get(k, known[0])) for k, known in SAFE_SETTINGS.items()}


def target_budget_tokens(cfg: ml_collections.ConfigDict) -> float:
  """Tokens the target model trains on: steps x batch x seq_len (x grad accumulation)."""
  o = cfg.target.optim
  return float(o.steps) * float(o.batch_size) * float(cfg.target.model.seq_len) * float(
      o.grad_accum)


def constraints_from_config(oc: ml_collections.ConfigDict, domains: list[str],
                            tokens: dict[str, float] | None,
                            budget: float | None) -> cons.Constraints:
  """cfg.optimise -> Constraints; unknown domains in the per-domain keys are errors."""
  lo_over = cons.parse_domain_values(oc.domain_min, "optimise.domain_min")
  hi_over = cons.parse_domain_values(oc.domain_max, "optimise.domain_max")
  pinned = cons.parse_domain_values(oc.pinned, "optimise.pinned")
  for key, d in (("optimise.domain_min", lo_over), ("optimise.domain_max", hi_over),
                 ("optimise.pinned", pinned)):
    unknown = sorted(set(d) - set(domains))
    if unknown:
      raise ValueError(f"config key {key} names unknown domain(s) {unknown}; "
                       f"known: {domains}")
  lo = {d: lo_over.get(d, float(oc.min_weight)) for d in domains}
  hi = {d: hi_over.get(d, float(oc.max_weight)) for d in domains}
  return cons.Constraints(
      min_weight=lo, max_weight=hi, max_epochs=float(oc.max_epochs),
      tokens=tokens, budget_tokens=budget if tokens is not None else None, pinned=pinned,
      trust_radius=float(oc.trust_radius), trust_kind=str(oc.trust_kind),
      sampler_min_weight=float(oc.sampler_min_weight))


def reference_from_config(spec: str, surface: Any, domains: list[str],
                          tokens: dict[str, float] | None) -> np.ndarray:
  """`optimise.reference`: "sweep_mean", "uniform", "token_shares" or domain weights."""
  spec = (spec or "sweep_mean").strip()
  if spec == "uniform":
    return np.full(len(domains), 1.0 / len(domains))
  if spec in ("token_shares", "sweep_mean"):
    if spec == "sweep_mean" and any(getattr(surface, a, None) is not None
                                    for a in ("w_mean", "w_ref", "reference")):
      return default_reference(surface)
    if tokens is None:
      if spec == "token_shares":
        raise ValueError("config key optimise.reference='token_shares' needs pool.json")
      return default_reference(surface)
    t = np.asarray([tokens[d] for d in domains], np.float64)
    return t / t.sum()
  w = cons.parse_domain_values(spec, "optimise.reference")
  unknown = sorted(set(w) - set(domains))
  if unknown:
    raise ValueError(f"config key optimise.reference names unknown domain(s) {unknown}")
  v = np.asarray([w.get(d, 0.0) for d in domains], np.float64)
  if abs(v.sum() - 1) > 1e-6:
    raise ValueError(f"config key optimise.reference: weights sum to {v.sum():.6g}, not 1")
  return v
