"""Config sections for the intervention design and the vmapped proxy sweep."""

from __future__ import annotations

import ml_collections


def design_section(variants: frozenset[str]) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  smoke = "smoke" in variants
  # Mixtures per pool state (runs = n_pool_states * n_mixtures * seeds).
  c.n_mixtures = 8 if smoke else (10 if "cpu" in variants else 48)
  # Dirichlet around each state's token shares with these concentrations (total
  # concentration = c * n_domains); a share of flat-Dirichlet and space-filling draws
  # (the latter two are shared by every state).
  c.concentrations = (1.0, 5.0, 25.0)
  c.flat_fraction = 0.2
  c.space_filling_fraction = 0.2
  # One mixture per pool state (every intervention its own pool state, as in the
  # paper): n_pool_states interventions, n_mixtures unused. Otherwise every state gets
  # n_mixtures mixtures. Off by default: on the quickstart's 80 runs the per-state
  # design's pick trained worse than this one's (experiments/quickstart/README.md);
  # experiments/shift uses it.
  c.state_per_mixture = False
  # Reference mixtures run in every pool state in place of its first prior-centred
  # draws: "uniform" and/or "natural" (the state's token shares). They give the sweep
  # the outcome of uniform under every state, which the surface's held-out guard and
  # the safe objective compare a pick with (experiments/surface_zoo/README.md).
  c.anchors = ()
  # Pool states: the full pool, then scarce / rich / duplicated / subsampled variants.
  # Runs = n_pool_states * seeds (one mixture per state) or n_pool_states * n_mixtures
  # * seeds.
  c.n_pool_states = 2 if smoke else 4
  # Factors by which scarce/rich/subsampled states shrink or grow a domain.
  c.shift_factors = (2.0, 4.0, 8.0)
  # Kinds of state cycled through after the first, and whether the first state is the
  # full pool (False: every state is a variant, e.g. only small subsamples). "quality":
  # a subsample (as "subsample") in which one or two domains first keep only their top
  # `quality_fractions` of documents by the reference score (needs reference.enabled).
  c.state_kinds = ("scarce", "rich", "dup", "subsample")
  c.include_full_pool = True
  # A subsampled domain keeps a fraction drawn uniformly in [1/f, this].
  c.subsample_max_fraction = 1.0
  c.dup_rates = (0.25, 0.5)
  c.quality_fractions = (0.25, 0.5, 0.75)
  # No state exposes fewer tokens than this in any domain (>= proxy seq_len + 1).
  c.min_tokens_per_domain = 2048 if smoke else 8192
  c.seeds = 1 if smoke else 2
  # Fraction of interventions flagged held out (for validating the surface).
  c.heldout_fraction = 0.1
  c.min_weight = 0.0
  c.max_weight = 1.0
  c.max_epochs = 0.0  # 0 = no repetition cap
  return c


def sweep_section(variants: frozenset[str]) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  smoke = "smoke" in variants
  # Runs per compiled program call (padded to a multiple of the device count).
  c.chunk_size = 4 if smoke else 32
  # Proxies trained side by side (vmapped) inside one compiled call: 0 = up to 32 per
  # device on CPU (sweep.CPU_RUNS_PER_DEVICE, measured) and the whole chunk on
  # accelerators; the rest of a chunk is a lax.map over groups of this width.
  c.vmap_width = 0
  # Evaluation batches (of proxy.optim.batch_size) per domain and for the target set.
  c.eval_batches = 2 if smoke else 4
  # A run whose final training loss or evaluation loss exceeds this (or is NaN/Inf) is
  # recorded as diverged.
  c.divergence_loss = 1e3
  # Show a progress bar (tqdm) over chunks.
  c.progress = True
  return c
