"""Config section for the causal response surface (`causalmix_jax.surface.fit`).

Defaults need no tuning: feature floors, pairwise terms and prior scales are chosen by
marginal likelihood, nuisance models by cross-validation."""

from __future__ import annotations

import ml_collections


def section(variants: frozenset[str]) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # "stack" (default): the DML, GP and scaling-law families stacked by leave-pools-out
  # prediction of within-pool contrasts, intervals calibrated by split-conformal on
  # the held-out pools (surface/robust.py). Or one family alone: "dml" | "outcome" |
  # "gp" | "scaling" | "transfer".
  c.method = "stack"
  # Members: add "gp" (flexible in X; ~50 s a fit), "transfer" (the scaling law's
  # transfer form, where domains substitute for one another) or "trees" (LightGBM on
  # the mixture and the raw covariates, surface/trees.py: fits steps, kinks and worst
  # cases; no spread of its own and a zero slope in the mixture) or "hinge" (the DML
  # family with the "hinge" features below added: kinks at fixed shares of the uniform
  # weight, for thresholds and saturation; on the zoo it took weight on most worlds,
  # helped the threshold world and cost regret elsewhere, so it is not a default
  # member: experiments/surface_zoo, "World seeds 98 and 99"). Any of them with
  # "_blind" ("dml_blind", "scaling_blind") is that family without the covariates (the
  # same effect in every pool), which the stack weighs against the covariate-aware one
  # on held-out pools; left out when no covariate varies. With "_all" ("dml_all") it
  # is that family on every principal component of the pool states.
  c.stack_members = ("dml", "scaling")
  # "select" (default): each member above is also fitted without the covariates, and
  # the stack keeps that blind set only when its held-out contrast error per pool
  # state is lower than the aware set's by more than one standard error
  # (info["covariate_selection"]): effects move with the pool only where held-out
  # pools bear it out. The support check still sees the covariates. About twice the
  # members' fit time where covariates vary; nothing extra where none does.
  # "select_all": as "select", plus each member on every principal component of the
  # pool states instead of at most `max_x_components` ("dml_all", ...), a third set
  # that replaces the aware one by the same held-out test (of the sets that pass it,
  # the lowest error is kept); no extra fit where the cap keeps every component.
  # "aware": the members as named, with their covariates (name "dml_blind",
  # "dml_all" etc. to stack such copies freely beside them).
  c.stack_covariates = "select"
  # Effect-modifier bases of the DML member inside the stack. "quadratic" puts the
  # design past the number of runs on covariate-rich sweeps (dual form), ~5x the fit.
  c.stack_modifiers = ("linear",)
  c.interval_level = 0.9  # the interval the stack's conformal calibration targets
  # What the stack's conformal step calibrates on, among the held-out runs of one cell
  # (pool state, or fold): "pairs", the difference between two runs, which is what an
  # effect of one mixture against another is; or "cell_means", each run against its
  # cell's mean, which averages the other runs' errors away.
  c.stack_calibration = "pairs"
  # Whose posterior spread the conformal factor is fitted against: "heldout" (default),
  # the fold fits' spread at the held-out contrasts, whose errors they made; or "final",
  # the final fit's spread at the same contrasts, the spread the factor will scale.
  # The final fit saw more runs, so its spread is narrower, while a misfit's error does
  # not shrink with it; "final" keeps the factor's meaning when it is applied. "split":
  # the intervals (predict, cate, theta) as "final", and the draws the optimiser decides
  # on (and the held-out guard) as "heldout", so the decisions stay the default's.
  c.conformal_spread = "heldout"
  # What the conformal factor treats as exchangeable. "pools_reported" (default): the
  # intervals (predict, cate, theta) and a recommendation's reported predictions and
  # gains take the held-out pool states as the units, each weighted equally however many
  # contrasts it holds, with the finite-sample level for a new pool (`level * (K + 1) /
  # K` of the pooled errors over K states; with fewer states than the level needs, 9 at
  # 90%, the contrasts stay the units), while the optimiser, the level term and the
  # held-out guard keep "pairs"'s factor, so the decisions are "pairs"'s and only what
  # is reported widens (contrasts of one mixture with itself, from replicate runs, have
  # no spread and stay out of the pool states' bound). "pairs": every held-out contrast
  # is a unit, for the intervals too. "pools": the pool states' factor for the
  # decisions as well, which holds them back: on the zoo (48 states) it cost
  # 2.2% regret (rule 7, not adopted); on 16 states it cut false claims of a gain over
  # uniform from 17 to 5 at 2-4% more regret. Contrasts within a pool share its misfit,
  # so pool states are the guarantee a new pool asks for; they widen most where states
  # are few. Where the held-out cells are folds (one mixture per pool state) or the
  # sweep has one pool state (RegMix's), the contrasts stay the units. At world seeds
  # 94-95 "pools_reported" kept the regret to the digit and moved new-pool effect
  # coverage in band from 16 to 17 of 26 cells and gains over uniform below their
  # interval from 7.7% to 6.0% (experiments/surface_zoo, "World seeds 94 and 95").
  c.conformal_units = "pools_reported"
  # Pairs of replicate runs (one mixture in one pool state at two seeds) among the
  # held-out contrasts of the "pairs" calibration: "drop" (default) leaves them out;
  # "keep" scores them with the rest (the behaviour before; configs without the key).
  # Every member predicts such a pair exactly, with no spread, so once the replicates'
  # run noise is taken out its normalised error is 0 or unbounded, and the contrasts'
  # factor (the decisions') moved with how many replicate pairs a sweep holds. The
  # pool states' factor leaves them out either way. They leave before the sample of
  # at most 4,096 pairs, so a large sweep scores a full sample of effects. On
  # replicate sweeps of the zoo (world seeds 100-101) "drop" had 1.3% lower regret
  # and as many cells worse than uniform (experiments/surface_zoo, "World seeds 100
  # and 101").
  c.replicate_pairs = "drop"
  # Which held-out contrasts choose the stack's weights and its covariate set: "all"
  # (default) every held-out run's contrast to its cell's mean; "top" only those of the
  # runs in the better half of their cell, the region the optimiser moves into.
  c.stack_focus = "all"
  # The misfit the members' posterior spread does not carry: "none" (default), the
  # members' spread alone, scaled; or "rff", plus a smooth random function of the
  # mixture (surface/discrepancy.py) whose size and lengthscale are fitted on the same
  # held-out contrasts, and left out when they do not call for it. "rff" narrows the
  # gap on new pools where the misfit does not shrink with the spread, but it explains
  # part of the held-out error without the spread, which then widens less off-support
  # (see experiments/surface_zoo/README.md).
  c.stack_discrepancy = "none"
  # How the stack's members see a pool's covariates outside the sweep's range: "linear"
  # (default), as they are, so covariate terms extrapolate; or "clip", each covariate
  # clipped to the sweep's [min, max] (pool size and repetition still extrapolate
  # through the tokens and budget). The support check still sees the raw covariates.
  # "clip" improves decisions on shifted pools, but its intervals do not widen with the
  # distance clipped away, so off-support coverage falls (experiments/surface_zoo).
  # "hedge": the means clipped, the spread taken at the raw covariates, plus the gap
  # between the two means times a standard normal per draw; its shifted-pool intervals
  # cover, but the safe objective then falls back to uniform more often, which costs
  # regret on the zoo and on the shift study's real text. "clip_decisions": the
  # optimiser decides as with "clip" (its draws and the safe check see the clipped
  # covariates), while predict, cate, theta and the recommendation's reported
  # predictions and gains see them as they are, so the intervals a user reads are
  # "linear"'s. It lowers shifted-pool regret on the zoo, but it moves the pick away
  # from uniform on more pools and was worse than uniform on more shifted cells, so it
  # is not the default (experiments/surface_zoo, world seeds 53-60).
  c.covariate_extrapolation = "linear"
  # The safe objective's guard asks whether the pick beats uniform at the upper bound of
  # their paired difference. "none" (default): that bound as the stack's calibration
  # gives it. "conformal": its spread scaled by a split-conformal factor fitted on the
  # same query over the sweep's held-out pool states (the bound's pick against the run
  # nearest uniform, surface/decisions.py); the reported gain over uniform is scaled
  # alike. "report": the reported gain over uniform only, with the check deciding as
  # with "none". Needs 19 or more held-out pool states with a decision (at ci 0.9).
  c.decision_calibration = "none"
  # A second model of the same sweep, fitted beside the surface, whose own pick
  # `recommend` averages with the surface's (optimise.decision_average). "trees"
  # (default): LightGBM on the mixture and the raw covariates (the stack's tree
  # member, fitted once on every run; a few hundredths of a second on 512 runs);
  # "trees_epochs": the same trees also reading each domain's epochs, share * budget /
  # tokens, answering for the pool recommend is given (runs without token counts or
  # budgets: the plain trees, with a warning); "none".
  # Two families' picks err in different directions, and where the loss is convex in
  # the mixture their mean is no worse than their average. By default the mean is
  # taken where it passes the safe objective's mean guard (experiments/surface_zoo).
  c.companion = "trees"
  # Posterior draws each stack member keeps (the optimiser scores every candidate on
  # every draw; 256 draws put the 5% and 95% quantiles within ~1.5 percentage points).
  c.stack_draws = 256
  # "exact": closed-form Gaussian posterior with evidence-maximising prior scales (fast
  # default); "nuts" | "svi": NumPyro on the same model.
  c.inference = "exact"
  c.prior = "hier_normal"  # for nuts/svi: "hier_normal" | "horseshoe"
  c.num_warmup = 200 if "smoke" in variants else 500
  c.num_samples = 200 if "smoke" in variants else 1000
  c.num_chains = 1 if "smoke" in variants else 2
  c.svi_steps = 2000
  c.n_folds = 5
  c.seed = 0
  # Mixture features: empty = default (log and sqrt; + repetition when tokens and
  # budget are known). Any of "linear", "log", "sqrt", "pairs", "hinge" (relu(w - c/D)
  # for c in 0.5, 1, 2: kinks below, at and above the even share), "repetition".
  c.feature_kinds = ()
  c.floors = (1e-4, 1e-3, 1e-2)  # floor inside log(w + floor), chosen by evidence
  c.pairs = "auto"  # pairwise log-weight products: "auto" (by evidence) | "never" | "always"
  c.max_pairs = 300  # skip pairwise terms when D(D-1)/2 exceeds this
  # DML nuisance candidates, chosen by cross-validation. "mlp" (a small tanh MLP,
  # trained per fold) is an opt-in third candidate: it costs seconds per fit and did
  # not beat ridge / kernel on the planted world or on pool-state sweeps.
  c.nuisance_models = ("ridge", "kernel")
  # X enters the effect model through the principal components of the sweep's
  # distinct pool states (constant columns dropped, standardised): at most
  # min(pool states - 1, max_x_components) of them.
  c.max_x_components = 6
  # Effect modification theta(X): candidate bases of the components, chosen by
  # evidence ("quadratic" only when the components do not already span every state).
  c.modifiers = ("linear", "quadratic")
  # Widen the effect posterior by leave-pools-out CV of within-pool contrasts, so its
  # intervals hold for pools the sweep did not see. Only the replicate runs' pure error
  # is counted as noise in those contrasts (seed replicates make intervals tighter);
  # without replicates the widening also covers the noise, erring on the wide side.
  c.calibrate_pools = True
  c.heteroscedastic = True  # noise log-variance linear in X
  # Weak prior on the noise (exact inference): replicate runs (same mixture and
  # covariates, other seeds) set it from their pure error; without them, this many
  # pseudo-runs with this share of the prior mass of the noise variance below the
  # residual variance of a linear fit on the weights of what E[Y|X] leaves. It keeps
  # small sweeps with more design columns than runs from interpolating.
  c.noise_prior_dof = 2.0
  c.noise_prior_quantile = 0.9
  c.gp_features = 256  # random Fourier features of the GP surface
  c.gp_lengthscales = (0.5, 1.0, 2.0)  # times sqrt(input dim), chosen by evidence
  return c
