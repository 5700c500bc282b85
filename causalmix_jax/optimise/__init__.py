"""The jitted mixture optimiser (CausalMix-A and -S) under constraints and risk settings,
and the `optimise` pipeline stage.

Modules: `constraints` (the feasible set, exact projection, checks), `search` (jitted
objectives and searches), `recommend` (the public entry point), `stage` (the stage).
"""

from causalmix_jax.optimise.constraints import Constraints
from causalmix_jax.optimise.constraints import InfeasibleConstraintsError
from causalmix_jax.optimise.recommend import recommend
from causalmix_jax.optimise.stage import run_stage

__all__ = ["Constraints", "InfeasibleConstraintsError", "recommend", "run_stage"]
