"""The jitted mixture optimiser (CausalMix-A and -S) under constraints and risk settings.

Modules: `constraints` (the feasible set, exact projection, checks), `search` (jitted
objectives and searches), `recommend` (the public entry point), `companion` (a
companion model's pick and its average with the surface's), `settings` (the
`optimise` config section -> constraints and reference). The stage is
`causalmix_jax.stages.optimise`.
"""

from causalmix_jax.optimise.constraints import Constraints
from causalmix_jax.optimise.constraints import InfeasibleConstraintsError
from causalmix_jax.optimise.recommend import recommend

__all__ = ["Constraints", "InfeasibleConstraintsError", "recommend"]
