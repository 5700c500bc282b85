"""The conjugate engine of the linear surfaces: the closed-form posterior of a linear
model with grouped Gaussian priors, its prior scales and noise level set by type-II
maximum likelihood (MacKay's fixed-point updates, primal or dual form), the
weakly-informative noise prior and the posterior draws."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging

import numpy as np
from scipy import linalg as scipy_linalg
from scipy.linalg import lapack as scipy_lapack

try:
  import threadpoolctl
except ImportError:  # optional: only limits BLAS threads for speed
  threadpoolctl = None

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Conjugate:
  """Gaussian posterior of the standardised coefficients at the evidence maximum.

  Primal form (Q <= N): `chol_prec_QxQ` is the Cholesky factor of the posterior
  precision. Dual form (Q > N): the posterior is kept through the N x N marginal
  covariance C = Z A^-1 Z^T + (beta W)^-1 of the (centred) design `z_NxQ`, with
  `chol_c_NxN` its Cholesky factor, so nothing Q x Q is ever formed. `draws` and
  `quad_var` answer the same in both forms."""
  mean_Q: np.ndarray
  chol_prec_QxQ: np.ndarray | None
  b0: float
  b0_var: float
  alpha_G: np.ndarray
  noise_prec: float
  evidence: float
  prior_prec_Q: np.ndarray | None = None
  z_NxQ: np.ndarray | None = None  # dual form: the centred design
  noise_var_N: np.ndarray | None = None  # dual form: (beta w_n)^-1
  chol_c_NxN: np.ndarray | None = None  # dual form

  @property
  def dual(self) -> bool:
    return self.chol_prec_QxQ is None

  def quad_var(self, dz_MxQ: np.ndarray) -> np.ndarray:
    """Posterior variance of dz_m . beta for each row m."""
    if not self.dual:
      return np.sum(np.linalg.solve(self.chol_prec_QxQ, dz_MxQ.T) ** 2, axis=0)
    ai = 1.0 / self.prior_prec_Q
    u = scipy_linalg.solve_triangular(self.chol_c_NxN, self.z_NxQ @ (ai * dz_MxQ).T,
                                      lower=True)
    return np.sum(dz_MxQ ** 2 * ai, axis=1) - np.sum(u ** 2, axis=0)

  def sample(self, n_draws: int, rng: np.random.Generator) -> np.ndarray:
    """n_draws x Q draws of beta. The dual form samples exactly by perturbing the
    prior and the data (beta = u + A^-1 Z^T C^-1 (y - Z u - e) is a posterior draw
    when u ~ N(0, A^-1), e ~ N(0, (beta W)^-1); y enters through the mean)."""
    q = len(self.mean_Q)
    e = rng.standard_normal((n_draws, q))
    if not self.dual:
      return self.mean_Q + scipy_linalg.solve_triangular(self.chol_prec_QxQ, e.T,
                                                         lower=True, trans="T").T
    ai = 1.0 / self.prior_prec_Q
    u = e * np.sqrt(ai)
    eps = rng.standard_normal((n_draws, len(self.noise_var_N))) * np.sqrt(
        self.noise_var_N)
    r = -(u @ self.z_NxQ.T + eps)  # the data enter through mean_Q
    s = scipy_linalg.cho_solve((self.chol_c_NxN, True), r.T)
    return self.mean_Q + u + (s.T @ self.z_NxQ) * ai


# Default noise prior without replicate runs, calibrated the usual way for Bayesian
# regression defaults: NOISE_PRIOR_DOF pseudo-observations, and a scale that puts 90% of
# the prior mass of the noise variance below a rough reference (the residual variance
# of a linear regression on the mixture weights, or var(y) when the sweep is too small
# for one): scale = q_0.1(chi2_dof) / dof * reference. Weak: with N - gamma effective
# residual degrees of freedom the data outweigh it as soon as the sweep can identify
# the noise; it decides only when the design could interpolate.
NOISE_PRIOR_DOF = 2.0
NOISE_PRIOR_QUANTILE = 0.9
# Floor on each group's prior precision (columns and y are standardised): a prior
# coefficient sd of at most 10 outcome sds per column sd, far above any effect a sweep
# can show, so the floor binds only when the evidence runs away on a degenerate design.
ALPHA_MIN = 1e-2


@dataclasses.dataclass(frozen=True)
class NoisePrior:
  """Scaled inverse chi-square prior on the noise variance (a Gamma prior on the
  noise precision beta): `dof` pseudo-observations of residual variance `var`, in the
  units of the y given to `conjugate_fit`. The evidence update of beta becomes
  (N - gamma + dof) / (r2 + dof * var) instead of (N - gamma) / r2."""
  var: float
  dof: float
  source: str = "default"  # "replicates" (pure error) | "default" (fraction of var(y))

  def log_density(self, beta: float) -> float:
    """log p(beta) up to a constant: Gamma(shape dof / 2 + 1, rate dof * var / 2)
    (the + 1 makes the MAP update above exact)."""
    return 0.5 * self.dof * np.log(beta) - 0.5 * self.dof * self.var * beta


def replicate_groups(keys_NxK: np.ndarray) -> np.ndarray:
  """Each row's group of replicates: rows whose keys (mixture, covariates, ...) agree
  to 9 decimals share a group id (0, 1, ...; length N)."""
  _, inv = np.unique(np.round(np.asarray(keys_NxK, np.float64), 9), axis=0,
                     return_inverse=True)
  return np.asarray(inv).reshape(-1)


def pure_error(y_N: np.ndarray, keys_NxK: np.ndarray) -> tuple[float, int]:
  """Pooled within-group variance of y over rows with identical keys (replicate runs:
  the same mixture and covariates, different seeds; `replicate_groups`), and its
  degrees of freedom (sum of group sizes - 1). (nan, 0) without replicates."""
  if len(y_N) == 0:
    return float("nan"), 0
  inv = replicate_groups(keys_NxK)
  counts = np.bincount(inv)
  dof = int(np.sum(counts - 1))
  if dof == 0:
    return float("nan"), 0
  means = np.bincount(inv, weights=y_N) / counts
  return float(np.sum((y_N - means[inv]) ** 2) / dof), dof


def noise_prior(y_N: np.ndarray, keys_NxK: np.ndarray | None = None,
                dof: float = NOISE_PRIOR_DOF, quantile: float = NOISE_PRIOR_QUANTILE,
                ref_var: float | None = None) -> NoisePrior:
  """The data's noise prior: the pure error of replicate rows (its own degrees of
  freedom) when `keys_NxK` has replicates with a positive spread, else `dof`
  pseudo-observations with `quantile` of the prior mass of the noise variance below
  `ref_var` (default var(y))."""
  y_N = np.asarray(y_N, np.float64)
  if keys_NxK is not None:
    var, pe_dof = pure_error(y_N, keys_NxK)
    if pe_dof > 0 and var > 1e-12 * max(float(np.var(y_N)), 1e-300):
      return NoisePrior(var, float(pe_dof), "replicates")
  from scipy import stats
  ref = float(np.var(y_N)) if ref_var is None else float(ref_var)
  scale = float(stats.chi2.ppf(1.0 - quantile, dof)) / dof
  return NoisePrior(scale * max(ref, 1e-12), float(dof), "default")


def linear_residual_var(y_N: np.ndarray, w_NxD: np.ndarray) -> float:
  """Residual variance of least squares of y on the mixture weights (D - 1 free
  coordinates and an intercept) when there are more than twice as many runs as
  coefficients; var(y) otherwise. A rough reference for the noise prior."""
  n, d = w_NxD.shape
  if n <= 2 * d:
    return float(np.var(y_N))
  a = np.concatenate([np.ones((n, 1)), w_NxD[:, :-1]], axis=1)
  coef, *_ = np.linalg.lstsq(a, y_N, rcond=None)
  res = y_N - a @ coef
  return float(res @ res / (n - d))


def conjugate_fit(z_NxQ: np.ndarray, y_N: np.ndarray, groups_Q: np.ndarray,
                  weights_N: np.ndarray | None = None, iters: int = 200,
                  tol: float = 1e-4, form: str = "auto",
                  prior: NoisePrior | None = None,
                  start: tuple[np.ndarray, float] | None = None) -> Conjugate:
  """See `_conjugate_fit`; runs its small dense solves on one BLAS thread (threads
  only add overhead at these sizes, and much more on a shared machine)."""
  args = (z_NxQ, y_N, groups_Q, weights_N, iters, tol, form, prior, start)
  with one_blas_thread():
    return _conjugate_fit(*args)


def one_blas_thread() -> contextlib.AbstractContextManager:
  """A context that runs NumPy's and SciPy's BLAS on one thread (a no-op without
  threadpoolctl). Limits nest: an inner one inside an outer one changes nothing."""
  if threadpoolctl is None:
    return contextlib.nullcontext()
  return _blas_controller().limit(limits=1, user_api="blas")


@functools.lru_cache(maxsize=1)
def _blas_controller():
  """One controller per process: building one scans the loaded libraries (~7 ms),
  which a fit with cross-validated members would otherwise pay a dozen times."""
  return threadpoolctl.ThreadpoolController()


def _conjugate_fit(z_NxQ: np.ndarray, y_N: np.ndarray, groups_Q: np.ndarray,
                   weights_N: np.ndarray | None, iters: int, tol: float,
                   form: str = "auto", prior: NoisePrior | None = None,
                   start: tuple[np.ndarray, float] | None = None) -> Conjugate:
  """Bayesian linear regression with a normal prior of precision alpha_g per column
  group and noise precision beta / weight_n, alpha and beta at the maximum of the
  evidence times the noise prior (MacKay's fixed-point updates with a Gamma prior on
  beta: `prior`, default `noise_prior(y_N)`; alpha kept in [ALPHA_MIN, 1e8]). z columns and y
  should be standardised; the intercept has a flat prior. `evidence` is the log
  marginal likelihood plus the noise prior's log density (the same prior for every
  candidate design, so the candidates still compete on their marginal likelihood).

  form: "primal" works with the Q x Q posterior precision (O(Q^3) an iteration),
  "dual" with the N x N marginal covariance of the data (Woodbury; O(N^2 Q) an
  iteration), "auto" picks the dual when Q > N. Both give the same posterior.

  start: (alpha per group, beta) to start the updates from, e.g. the fit of a design
  that shares most of these runs (cross-validation refits); the default starts at
  alpha = 1 and the noise prior's beta. Bad starts raise ValueError."""
  if form not in ("auto", "primal", "dual"):
    raise ValueError(f"conjugate_fit: form must be auto|primal|dual, got {form!r}")
  n, q = z_NxQ.shape
  wt = np.ones(n) if weights_N is None else np.asarray(weights_N, np.float64)
  wsum = wt.sum()
  zm = (wt @ z_NxQ) / wsum
  ym = float(wt @ y_N / wsum)
  z = z_NxQ - zm
  yc = y_N - ym
  yy = float(yc @ (wt * yc))
  if prior is None:
    prior = noise_prior(y_N)
  nu_b, s2_b = float(prior.dof), float(prior.var)
  n_groups = int(groups_Q.max()) + 1 if q else 0
  alpha = np.ones(n_groups)
  beta = 1.0 / max((yy + nu_b * s2_b) / (wsum + nu_b), 1e-12)
  if start is not None:
    a0, b0 = np.asarray(start[0], np.float64).reshape(-1), float(start[1])
    if a0.shape != (n_groups,) or not (np.all(np.isfinite(a0)) and np.all(a0 > 0)
                                       and np.isfinite(b0) and b0 > 0):
      raise ValueError(f"conjugate_fit: start needs {n_groups} positive finite prior "
                       f"precisions and a positive finite noise precision, got "
                       f"{a0.shape[0]} and {b0!r}")
    alpha, beta = np.clip(a0, ALPHA_MIN, 1e8), b0
  onehot = np.eye(n_groups)[groups_Q] if q else np.zeros((0, 0))
  dual = form == "dual" or (form == "auto" and q > n)
  if dual:
    step = functools.partial(_dual_step, z, yc, wt)
  else:
    zw = z * wt[:, None]
    step = functools.partial(_primal_step, z.T @ zw, zw.T @ yc, yy)
  for _ in range(iters):
    a_q = alpha[groups_Q]
    m, gam, r2, _ = step(a_q, beta)
    new_alpha = np.clip((gam @ onehot) / np.maximum((m ** 2) @ onehot, 1e-12),
                        ALPHA_MIN, 1e8)
    new_beta = max(n - gam.sum() + nu_b, 1.0) / max(r2 + nu_b * s2_b, 1e-12)
    # Groups whose precision runs off to the top (pruned) converge slowly and no longer
    # matter; the rest, and the noise, must have settled.
    live = new_alpha < 1e5
    done = ((not live.any() or np.max(np.abs(np.log(new_alpha[live] / alpha[live]))) < tol)
            and abs(np.log(new_beta / beta)) < tol)
    alpha, beta = new_alpha, new_beta
    if done:
      break
  a_q = alpha[groups_Q]
  m, _, r2, (chol, logdet_prec) = step(a_q, beta, final=True)
  evidence = 0.5 * (np.sum(np.log(a_q)) + n * np.log(beta) + np.sum(np.log(wt))
                    - beta * r2 - m @ (a_q * m) - n * np.log(2 * np.pi)
                    - logdet_prec)
  evidence += prior.log_density(beta)
  common = dict(mean_Q=m, b0=ym - float(zm @ m), b0_var=1.0 / (beta * wsum),
                alpha_G=alpha, noise_prec=beta, evidence=float(evidence), prior_prec_Q=a_q)
  if dual:
    return Conjugate(chol_prec_QxQ=None, z_NxQ=z, noise_var_N=1.0 / (beta * wt),
                     chol_c_NxN=chol, **common)
  return Conjugate(chol_prec_QxQ=chol, **common)


def _primal_step(zz_QxQ, zy_Q, yy, a_q, beta, final=False):
  """Posterior mean, effective numbers gamma, weighted residual sum of squares (and on
  the last call the precision's Cholesky factor and log-determinant)."""
  chol = np.linalg.cholesky(beta * zz_QxQ + np.diag(a_q))
  m = scipy_linalg.cho_solve((chol, True), beta * zy_Q, check_finite=False)
  r2 = yy - 2 * m @ zy_Q + m @ zz_QxQ @ m
  if final:
    return m, None, r2, (chol, 2.0 * np.sum(np.log(np.diag(chol))))
  li, info_ = scipy_lapack.dtrtri(chol, lower=1)
  if info_ != 0:
    li = np.linalg.inv(chol)
  cov_diag = np.sum(li ** 2, axis=0)
  return m, 1.0 - a_q * cov_diag, r2, None


def _dual_step(z_NxQ, yc_N, wt_N, a_q, beta, final=False):
  """The same quantities through C = Z A^-1 Z^T + (beta W)^-1 (Woodbury):
  m = A^-1 Z^T C^-1 y, gamma_q = z_q^T C^-1 z_q / a_q, and
  log|A + beta Z^T W Z| = log|A| + log|beta W| + log|C|."""
  ai = 1.0 / a_q
  za = z_NxQ * ai
  c = za @ z_NxQ.T
  c[np.diag_indices_from(c)] += 1.0 / (beta * wt_N)
  chol = np.linalg.cholesky(c)
  m = ai * (z_NxQ.T @ scipy_linalg.cho_solve((chol, True), yc_N, check_finite=False))
  res = yc_N - z_NxQ @ m
  r2 = float(res @ (wt_N * res))
  if final:
    logdet = (np.sum(np.log(a_q)) + np.sum(np.log(beta * wt_N))
              + 2.0 * np.sum(np.log(np.diag(chol))))
    return m, None, r2, (chol, logdet)
  u = scipy_linalg.solve_triangular(chol, z_NxQ, lower=True, check_finite=False)
  gam = ai * np.sum(u ** 2, axis=0)
  return m, gam, r2, None


def conjugate_draws(post: Conjugate, zm_Q: np.ndarray, n_draws: int, seed: int
                    ) -> tuple[np.ndarray, np.ndarray]:
  """Draws (beta_SxQ, b0_S) from the Gaussian posterior."""
  rng = np.random.default_rng(seed)
  beta = post.sample(n_draws, rng)
  b0 = (post.b0 + float(zm_Q @ post.mean_Q) - beta @ zm_Q
        + np.sqrt(post.b0_var) * rng.standard_normal(n_draws))
  return beta, b0
