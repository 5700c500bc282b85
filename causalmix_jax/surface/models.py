"""NumPyro models of the surface, as plain functions of arrays.

Every surface is linear in a design built from the mixture features (see `fit.py`):
- the DML final stage regresses outcome residuals on feature residuals and on their
  products with the covariates (the heterogeneous effect theta(X));
- the outcome model regresses the outcome on covariates, features and their products;
- the GP surface adds a block of random Fourier features of (log-ratio mixture, X),
  a finite-basis Gaussian process.
So one model function serves all three, with a shrinkage prior per column group
(hierarchical normal or regularised horseshoe) and noise whose log scale is linear in a
noise design (heteroscedastic). Inputs are standardised: y and every design column have
unit scale, so the priors below are scale-free.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist

PRIORS = ("hier_normal", "horseshoe")


def linear_surface(design_NxQ: jnp.ndarray, groups_Q: jnp.ndarray, n_groups: int,
                   y_N: jnp.ndarray | None = None, noise_NxH: jnp.ndarray | None = None,
                   prior: str = "hier_normal", slab_scale: float = 2.0,
                   expected_nonzero: float = 5.0) -> None:
  """y ~ Normal(b0 + design @ beta, sigma(noise design)).

  hier_normal: beta_q ~ Normal(0, tau_{g(q)}), tau_g ~ HalfNormal(1).
  horseshoe: regularised horseshoe (global tau, local lambda, slab c) with the global
  scale set from `expected_nonzero` coefficients."""
  n, q = design_NxQ.shape
  b0 = numpyro.sample("b0", dist.Normal(0.0, 1.0))
  if prior == "hier_normal":
    tau = numpyro.sample("tau", dist.HalfNormal(jnp.ones(n_groups)))
    z = numpyro.sample("z", dist.Normal(jnp.zeros(q), 1.0))
    beta = numpyro.deterministic("beta", z * tau[groups_Q])
  elif prior == "horseshoe":
    tau0 = expected_nonzero / max(q - expected_nonzero, 1.0) / jnp.sqrt(n)
    tau = numpyro.sample("tau", dist.HalfCauchy(tau0))
    lam = numpyro.sample("lam", dist.HalfCauchy(jnp.ones(q)))
    c2 = numpyro.sample("c2", dist.InverseGamma(2.0, 2.0 * slab_scale ** 2))
    lam_t = jnp.sqrt(c2 * lam ** 2 / (c2 + tau ** 2 * lam ** 2))
    z = numpyro.sample("z", dist.Normal(jnp.zeros(q), 1.0))
    beta = numpyro.deterministic("beta", z * tau * lam_t)
  else:
    raise ValueError(f"surface.prior: unknown prior {prior!r}; known: {list(PRIORS)}")
  log_sigma = numpyro.sample("log_sigma", dist.Normal(-1.0, 1.5))
  if noise_NxH is not None and noise_NxH.shape[1] > 0:
    gamma = numpyro.sample("gamma", dist.Normal(jnp.zeros(noise_NxH.shape[1]), 0.5))
    log_sigma = log_sigma + noise_NxH @ gamma
  mu = b0 + design_NxQ @ beta
  numpyro.sample("y", dist.Normal(mu, jnp.exp(log_sigma)), obs=y_N)


def dml_final_stage(design_NxQ, groups_Q, n_groups, y_N=None, noise_NxH=None,
                    prior="hier_normal"):
  """Residual-on-residual regression with effect modification by X (R-learner form):
  Y - m(X) = (phi(T) - e(X)) . theta(X) + noise, theta(X) linear in X."""
  linear_surface(design_NxQ, groups_Q, n_groups, y_N, noise_NxH, prior)


def outcome_model(design_NxQ, groups_Q, n_groups, y_N=None, noise_NxH=None,
                  prior="hier_normal"):
  """Y = b0 + X . gamma + phi(T) . beta + (phi(T) x X) . B + noise(X)."""
  linear_surface(design_NxQ, groups_Q, n_groups, y_N, noise_NxH, prior)


def gp_surface(design_NxQ, groups_Q, n_groups, y_N=None, noise_NxH=None,
               prior="hier_normal"):
  """The outcome model plus a random-Fourier-feature Gaussian process over
  (log-ratio mixture, X); the GP amplitude is the prior scale of its column group."""
  linear_surface(design_NxQ, groups_Q, n_groups, y_N, noise_NxH, prior)


MODELS = {"dml": dml_final_stage, "outcome": outcome_model, "gp": gp_surface}
