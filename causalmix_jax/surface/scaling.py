"""The structured scaling-law family of response surfaces, as a NumPyro model.

Where the linear-in-features surfaces (`fit.py`) interpolate, this family extrapolates
by physics: every domain contributes a power law in its *effective* data, and
repetition follows data-constrained scaling (Muennighoff et al., 2023), so a larger or
scarcer pool moves the prediction the way more or repeated tokens do:

  f(w, x) = e0 + e . c(s(x)) + sum_d A_d(x) * ((eff_d(w) + eps)^(-alpha_d) - 1) / alpha_d
  A_d(x)  = exp(a_d + b_d . c(s(x)))          (value of domain d in pool state x)
  eff_d   = u_d * h(w_d / u_d),  u_d = tokens_d / budget
  h(e)    = min(e, 1) + R* (1 - exp(-max(e - 1, 0) / R*))   (repeated epochs decay)

s(x) are the principal-component scores of the sweep's pool states
(`covariate_basis.covariate_basis`),
c(s) = 3 tanh(s / 3) a soft clip (values saturate beyond the sweep's states).
Without token counts eff_d = w_d: a mixing law with per-domain diminishing returns.
Each domain's term is a power law in Box-Cox form: A_d is its slope in log effective
data at eff + eps = 1, and as alpha_d -> 0 it becomes the log-linear law
-A_d log(eff_d + eps) (Olmix's form) with a finite e0. Written as a bare power
A (eff + eps)^-alpha, the same family makes small exponents trade a growing amplitude
against a falling e0 along a flat valley that no optimiser crosses in a few steps
(`form="power"`, kept to load surfaces saved that way).
The transfer form (`form="transfer"`) pools the domains before one power law, as in
scaling laws for transfer (Hernandez et al., 2021), where data of one distribution
counts as a multiple of another's:

  f(w, x) = e0 + e . c(s(x)) + A * ((sum_d r_d(x) eff_d(w) + eps)^(-alpha) - 1) / alpha
  r_d(x)  = exp(a_d + b_d . c(s(x)))           (rate at which domain d transfers)

so the domains substitute for one another, and a domain's marginal value falls as the
others grow. The per-domain form makes them complements with separate returns; which of
the two a sweep supports is for `robust.py`'s held-out stacking to say.
All sites are real-valued Normals (A_d through exp, alpha_d in (0, 1) through a sigmoid,
eps above 1e-4), so the posterior is fitted
as a MAP point with a Laplace (Gaussian) approximation in the unconstrained space. The
MAP is found by Levenberg-Marquardt on the exact gradient, with the Gauss-Newton
curvature of the mean, the exact curvature of the noise scale and the priors', run to
a gradient tolerance. The fit is one jitted program scanned over row masks: the full
fit, then every cross-validation fold of `robust.py` from the full fit's MAP. Priors are in
units of the standardised outcome; R*'s prior is centred on the published
data-constrained fit.

Predictions are the linearised Laplace predictive: the model at the MAP plus its
Jacobian times each draw's offset from the MAP, so the draws are Gaussian around the
plug-in prediction; the draws' precision is the generalised Gauss-Newton curvature
(the linearised model's Hessian) plus the priors'. Pushing the draws through the
model instead (`predictive="sampled"`, how surfaces saved before were read) biases
their mean wherever the posterior is wide along a curved direction: with 22 or 64
domains, many of them rarely in a mixture, every draw of an Olmix swarm's fit sat
above the training runs (the scaling family alone on held-out Olmix runs: R^2 -0.03
to -55 sampled, 0.52 to 0.88 linearised).
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax.flatten_util import ravel_pytree
from numpyro.infer import util as infer_util


# Muennighoff et al. (2023) fit R*_D ~ 15.4 for repeated data; the prior lets the
# sweep move it by a factor of ~e either way.
RSTAR_PRIOR = (float(np.log(15.4)), 1.0)
LOGIT_ALPHA0 = float(np.log(0.4 / 0.6))  # prior centre of the exponents: 0.4
# Prior centre of the log slopes: the bare-power amplitude 0.2 at exponent 0.4. (A
# centre shrinking as 1 / D, so the prior's total effect would not grow with the number
# of domains, predicted Olmix's 22- and 64-domain swarms worse.)
LOG_SLOPE0 = float(np.log(0.2 * 0.4))
Z_TRUNC = 2.0
SCORE_LIMIT = 3.0
EPS_FLOOR = 1e-4  # below a ten-thousandth of the budget a domain counts as absent
PRIOR_MIN_PRECISION = 1.0 / 5.0 ** 2  # the broadest prior below: e0 ~ N(0, 5)
# Levenberg-Marquardt: at most MAX_ITERS steps; done when every gradient coordinate of
# the per-run potential is below GRAD_TOL (float32 sums of a few hundred runs resolve
# about 1e-6), when a nearly undamped step gains less than GAIN_TOL nats per run
# (the family has weakly identified directions, e.g. e0 against eps, along which the
# potential keeps falling by tiny amounts while the fitted noise no longer moves),
# or when no damping gives a decrease.
MAX_ITERS = 300
GRAD_TOL = 1e-4
GAIN_TOL = 1e-5
DAMPING0 = 1e-3
FORMS = ("boxcox", "power", "transfer")
PREDICTIVES = ("linearised", "sampled")


@dataclasses.dataclass(frozen=True)
class ScalingSpec:
  """Static shape of the model: domains, covariate components, whether token counts
  and the budget are known (repetition)."""
  n_domains: int
  n_x: int
  tokens_known: bool
  form: str = "boxcox"
  predictive: str = "linearised"

  def __post_init__(self):
    if self.form not in FORMS:
      raise ValueError(f"scaling surface form {self.form!r} is not one of {FORMS}")
    if self.predictive not in PREDICTIVES:
      raise ValueError(f"scaling surface predictive {self.predictive!r} is not one of "
                       f"{PREDICTIVES}")

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def effective_share(w_NxD: jnp.ndarray, u_NxD: jnp.ndarray | None,
                    log_rstar: jnp.ndarray) -> jnp.ndarray:
  """Effective data of each domain in units of the budget: w while a domain is seen at
  most once, then data-constrained decay of repeated epochs (u = tokens / budget)."""
  if u_NxD is None:
    return w_NxD
  u = jnp.maximum(u_NxD, 1e-12)
  e = w_NxD / u
  rstar = jnp.exp(log_rstar)
  rep = jnp.maximum(e - 1.0, 0.0)
  return u * (jnp.minimum(e, 1.0) + rstar * (-jnp.expm1(-rep / rstar)))


def _soft_scores(s_NxK: jnp.ndarray) -> jnp.ndarray:
  # Scores pass through a soft clip (linear within ~1.5 sd, at most SCORE_LIMIT sd):
  # outside the sweep's pool states a domain's value saturates instead of growing
  # exponentially with the distance.
  return SCORE_LIMIT * jnp.tanh(s_NxK / SCORE_LIMIT)


def _domain_term(a: jnp.ndarray, b_K: jnp.ndarray, logit_alpha: jnp.ndarray,
                 log_eps: jnp.ndarray, log_rstar: jnp.ndarray, w_N: jnp.ndarray,
                 u_N: jnp.ndarray | None, c_NxK: jnp.ndarray, form: str) -> jnp.ndarray:
  """One domain's term of the mean, length N (c: soft-clipped pool scores)."""
  eff = effective_share(w_N, u_N, log_rstar)
  # Exponents in (0, 1) and a floor under eps keep every draw finite in float32: a
  # Laplace draw along a direction the sweep barely constrains must not overflow.
  amp = jnp.exp(jnp.clip(a + c_NxK @ b_K, -30.0, 10.0))
  alpha = jax.nn.sigmoid(logit_alpha)
  eps = EPS_FLOOR + jnp.exp(log_eps)
  if form == "power":
    return amp * jnp.power(eff + eps, -alpha)
  return amp * jnp.expm1(-alpha * jnp.log(eff + eps)) / alpha


def _domain_terms(theta: dict[str, jnp.ndarray], w_NxD: jnp.ndarray,
                  u_NxD: jnp.ndarray | None, c_NxK: jnp.ndarray, form: str) -> jnp.ndarray:
  """Every domain's term, N x D."""
  term = functools.partial(_domain_term, form=form)
  return jax.vmap(term, in_axes=(0, 0, 0, None, None, 1, None if u_NxD is None else 1,
                                 None), out_axes=1)(
      theta["a_D"], theta["b_DxK"], theta["logit_alpha_D"], theta["log_eps"],
      theta["log_rstar"], w_NxD, u_NxD, c_NxK)


def _transfer_term(theta: dict[str, jnp.ndarray], w_NxD: jnp.ndarray,
                   u_NxD: jnp.ndarray | None, c_NxK: jnp.ndarray) -> jnp.ndarray:
  """The transfer form's power law in the pooled effective data, length N."""
  eff = effective_share(w_NxD, u_NxD, theta["log_rstar"])
  rate_NxD = jnp.exp(jnp.clip(theta["a_D"][None, :] + c_NxK @ theta["b_DxK"].T,
                              -30.0, 10.0))
  pooled = jnp.sum(rate_NxD * eff, axis=-1) + EPS_FLOOR + jnp.exp(theta["log_eps"])
  alpha = jax.nn.sigmoid(theta["logit_alpha"])
  amp = jnp.exp(jnp.clip(theta["log_amp"], -30.0, 10.0))
  return amp * jnp.expm1(-alpha * jnp.log(pooled)) / alpha


def mean_fn(theta: dict[str, jnp.ndarray], w_NxD: jnp.ndarray, u_NxD: jnp.ndarray | None,
            s_NxK: jnp.ndarray, form: str = "boxcox") -> jnp.ndarray:
  """Expected standardised outcome, length N."""
  c_NxK = _soft_scores(s_NxK)
  if form == "transfer":
    return theta["e0"] + c_NxK @ theta["e_K"] + _transfer_term(theta, w_NxD, u_NxD, c_NxK)
  terms = _domain_terms(theta, w_NxD, u_NxD, c_NxK, form)
  return theta["e0"] + c_NxK @ theta["e_K"] + terms.sum(-1)


def mean_jacobian(theta: dict[str, jnp.ndarray], w_NxD: jnp.ndarray,
                  u_NxD: jnp.ndarray | None, s_NxK: jnp.ndarray, form: str = "boxcox"
                  ) -> dict[str, jnp.ndarray]:
  """d mean_N / d site, per site (N x the site's shape; zero for log_sigma).

  The same numbers as `jax.jacfwd` of `mean_fn`, at a fraction of its cost: a
  domain's own sites move only its term, so each is differentiated through that one
  term instead of through all D of them. (The transfer form pools the domains before
  its power law, so there every site moves every run: forward mode over all sites.)"""
  if form == "transfer":
    return jax.jacfwd(lambda th: mean_fn(th, w_NxD, u_NxD, s_NxK, form))(theta)
  c_NxK = _soft_scores(s_NxK)
  term = jax.jacfwd(functools.partial(_domain_term, form=form), argnums=(0, 1, 2))
  d_a, d_b, d_alpha = jax.vmap(term, in_axes=(0, 0, 0, None, None, 1,
                                              None if u_NxD is None else 1, None))(
      theta["a_D"], theta["b_DxK"], theta["logit_alpha_D"], theta["log_eps"],
      theta["log_rstar"], w_NxD, u_NxD, c_NxK)

  def shared(log_eps, log_rstar):
    return _domain_terms({**theta, "log_eps": log_eps, "log_rstar": log_rstar}, w_NxD,
                         u_NxD, c_NxK, form).sum(-1)

  d_eps, d_rstar = jax.jacfwd(shared, argnums=(0, 1))(theta["log_eps"], theta["log_rstar"])
  n = w_NxD.shape[0]
  return {"a_D": d_a.T, "b_DxK": jnp.swapaxes(d_b, 0, 1), "logit_alpha_D": d_alpha.T,
          "log_eps": d_eps, "log_rstar": d_rstar, "e0": jnp.ones((n,), c_NxK.dtype),
          "e_K": c_NxK, "log_sigma": jnp.zeros((n,), c_NxK.dtype)}


# (centre, sd) of each site's Normal prior; the model and the MAP search read them here.
PRIORS: dict[str, tuple[float, float]] = {
    "a_D": (LOG_SLOPE0, 1.5),
    "b_DxK": (0.0, 0.5),
    "logit_alpha_D": (LOGIT_ALPHA0, 1.0),
    "log_eps": (float(np.log(1e-2)), 1.5),
    "log_rstar": RSTAR_PRIOR,
    "e0": (0.0, 5.0),
    "e_K": (0.0, 1.0),
    "log_sigma": (float(np.log(0.3)), 1.5),
}
# The transfer form's own sites: log rates of transfer (a unit rate counts a domain's
# effective share in full; the sweep sets their ratios), one exponent and one amplitude.
TRANSFER_PRIORS: dict[str, tuple[float, float]] = {
    "a_D": (0.0, 1.5),
    "logit_alpha": (LOGIT_ALPHA0, 1.0),
    "log_amp": (LOG_SLOPE0, 1.5),
}


def _priors(form: str) -> dict[str, tuple[float, float]]:
  return {**PRIORS, **TRANSFER_PRIORS} if form == "transfer" else PRIORS


def model(w_NxD, u_NxD, s_NxK, mask_N, y_N=None, form: str = "boxcox"):
  """The NumPyro model (standardised y). `mask_N` drops rows (cross-validation)."""
  d, k = w_NxD.shape[1], s_NxK.shape[1]
  shapes = _site_shapes(d, k, form)
  priors = _priors(form)

  def site(name):
    prior = dist.Normal(*priors[name])
    if shapes[name]:
      prior = prior.expand(list(shapes[name])).to_event(len(shapes[name]))
    return numpyro.sample(name, prior)

  theta = {name: site(name) for name in shapes if name != "log_sigma"}
  log_sigma = site("log_sigma")
  f = mean_fn(theta, w_NxD, u_NxD, s_NxK, form)
  with numpyro.plate("runs", w_NxD.shape[0]):
    numpyro.sample("y", dist.Normal(f, jnp.exp(log_sigma)).mask(mask_N), obs=y_N)


def _site_shapes(d: int, k: int, form: str = "boxcox") -> dict[str, tuple[int, ...]]:
  if form == "transfer":
    return {"a_D": (d,), "b_DxK": (d, k), "logit_alpha": (), "log_amp": (),
            "log_eps": (), "log_rstar": (), "e0": (), "e_K": (k,), "log_sigma": ()}
  return {"a_D": (d,), "b_DxK": (d, k), "logit_alpha_D": (d,), "log_eps": (),
          "log_rstar": (), "e0": (), "e_K": (k,), "log_sigma": ()}


def _prior_flat(d: int, k: int, form: str = "boxcox") -> tuple[np.ndarray, np.ndarray]:
  """(centres, precisions) of the priors, in the flat vector's order."""
  shapes, priors = _site_shapes(d, k, form), _priors(form)
  loc, _ = ravel_pytree({n: np.full(shapes[n], priors[n][0], np.float32) for n in shapes})
  prec, _ = ravel_pytree({n: np.full(shapes[n], priors[n][1] ** -2.0, np.float32)
                          for n in shapes})
  return np.asarray(loc), np.asarray(prec)


def _init_theta(d: int, k: int, form: str = "boxcox") -> dict[str, jnp.ndarray]:
  """Where the MAP search starts: every prior's centre, with unit noise sd."""
  shapes, priors = _site_shapes(d, k, form), _priors(form)
  return {n: jnp.full(shapes[n], 0.0 if n == "log_sigma" else priors[n][0], jnp.float32)
          for n in shapes}


def _flat_init(d: int, k: int, form: str = "boxcox"):
  """(initial parameters as one flat vector, the function naming its sites)."""
  return ravel_pytree(_init_theta(d, k, form))


def _sigma_index(d: int, k: int, form: str = "boxcox") -> int:
  """Position of `log_sigma` in the flat parameter vector (sites in sorted order)."""
  shapes = _site_shapes(d, k, form)
  return sum(int(np.prod(shapes[n])) for n in sorted(shapes) if n < "log_sigma")


class _Objective(NamedTuple):
  potential: Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]
  gradient_and_curvature: Callable[[jnp.ndarray, jnp.ndarray],
                                   tuple[jnp.ndarray, jnp.ndarray]]


def _objective(w_NxD, u_NxD, s_NxK, y_N, form: str = "boxcox") -> _Objective:
  """The per-run potential (minus the log posterior over the observed runs, divided by
  their number) of a row mask, and its exact gradient with the Levenberg-Marquardt
  curvature, both as functions of (flat parameters, mask). u_NxD: None without tokens."""
  d, k = w_NxD.shape[1], s_NxK.shape[1]
  flat0, unravel = _flat_init(d, k, form)
  i_sigma = _sigma_index(d, k, form)
  e_sigma = jnp.zeros(flat0.shape[0]).at[i_sigma].set(1.0)

  def potential(flat, mask):
    lp, _ = infer_util.log_density(model, (w_NxD, u_NxD, s_NxK, mask, y_N, form), {},
                                   unravel(flat))
    return -lp / jnp.maximum(mask.sum(), 1.0)

  # Every site's prior is Normal: minus the log prior is a diagonal quadratic.
  with jax.ensure_compile_time_eval():
    prior_loc, prior_prec = _prior_flat(d, k, form)

  def gradient_and_curvature(flat, mask):
    # The exact gradient of the Normal likelihood and the priors, from the mean's
    # Jacobian; the curvature is Gauss-Newton for the mean, the exact second derivative
    # for log sigma (which keeps large early residuals from stalling the noise scale),
    # and the priors'.
    theta = unravel(flat)
    j_NxP = jax.vmap(lambda row: ravel_pytree(row)[0])(
        mean_jacobian(theta, w_NxD, u_NxD, s_NxK, form))
    inv_var = jnp.exp(-2.0 * flat[i_sigma])
    r_N = mask * (y_N - mean_fn(theta, w_NxD, u_NxD, s_NxK, form))
    rss = jnp.sum(r_N * r_N)
    g = -(j_NxP.T @ r_N) * inv_var + (mask.sum() - rss * inv_var) * e_sigma
    g = g + prior_prec * (flat - prior_loc)
    h = (j_NxP.T * (mask * inv_var)) @ j_NxP
    h = h + 2.0 * inv_var * rss * jnp.outer(e_sigma, e_sigma)
    n = jnp.maximum(mask.sum(), 1.0)
    return g / n, (h + jnp.diag(prior_prec)) / n

  return _Objective(potential, gradient_and_curvature)


@functools.partial(jax.jit, static_argnames=("tokens_known", "n_draws", "form"))
def _fit_masks(w_NxD, u_NxD, s_NxK, y_N, masks_MxN, key, tokens_known: bool,
               n_draws: int, form: str = "boxcox"):
  """MAP and Laplace draws of the parameters for every row mask; also the
  Levenberg-Marquardt steps each MAP took, its largest gradient coordinate and the
  final damping. The last mask's search starts at the priors' centre; the others
  (cross-validation folds, which hold most of its runs) start at its MAP, which takes a
  fraction of the steps."""
  flat0, _ = _flat_init(w_NxD.shape[1], s_NxK.shape[1], form)
  objective = _objective(w_NxD, u_NxD if tokens_known else None, s_NxK, y_N, form)
  potential = objective.potential

  def fit_one(mask, key, start):
    n = jnp.maximum(mask.sum(), 1.0)

    def not_done(carry):
      _, _, damping, it, gmax, gain = carry
      # A small gain ends the search only from a nearly undamped (Gauss-Newton) step:
      # a heavily damped one is small because of the damping.
      return ((it < MAX_ITERS) & (gmax >= GRAD_TOL) & (damping < 1e10)
              & ((gain >= GAIN_TOL) | (damping > 1.0)))

    def step(carry):
      flat, f, damping, it, _, gain = carry
      g, h = objective.gradient_and_curvature(flat, mask)
      a = h + damping * jnp.diag(jnp.diag(h))
      trial = flat - jax.scipy.linalg.solve(a, g, assume_a="pos")
      f_trial = potential(trial, mask)
      better = jnp.isfinite(f_trial) & (f_trial < f)
      return (jnp.where(better, trial, flat), jnp.where(better, f_trial, f),
              jnp.where(better, jnp.maximum(damping * 0.3, 1e-9), damping * 10.0),
              it + 1, jnp.max(jnp.abs(g)), jnp.where(better, f - f_trial, gain))

    flat, _, damping, iters, _, _ = jax.lax.while_loop(
        not_done, step, (start, potential(start, mask), jnp.asarray(DAMPING0), 0,
                         jnp.asarray(jnp.inf), jnp.asarray(jnp.inf)))
    # The Laplace precision is the generalised Gauss-Newton one (the Hessian of the
    # model linearised at the MAP, which is what the linearised predictive draws
    # from): positive definite, and no cheaper curvature to compile.
    g, hess = objective.gradient_and_curvature(flat, mask)
    g_max = jnp.max(jnp.abs(g))
    hess = hess * n
    hess = 0.5 * (hess + hess.T)
    evals, evecs = jnp.linalg.eigh(hess)
    # No direction is drawn wider than the broadest prior (float32 round-off aside,
    # the priors' precision already bounds the curvature from below).
    root = evecs * jax.lax.rsqrt(jnp.maximum(evals, PRIOR_MIN_PRECISION))[None, :]
    # Truncated at Z_TRUNC sd per coordinate: the Gaussian approximation is trusted
    # near the mode only (pushed through exp and powers, its far tails give absurd
    # losses); the stack's conformal step sets the interval width on held-out pools.
    z = jax.random.truncated_normal(key, -Z_TRUNC, Z_TRUNC, (n_draws, flat.shape[0]))
    return flat, flat[None, :] + z @ root.T, iters, g_max, damping

  # One copy of the search in the program, scanned over the masks (the full fit first,
  # its MAP carried as every fold's start): it compiles in about half the time of a
  # full search beside a vmapped one, and runs as fast on a CPU.
  m = masks_MxN.shape[0]
  keys = jax.random.split(key, m)

  def one_mask(full_map, i):
    first = i == m - 1
    out = fit_one(masks_MxN[i], keys[i], jnp.where(first, flat0, full_map))
    return jnp.where(first, out[0], full_map), out

  # Masks m-1 (the full fit), 0, ..., m-2; rotated back to the masks' order.
  _, outs = jax.lax.scan(one_mask, flat0, (jnp.arange(m) - 1) % m)
  return tuple(jnp.roll(a, -1, axis=0) for a in outs)


def unflatten(spec: ScalingSpec, flat_P: np.ndarray) -> dict[str, np.ndarray]:
  """The named sites of a flat parameter vector."""
  _, unravel = _flat_init(spec.n_domains, spec.n_x, spec.form)
  return {k: np.asarray(v) for k, v in unravel(jnp.asarray(flat_P)).items()}


@functools.partial(jax.jit, static_argnames=("spec",))
def _predict_std(spec: ScalingSpec, draws_SxP, map_P, w_NxD, u_NxD, s_NxK):
  """Draws of the standardised expected outcome, S x N."""
  _, unravel = _flat_init(spec.n_domains, spec.n_x, spec.form)
  u = u_NxD if spec.tokens_known else None
  if spec.predictive == "sampled":
    return jax.vmap(lambda p: mean_fn(unravel(p), w_NxD, u, s_NxK, spec.form))(draws_SxP)
  theta = unravel(map_P)
  f_N = mean_fn(theta, w_NxD, u, s_NxK, spec.form)
  j_NxP = jax.vmap(lambda row: ravel_pytree(row)[0])(
      mean_jacobian(theta, w_NxD, u, s_NxK, spec.form))
  return f_N[None, :] + (draws_SxP - map_P[None, :]) @ j_NxP.T


def fit_draws(w_NxD: np.ndarray, u_NxD: np.ndarray | None, s_NxK: np.ndarray,
              ys_N: np.ndarray, masks_MxN: np.ndarray, n_draws: int, seed: int,
              form: str = "boxcox") -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
  """(MAP M x P, draws M x S x P, optimiser report) of the standardised-outcome model
  for each mask (`form`: "boxcox", per-domain power laws, or "transfer"). The report
  gives the full fit's (last mask's) steps, largest gradient coordinate and why the
  search stopped, and the most steps any mask took."""
  tokens_known = u_NxD is not None
  u = jnp.asarray(u_NxD if tokens_known else np.ones_like(w_NxD), jnp.float32)
  out = _fit_masks(
      jnp.asarray(w_NxD, jnp.float32), u, jnp.asarray(s_NxK, jnp.float32),
      jnp.asarray(ys_N, jnp.float32), jnp.asarray(masks_MxN, bool),
      jax.random.PRNGKey(seed), tokens_known=tokens_known, n_draws=int(n_draws),
      form=form)
  maps, draws, iters, g_max, damping = (np.asarray(a) for a in out)
  if g_max[-1] < GRAD_TOL:
    stopped = "gradient below tolerance"
  elif iters[-1] >= MAX_ITERS:
    stopped = "step limit"
  elif damping[-1] >= 1e10:
    stopped = "no damping gives a decrease"
  else:
    stopped = "gain below tolerance"
  report = {"steps": int(iters[-1]), "max_steps_any_mask": int(iters.max()),
            "grad_max": float(g_max[-1]), "stopped": stopped}
  return maps, draws, report


def sampler_fn(spec: ScalingSpec, params: dict[str, Any], w_NxD: jnp.ndarray,
               x_F: jnp.ndarray) -> jnp.ndarray:
  """Draws of the expected outcome (outcome units), S x N, at mixtures w and pool x.
  Pure and jittable; params carry the basis, the pool size and the draws."""
  w_NxD = jnp.asarray(w_NxD, jnp.float32)
  n = w_NxD.shape[0]
  x = jnp.asarray(x_F, jnp.float32)
  s_K = ((x[params["x_cols"]] - params["x_mu"]) / params["x_sd"]) @ params["x_proj"]
  s_NxK = jnp.broadcast_to(s_K, (n, s_K.shape[0]))
  if spec.tokens_known:
    u_NxD = jnp.broadcast_to(params["tokens_D"] / params["budget"], w_NxD.shape)
  else:
    u_NxD = jnp.ones_like(w_NxD)
  map_P = params.get("map_P", params["draws_SxP"][0])  # unused when sampled
  out = _predict_std(spec, params["draws_SxP"], map_P, w_NxD, u_NxD, s_NxK)
  return params["y_mu"] + params["y_sd"] * out


def base_params(xb, y_mu: float, y_sd: float, tokens_D: np.ndarray | None,
                budget: float | None, draws_SxP: np.ndarray, map_P: np.ndarray
                ) -> dict[str, np.ndarray]:
  """The sampler's parameters: covariate basis, outcome scale, pool size, draws and
  the MAP they are drawn around."""
  return {"x_cols": np.asarray(xb.cols, np.int32),
          "x_mu": np.asarray(xb.mu_F, np.float32), "x_sd": np.asarray(xb.sd_F, np.float32),
          "x_proj": np.asarray(xb.proj_FxK, np.float32).reshape(len(xb.cols), xb.k),
          "y_mu": np.float32(y_mu), "y_sd": np.float32(y_sd),
          "tokens_D": np.asarray(tokens_D if tokens_D is not None else [], np.float32),
          "budget": np.float32(budget if budget is not None else 1.0),
          "draws_SxP": np.asarray(draws_SxP, np.float32),
          "map_P": np.asarray(map_P, np.float32)}


def load_params(directory: pathlib.Path) -> dict[str, np.ndarray]:
  """The sampler's parameters as `ScalingSurface.save` wrote them."""
  path = directory / "posterior.npz"
  if not path.exists():
    raise FileNotFoundError(f"surface posterior not found: {path}")
  with np.load(path) as z:
    return {k: z[k] for k in z.files}
