"""Fits a response surface to a runs table: `fit_surface(runs, outcome, method, config)`:
the runs' checks, the design builder and the driver. The conjugate engine is in
`conjugate.py`, the covariate representation in `covariate_basis.py`, the mixture
features in `features.py`, the nuisances in `nuisance.py`, the NumPyro models in
`models.py`, the stacked surface in `robust.py`.

Steps: mixture features (log weights with a floor, square roots, optional pairwise
products of log weights, repetition when tokens and budget are known); for DML,
cross-fitted nuisances E[Y|X] and E[phi|X] (`nuisance.py`); a design of centred features
and their products with X; then the posterior of the linear model in `models.py`.

Inference:
- "exact" (default): the model is conditionally Gaussian given its prior scales, so the
  posterior is closed-form. The group prior scales and the noise level are set by
  maximising the marginal likelihood (type-II maximum likelihood, MacKay's fixed-point
  updates), and the same evidence chooses the floor of the logs and whether pairwise
  terms enter. Heteroscedastic noise: one reweighting pass with log-variance linear in X.
  The noise precision has a weakly-informative Gamma prior (a scaled inverse
  chi-square on the noise variance) whose scale comes from the data: the pure error of
  replicate runs (same mixture and covariates, different seeds) when the sweep has
  them, else a scale below a linear regression's residual variance with a small
  pseudo-count; the prior precisions have
  a floor (a coefficient sd far above any real effect). So on small sweeps with more
  columns than runs the evidence cannot interpolate the data by driving the noise to
  zero.
- "nuts" / "svi": NumPyro on the same model (hierarchical-normal or horseshoe prior),
  with the feature set chosen by the evidence as above.
Nothing here is tuned to a particular data set: every choice is made by marginal
likelihood or cross-validation on the runs given.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from causalmix_jax.runs import DegenerateRunsError, RunsTableError
from causalmix_jax.surface import features as feats
from causalmix_jax.surface.conjugate import ALPHA_MIN  # noqa: F401  (re-exported)
from causalmix_jax.surface.conjugate import NOISE_PRIOR_DOF  # noqa: F401
from causalmix_jax.surface.conjugate import NOISE_PRIOR_QUANTILE  # noqa: F401
from causalmix_jax.surface.conjugate import Conjugate
from causalmix_jax.surface.conjugate import NoisePrior  # noqa: F401
from causalmix_jax.surface.conjugate import conjugate_draws
from causalmix_jax.surface.conjugate import conjugate_fit
from causalmix_jax.surface.conjugate import linear_residual_var  # noqa: F401
from causalmix_jax.surface.conjugate import noise_prior
from causalmix_jax.surface.conjugate import one_blas_thread
from causalmix_jax.surface.conjugate import pure_error  # noqa: F401  (robust.py, tests)
from causalmix_jax.surface.covariate_basis import CovariateBasis
from causalmix_jax.surface.covariate_basis import covariate_basis
from causalmix_jax.surface.covariate_basis import held_out_support
from causalmix_jax.surface.covariate_basis import mahalanobis
from causalmix_jax.surface.covariate_basis import score_precision
from causalmix_jax.surface import models
from causalmix_jax.surface import nuisance as nuis
from causalmix_jax.surface.prediction import central_z
from causalmix_jax.surface.surface import DesignSpec, Surface, SurfaceBase, modifier_basis

log = logging.getLogger(__name__)

METHODS = ("stack", "dml", "outcome", "gp", "scaling", "transfer")
INFERENCES = ("exact", "nuts", "svi")
# Fewest usable runs any method fits (the folds need at least surface.n_folds).
MIN_RUNS = 10
# Singular values of the centred weight matrix below this count as no variation.
MIXTURE_RANK_TOL = 1e-8
# surface.pairs -> whether candidates use pairwise mixture features; surface.modifiers.
PAIR_OPTIONS = {"auto": (False, True), "never": (False,), "always": (True,)}
MODIFIERS = ("linear", "quadratic")


def default_config() -> ml_collections.ConfigDict:
  """Surface settings; the stage reads the same keys from `cfg.surface`."""
  from causalmix_jax.configs import surface as surface_cfg
  return surface_cfg.section(frozenset())


# -- design construction ------------------------------------------------------------------

@dataclasses.dataclass
class _Candidate:
  spec: DesignSpec
  params: dict[str, Any]
  z_NxQ: np.ndarray
  groups_Q: np.ndarray
  y_res_N: np.ndarray
  nuisance_info: dict[str, Any]


def _design_groups(spec: DesignSpec) -> np.ndarray:
  fg = spec.features.groups()
  ng = int(fg.max()) + 1
  out = []
  nxt = ng
  order = np.r_[np.zeros(spec.n_x, np.int64),
                np.ones(spec.n_mod - spec.n_x, np.int64)]  # linear / quadratic modifier
  if spec.x_main:
    out.append(nxt + order)
    nxt += 2
  out.append(fg)
  if spec.n_x:
    out.append((fg[:, None] * 2 + order[None, :] + nxt).reshape(-1))
    nxt += 2 * ng
  if spec.n_rff:
    out.append(np.full(spec.n_rff, nxt))
  groups = np.concatenate(out)
  # renumber densely
  _, dense = np.unique(groups, return_inverse=True)
  return dense


def _build(runs_w: np.ndarray, x: np.ndarray, y: np.ndarray, tokens, budget,
           fspec: feats.FeatureSpec, union_phi: np.ndarray, union_cols: np.ndarray,
           method: str, xb: CovariateBasis, nuis_y: nuis.Nuisance,
           nuis_phi: nuis.Nuisance | None, cfg, seed: int, gp_ls: float = 1.0,
           modifiers: str = "linear") -> _Candidate:
  """A candidate design for one feature spec, reusing the union feature nuisance."""
  n_x = xb.k
  phi = union_phi[:, union_cols]
  if nuis_phi is not None and nuis_phi.kind != "mean":
    p = jax.tree.map(np.asarray, dict(nuis_phi.params))  # sliced in NumPy, not jitted
    sel = np.asarray(union_cols)
    for k in ("y_mu", "y_sd"):
      p[k] = p[k][sel]
    if nuis_phi.kind == "ridge":
      p["coef_FxK"] = p["coef_FxK"][:, sel]
    elif nuis_phi.kind == "kernel":
      p["alpha_NxK"] = p["alpha_NxK"][:, sel]
    else:
      layers = [dict(l) for l in p["layers"]]
      layers[-1]["w"] = layers[-1]["w"][:, sel]
      layers[-1]["b"] = layers[-1]["b"][sel]
      p["layers"] = layers
    phi_kind, phi_params, e_oof = nuis_phi.kind, p, nuis_phi.oof_NxK[:, union_cols]
  else:
    mu = phi.mean(0)
    phi_kind, phi_params, e_oof = "mean", {"mu_K": jnp.asarray(mu)}, np.broadcast_to(
        mu, phi.shape)
  n_rff = int(cfg.gp_features) if method == "gp" else 0
  spec = DesignSpec(fspec, method, nuis_y.kind, phi_kind, method != "dml" and n_x > 0,
                    n_x, n_rff, modifiers)
  tok_med = (np.median(tokens, axis=0) if tokens is not None
             else np.ones(fspec.n_domains))
  bud_med = float(np.median(budget)) if budget is not None else 1.0
  params: dict[str, Any] = {
      "nuis_y": nuis_y.params, "nuis_phi": phi_params,
      "x_cols": jnp.asarray(xb.cols, jnp.int32), "x_mu": jnp.asarray(xb.mu_F),
      "x_sd": jnp.asarray(xb.sd_F), "x_proj": jnp.asarray(xb.proj_FxK),
      "tokens_D": jnp.asarray(tok_med), "budget": jnp.asarray(bud_med)}
  xs = xb.scores(x)
  if n_rff:
    u = np.concatenate([np.asarray(feats.ilr(np.asarray(runs_w), fspec.floor)), xs],
                       axis=1)
    rng = np.random.default_rng(seed)
    params["u_mu"] = jnp.asarray(u.mean(0))
    params["u_sd"] = jnp.asarray(u.std(0) + 1e-9)
    ls = gp_ls * np.sqrt(u.shape[1])
    params["rff_omega"] = jnp.asarray(rng.standard_normal((u.shape[1], n_rff)) / ls)
    params["rff_phase"] = jnp.asarray(rng.uniform(0, 2 * np.pi, n_rff))
  # Design on the training rows, with cross-fitted (out-of-fold) feature centres.
  phic = phi - e_oof
  mx = np.asarray(modifier_basis(modifiers, xs))
  blocks = []
  if spec.x_main:
    blocks.append(mx)
  blocks.append(phic)
  if n_x:
    blocks.append((phic[:, :, None] * mx[:, None, :]).reshape(len(y), -1))
  if n_rff:
    u = np.concatenate([np.asarray(feats.ilr(np.asarray(runs_w), fspec.floor)), xs], 1)
    u = (u - np.asarray(params["u_mu"])) / np.asarray(params["u_sd"])
    proj = u @ np.asarray(params["rff_omega"]) + np.asarray(params["rff_phase"])
    blocks.append(np.sqrt(2.0 / n_rff) * np.cos(proj))
  z = np.concatenate(blocks, axis=1)
  y_res = y - nuis_y.oof_NxK[:, 0]
  return _Candidate(spec, params, z, _design_groups(spec), y_res,
                    {"E[Y|X]": nuis_y.kind,
                     "E[phi|X]": nuis_phi.kind if nuis_phi is not None else "mean"})


def _noise_design(x: np.ndarray, xb: CovariateBasis) -> np.ndarray:
  """Noise log-variance design: the covariate scores (unit variance, mean zero)."""
  return xb.scores(x) if xb.k else np.zeros((len(x), 0))


def _reweight(z, y, groups, post: Conjugate, h_NxH: np.ndarray) -> np.ndarray | None:
  """Heteroscedastic weights: log squared residuals regressed (ridge) on the noise
  design; returns precision weights with mean 1, or None without a noise design."""
  if h_NxH.shape[1] == 0:
    return None
  r = y - post.b0 - z @ post.mean_Q
  t = np.log(r ** 2 + 1e-12 * np.var(y))
  a = np.concatenate([np.ones((len(y), 1)), h_NxH], 1)
  coef = np.linalg.solve(a.T @ a + 1.0 * np.diag([0.0] + [1.0] * h_NxH.shape[1]), a.T @ t)
  log_var = a @ coef
  wt = np.exp(-(log_var - log_var.mean()))
  return wt / wt.mean()


def _nuts_or_svi(cand: _Candidate, y_std: np.ndarray, h: np.ndarray, cfg, method: str,
                 inference: str, seed: int) -> tuple[np.ndarray, np.ndarray, dict]:
  """Posterior draws of (beta, b0) for the standardised design by NUTS or SVI."""
  import numpyro
  from numpyro import infer
  model = models.MODELS[method]
  n_groups = int(cand.groups_Q.max()) + 1
  args = (jnp.asarray(cand.z_NxQ), jnp.asarray(cand.groups_Q), n_groups,
          jnp.asarray(y_std), jnp.asarray(h) if h.shape[1] else None, str(cfg.prior))
  key = jax.random.key(seed)
  info: dict[str, Any] = {}
  if inference == "nuts":
    mcmc = infer.MCMC(infer.NUTS(model), num_warmup=int(cfg.num_warmup),
                      num_samples=int(cfg.num_samples), num_chains=int(cfg.num_chains),
                      chain_method="sequential", progress_bar=False)
    mcmc.run(key, *args)
    grouped = mcmc.get_samples(group_by_chain=True)
    from causalmix_jax.surface import diagnostics
    info["rhat_max"] = float(np.nanmax([np.nanmax(diagnostics.split_rhat(np.asarray(v)))
                                        for k, v in grouped.items() if k in ("beta", "b0",
                                                                             "log_sigma")]))
    info["ess_min"] = float(np.nanmin([np.nanmin(diagnostics.ess(np.asarray(v)))
                                       for k, v in grouped.items() if k in ("beta", "b0",
                                                                            "log_sigma")]))
    s = mcmc.get_samples()
  else:
    guide = infer.autoguide.AutoLowRankMultivariateNormal(model)
    svi = infer.SVI(model, guide, numpyro.optim.Adam(0.01), infer.Trace_ELBO())
    res = svi.run(key, int(cfg.svi_steps), *args, progress_bar=False)
    info["elbo_final"] = float(-res.losses[-1])
    pred = infer.Predictive(guide, params=res.params, num_samples=int(cfg.num_samples))
    s = pred(jax.random.key(seed + 1), *args)
    s = {"beta": _beta_from(s, cand, cfg), "b0": s["b0"]}
  return np.asarray(s["beta"], np.float64), np.asarray(s["b0"], np.float64), info


def _beta_from(s: dict[str, Any], cand: _Candidate, cfg) -> jnp.ndarray:
  """Recomputes beta from SVI guide draws of the latent sites."""
  if cfg.prior == "hier_normal":
    return s["z"] * s["tau"][:, cand.groups_Q]
  lam, c2, tau = s["lam"], s["c2"][:, None], s["tau"][:, None]
  lam_t = jnp.sqrt(c2 * lam ** 2 / (c2 + tau ** 2 * lam ** 2))
  return s["z"] * tau * lam_t


def _modifier_options(modifiers: tuple[str, ...], xb: CovariateBasis
                      ) -> tuple[str, ...]:
  """Candidate effect-modifier bases. Without covariates only "linear". When the
  components span every distinct pool state, the linear basis already fits any
  function of the states, so quadratic terms would be collinear with it on the sweep
  (they would change only the extrapolation): they are tried only when they add
  something the sweep can identify."""
  if not xb.k:
    return ("linear",)
  if xb.spans_states:
    return tuple(m for m in modifiers if m == "linear") or ("linear",)
  return modifiers


def _remap(n: nuis.Nuisance, x_cols: np.ndarray) -> nuis.Nuisance:
  """Makes a nuisance fitted on x[:, x_cols] index the full covariate vector."""
  if n.kind != "mean":
    n.params = dict(n.params)
    n.params["cols"] = jnp.asarray(x_cols[np.asarray(n.params["cols"])])
  return n


def pool_calibration(zs_NxQ: np.ndarray, y_N: np.ndarray, groups_Q: np.ndarray,
                     pools_N: np.ndarray, weights_N: np.ndarray | None, n_folds: int,
                     seed: int, level: float = 0.9,
                     prior: NoisePrior | None = None,
                     pure_noise_var: float | None = None) -> float:
  """Scale for the posterior spread of the effects so that they carry to new pools.

  Leave-pools-out cross-validation of within-pool contrasts: for every held-out pool,
  the deviation of each run's outcome from the pool mean is predicted from the design
  (the nuisances cancel, as in a CATE). The spread is scaled so that a `level` share of
  these held-out contrasts fall inside their central `level` intervals (the scale is at
  least 1). Returns the scale (1.0 without enough pools).

  A held-out contrast carries the runs' noise on top of the effect's error, and an
  effect interval must cover only the latter. Only noise known to be noise is taken
  out: `pure_noise_var`, the pure error of replicate runs (spread over rows like the
  fitted heteroscedastic weights). The fitted model's noise variance is not used: it
  also holds the surface's misfit, which is a systematic error of the effect that the
  interval must cover, and taking it out made intervals too narrow. Without replicates
  nothing is taken out, so the scale errs on the wide side by the noise's share."""
  z_level = central_z(level)
  uniq = np.unique(pools_N)
  if len(uniq) < max(n_folds, 4):
    return 1.0
  folds_p = nuis.fold_ids(len(uniq), min(n_folds, len(uniq)), seed)
  fold_of = dict(zip(uniq.tolist(), folds_p.tolist()))
  f_n = np.array([fold_of[p] for p in pools_N.tolist()])
  wt = np.ones(len(y_N)) if weights_N is None else weights_N
  rel_noise_N = (1.0 / wt) / np.mean(1.0 / wt)
  ratios = []
  for k in range(int(f_n.max()) + 1):
    tr, te = f_n != k, f_n == k
    post = conjugate_fit(zs_NxQ[tr], y_N[tr], groups_Q, wt[tr], prior=prior)
    for p in np.unique(pools_N[te]):
      rows = np.flatnonzero(te & (pools_N == p))
      if len(rows) < 2:
        continue
      dz = zs_NxQ[rows] - zs_NxQ[rows].mean(0)
      dy = y_N[rows] - y_N[rows].mean()
      err2 = (dy - dz @ post.mean_Q) ** 2
      var = post.quad_var(dz)
      noise = ((1.0 - 1.0 / len(rows)) * pure_noise_var * rel_noise_N[rows]
               if pure_noise_var is not None else 0.0)
      # Inflation this contrast needs to sit on the edge of the `level` interval.
      ratios.append((err2 / z_level ** 2 - noise) / np.maximum(var, 1e-30))
  if not ratios:
    return 1.0
  return float(np.sqrt(max(np.quantile(np.concatenate(ratios), level), 1.0)))


# -- entry point --------------------------------------------------------------------------

def _support_stats(x: np.ndarray, w: np.ndarray, xb: CovariateBasis,
                   y: np.ndarray | None = None, maximize: bool = False,
                   n_best: int = 8, held_out: bool = True,
                   tokens: np.ndarray | None = None,
                   budget: np.ndarray | None = None) -> dict[str, Any]:
  """What `Surface.support` needs: the sweep's ranges over every covariate, and its
  spread in the standardised varying covariates, in the component scores
  (Mahalanobis) and off the component subspace (residual); with `held_out`, the same
  statistics of each state measured held out (`held_out_support`: the verdict). With
  the runs' token counts and budgets, also the most passes any run made over each
  domain's unique tokens (`epochs_max`)."""
  f = x.shape[1]
  z = np.zeros(0)
  out: dict[str, Any] = {
      "mean": (x.mean(0) if f else z).tolist(), "sd": (x.std(0) if f else z).tolist(),
      "min": (x.min(0) if f else z).tolist(), "max": (x.max(0) if f else z).tolist(),
      "w_mean": w.mean(0).tolist(), "w_max": w.max(0).tolist(),
      "cols": xb.cols.tolist(), "x_mu": xb.mu_F.tolist(), "x_sd": xb.sd_F.tolist(),
      "basis": xb.basis_FxK.tolist(), "score_sd": xb.score_sd_K.tolist()}
  if tokens is not None and budget is not None:
    out["epochs_max"] = np.asarray(feats.epochs(w, tokens, np.asarray(budget, np.float64)),
                                   np.float64).max(0).tolist()
  xs = xb.standardise(x) if len(xb.cols) else np.zeros((len(x), 0))
  scores = xs @ xb.proj_FxK if xb.k else np.zeros((len(x), 0))
  if xb.k:
    prec = score_precision(scores)
    sweep_d = mahalanobis(scores, prec)
  else:
    prec, sweep_d = np.zeros((0, 0)), np.zeros(len(x))
  resid = xs - (xs @ xb.basis_FxK) @ xb.basis_FxK.T if len(xb.cols) else xs
  if y is not None:
    # The sweep's best-known mixtures (anchors of the safe objective): best against
    # their own pool state's mean, so a good pool does not pass for a good mixture, and
    # each (mixture, state) by the mean of its seed replicates, so a lucky seed does not
    # pass for a good mixture either.
    _, g = np.unique(np.round(x, 9), axis=0, return_inverse=True)
    g = np.asarray(g).reshape(-1)
    _, r = np.unique(np.concatenate([np.round(w, 9), g[:, None]], axis=1), axis=0,
                     return_inverse=True)
    r = np.asarray(r).reshape(-1)
    y_rep = (np.bincount(r, weights=y) / np.bincount(r))[r]
    rel = y_rep - (np.bincount(g, weights=y) / np.bincount(g))[g]
    order = np.argsort(-rel if maximize else rel, kind="stable")
    seen: list[np.ndarray] = []
    for i in order:
      if not seen or not np.isclose(w[i][None, :], np.asarray(seen)).all(1).any():
        seen.append(w[i])
      if len(seen) == n_best:
        break
    out["best_w"] = [v.tolist() for v in seen]
  out.update({"score_precision": prec.tolist(), "sweep_mahalanobis": sweep_d.tolist(),
              "sweep_standardised": np.linalg.norm(xs, axis=1).tolist(),
              "sweep_residual_max": float(np.max(np.linalg.norm(resid, axis=1),
                                                 initial=0.0))})
  held = held_out_support(x, xb) if held_out else None
  if held is not None:
    out["held_out"] = held
  return out


# Stack settings that name a choice: the options of each, the first the default (also for
# configs written before the key existed).
STACK_CALIBRATIONS = ("pairs", "cell_means")  # surface.stack_calibration
STACK_DISCREPANCIES = ("none", "rff")  # surface.stack_discrepancy
# surface.covariate_extrapolation
COVARIATE_EXTRAPOLATIONS = ("linear", "clip", "hedge", "clip_decisions")
DECISION_CALIBRATIONS = ("none", "conformal", "report")  # surface.decision_calibration
STACK_COVARIATES = ("select", "select_all", "aware")  # surface.stack_covariates
CONFORMAL_SPREADS = ("heldout", "final", "split")  # surface.conformal_spread
COMPANIONS = ("none", "trees", "trees_epochs")  # surface.companion
# surface.conformal_units; a config without the key keeps the units of the surfaces
# fitted before it ("pairs").
CONFORMAL_UNITS = ("pairs", "pools", "pools_reported")
# surface.replicate_pairs: what the "pairs" calibration does with a pair of replicate
# runs (one mixture, pool state and scale at two seeds); a config without the key keeps
# them, as the surfaces fitted before it did (the section's default is "drop").
REPLICATE_PAIRS = ("keep", "drop")
# surface.stack_focus: which held-out contrasts choose the stack's weights and its
# covariate set: every run's ("all", the default) or only the runs in the better half
# of their held-out cell ("top": the region the optimiser moves into).
STACK_FOCUS = ("all", "top")


def _choice(cfg, key: str, options: Sequence[str]) -> str:
  """`surface.<key>`, its default the first option, checked (ValueError naming it)."""
  value = str(cfg.get(key, options[0]))
  if value not in options:
    raise ValueError(f"surface.{key}: unknown {value!r}; known: {list(options)}")
  return value


def stack_calibration(cfg) -> str:
  return _choice(cfg, "stack_calibration", STACK_CALIBRATIONS)


def stack_discrepancy(cfg) -> str:
  return _choice(cfg, "stack_discrepancy", STACK_DISCREPANCIES)


def covariate_extrapolation(cfg) -> str:
  return _choice(cfg, "covariate_extrapolation", COVARIATE_EXTRAPOLATIONS)


def decision_calibration(cfg) -> str:
  return _choice(cfg, "decision_calibration", DECISION_CALIBRATIONS)


def stack_covariates(cfg) -> str:
  return _choice(cfg, "stack_covariates", STACK_COVARIATES)


def conformal_spread(cfg) -> str:
  return _choice(cfg, "conformal_spread", CONFORMAL_SPREADS)


def companion(cfg) -> str:
  return _choice(cfg, "companion", COMPANIONS)


def conformal_units(cfg) -> str:
  return _choice(cfg, "conformal_units", CONFORMAL_UNITS)


def replicate_pairs(cfg) -> str:
  return _choice(cfg, "replicate_pairs", REPLICATE_PAIRS)


def stack_focus(cfg) -> str:
  return _choice(cfg, "stack_focus", STACK_FOCUS)


def check_config(method: str, cfg) -> None:
  """Every surface setting that names a choice, checked up front with its key named."""
  if method not in METHODS:
    raise ValueError(f"surface.method: unknown method {method!r}; known: {list(METHODS)}")
  if str(cfg.inference) not in INFERENCES:
    raise ValueError(f"surface.inference: unknown {cfg.inference!r}; known: "
                     f"{list(INFERENCES)}")
  if str(cfg.pairs) not in PAIR_OPTIONS:
    raise ValueError(f"surface.pairs: unknown {cfg.pairs!r}; known: {list(PAIR_OPTIONS)}")
  for key in ("modifiers", "stack_modifiers"):
    bad = [m for m in cfg[key] if m not in MODIFIERS]
    if bad:
      raise ValueError(f"surface.{key}: unknown {bad}; known: {list(MODIFIERS)}")
  stack_calibration(cfg)
  stack_discrepancy(cfg)
  covariate_extrapolation(cfg)
  decision_calibration(cfg)
  companion(cfg)
  conformal_units(cfg)
  replicate_pairs(cfg)
  stack_focus(cfg)
  if conformal_spread(cfg) == "split" and stack_discrepancy(cfg) == "rff":
    raise ValueError("surface.conformal_spread = 'split' with surface.stack_discrepancy "
                     "= 'rff': the discrepancy term is drawn once, at one scale, so the "
                     "intervals and the decisions cannot be calibrated apart; use "
                     "'heldout' or 'final' with it")
  bad_kinds = [k for k in cfg.get("feature_kinds", ()) if k not in feats.KINDS]
  if bad_kinds:
    raise ValueError(f"surface.feature_kinds: unknown kind(s) {bad_kinds}; known: "
                     f"{list(feats.KINDS)}")
  from causalmix_jax.surface import robust  # imports this module
  members, known = tuple(cfg.get("stack_members", ())), robust.MEMBERS
  for name in members:
    if name not in known:
      raise ValueError(f"surface.stack_members: unknown member {name!r}; known: "
                       f"{list(known)}")
  copies = [m for m in members if robust.member_set(m)[1] != "aware"]
  setting = stack_covariates(cfg)
  if setting != "aware" and copies:
    raise ValueError(f"surface.stack_members: {copies} with surface.stack_covariates = "
                     f"{setting!r}, which fits every member's copies itself; name the "
                     "covariate-aware members only")
  if method == "stack" and not members:
    raise ValueError("surface.stack_members: empty; name at least one of "
                     f"{list(known)}")
  if not 0 < float(cfg.interval_level) < 1:
    raise ValueError(f"surface.interval_level: must be in (0, 1), got "
                     f"{cfg.interval_level}")


def min_runs(cfg) -> int:
  """Usable runs every surface method needs: MIN_RUNS, and one per fold."""
  return max(MIN_RUNS, int(cfg.n_folds))


def check_runs(runs, outcome: str, method: str, cfg) -> np.ndarray:
  """Checks that `runs` can identify a surface for `outcome`; returns the mask of usable
  runs (status "ok"). Only this outcome's values are checked (a sparse table's other
  outcomes may be NaN).

  Raises RunsTableError for a NaN/inf value of the outcome in a run with status "ok",
  DegenerateRunsError for too few usable runs, a constant outcome, or mixtures that do
  not vary; each message names the table's source and the outcome column. KeyError for
  an outcome the table does not have."""
  name = outcome[2:] if outcome.startswith("y_") else outcome
  col, src = f"y_{name}", runs.source
  y_all = np.asarray(runs.y(name), np.float64)
  ok = np.asarray(runs.ok, bool)
  bad = np.flatnonzero(ok & ~np.isfinite(y_all))
  if len(bad):
    rows = ", ".join(str(r) for r in bad[:5]) + (
        f" and {len(bad) - 5} more" if len(bad) > 5 else "")
    raise RunsTableError(
        f"{src}, column {col!r}: NaN/inf outcome in {len(bad)} of {int(ok.sum())} runs "
        f"with status 'ok' (rows {rows}; first run_id {runs.run_ids[bad[0]]!r}); give "
        "failed runs another status, or fit an outcome every run has")
  need = min_runs(cfg)
  n = int(ok.sum())
  if n < need:
    other = len(ok) - n
    raise DegenerateRunsError(
        f"{src}, column {col!r}: {n} usable runs"
        + (f" ({other} more with a status other than 'ok')" if other else "")
        + f"; the {method!r} surface needs at least {need} (max of {MIN_RUNS} and "
        f"surface.n_folds={int(cfg.n_folds)})")
  y = y_all[ok]
  if np.ptp(y) <= 1e-12 * max(1.0, float(np.max(np.abs(y)))):
    raise DegenerateRunsError(
        f"{src}, column {col!r}: the outcome is constant ({float(y[0]):.9g} in all {n} "
        "usable runs): no mixture effect can be estimated")
  w = runs.W[ok]
  w = w / w.sum(1, keepdims=True)
  sv = np.linalg.svd(w - w.mean(0), compute_uv=False)
  rank = int(np.sum(sv > MIXTURE_RANK_TOL * np.sqrt(n)))
  distinct = len(np.unique(np.round(w, 9), axis=0))
  if rank < 1:
    raise DegenerateRunsError(
        f"{src}, column {col!r}: the mixture effect is unidentifiable: the {n} usable "
        f"runs use {distinct} distinct mixture(s) (centred weight matrix of rank "
        f"{rank}; the surface needs the mixtures to vary)")
  d = w.shape[1]
  if rank < min(d - 1, n - 1):
    log.warning("%s, column %r: the %d runs' %d distinct mixtures vary along only %d "
                "of the simplex's %d directions; the effects along the others rest on "
                "the prior", src, col, n, distinct, rank, d - 1)
  x = np.asarray(runs.X, np.float64)[ok]
  if x.shape[1] and len(np.unique(np.round(x, 9), axis=0)) == 1 and \
      (src, col) not in _WARNED_SINGLE_STATE:
    _WARNED_SINGLE_STATE.add((src, col))
    log.warning("%s, column %r: every run has the same covariates (one pool state): the "
                "surface cannot learn how the best mixture depends on the pool, so its "
                "answers for any other pool are extrapolations", src, col)
  return ok


_WARNED_SINGLE_STATE: set[tuple[str, str]] = set()


def fit_surface(runs, outcome: str, method: str = "stack", config=None,
                covariate_blind: bool = False) -> SurfaceBase:
  """Fits a surface for outcome `outcome` (with or without the y_ prefix).

  method: "stack" (default; the families below stacked and calibrated on held-out
  pools, `robust.py`), "scaling" (the structured scaling law, `scaling.py`),
  "transfer" (its transfer form: one power law in the pooled effective data),
  "dml" (cross-fitted nuisances, heterogeneous effect theta(X)),
  "outcome" (Y ~ f(T, X) with T x X interactions) or "gp" (outcome model plus a
  random-Fourier-feature GP over (log-ratio mixture, X)). config: a ConfigDict like
  `configs.surface.section` (None: defaults; inference "exact"). covariate_blind: ignore
  X (the ablation): the surface then answers the same for every pool.

  The runs are checked once, up front, for every method (`check_runs`): a NaN outcome
  in an "ok" run raises RunsTableError; too few usable runs, a constant outcome or
  mixtures that never vary raise DegenerateRunsError."""
  cfg = default_config() if config is None else config
  check_config(method, cfg)
  check_runs(runs, outcome, method, cfg)
  # Every family's solves and searches are small: BLAS threads only add overhead at
  # these sizes (tenfold on a shared machine, in the discrepancy's size search).
  with one_blas_thread():
    surface = _fit_any(runs, outcome, method, config, covariate_blind)
    if companion(cfg) != "none":
      surface.companion = fit_companion(runs, outcome, int(cfg.seed), covariate_blind,
                                        epochs=companion(cfg) == "trees_epochs")
      surface.info["companion"] = surface.companion.info
    return surface


def usable_runs(runs, outcome: str) -> tuple[str, np.ndarray, np.ndarray]:
  """(the outcome's name without "y_", the mask of runs that are ok with a finite
  outcome, the outcome of every run): the rows every family fits on."""
  name = outcome[2:] if outcome.startswith("y_") else outcome
  y_all = runs.y(name)
  return name, np.isfinite(y_all) & np.asarray(runs.ok), y_all


def fit_companion(runs, outcome: str, seed: int = 0, covariate_blind: bool = False,
                  epochs: bool = False):
  """The companion model (surface.companion = "trees"): LightGBM on the usable runs'
  mixtures (as shares) and covariates (none when `covariate_blind`), the stack's tree
  member fitted once on every run (`trees.py`). `recommend` averages the surface's
  pick with the mixture this model's point predictions rank best.

  `epochs` (surface.companion = "trees_epochs"): the trees also read each domain's
  epochs, share * budget / tokens, and answer for the pool recommend is given (the
  sweep's median pool where it is given none). Runs without token counts or budgets
  give the plain trees, with a warning and the reason in `info["epochs_reason"]`."""
  from causalmix_jax.surface import trees
  name, keep, y_all = usable_runs(runs, outcome)
  kw: dict[str, Any] = {}
  reason = None
  if epochs:
    tokens, budget = runs.tokens, runs.budget
    if tokens is None or budget is None:
      reason = (f"{runs.source}: surface.companion = 'trees_epochs' needs "
                "tokens_<domain> and budget_tokens columns; the companion reads no epochs")
    elif not (np.all(tokens[keep] > 0) and np.all(budget[keep] > 0)):
      reason = (f"{runs.source}: surface.companion = 'trees_epochs' needs positive "
                "tokens_<domain> and budget_tokens in every usable run; the companion "
                "reads no epochs")
    else:
      kw = dict(epochs_NxD=trees.epochs_rows(runs.W[keep], tokens[keep], budget[keep]),
                epochs_pool=(np.median(tokens[keep], axis=0),
                             float(np.median(budget[keep]))))
    if reason is not None:
      log.warning("%s", reason)
  model = trees.fit_trees(runs.W[keep], runs.X[keep], y_all[keep], n=1,
                          blind=covariate_blind, seed=seed, support_stats={},
                          domains=runs.domains, features=runs.features, outcome=name,
                          maximize=name in runs.maximize, **kw)
  if reason is not None:
    model.info["epochs_reason"] = reason
  return model


def _fit_any(runs, outcome: str, method: str, config, covariate_blind: bool
             ) -> SurfaceBase:
  """The fit of `method` on checked runs and config (the stack, a scaling form, or
  one linear family)."""
  from causalmix_jax.surface import robust
  if method == "stack":
    return robust.fit_stack(runs, outcome, config, covariate_blind=covariate_blind)
  if method in robust.SCALING_FORMS:
    return robust.fit_scaling(runs, outcome, config, covariate_blind=covariate_blind,
                              form=robust.SCALING_FORMS[method])
  return _fit_surface(runs, outcome, method, config, covariate_blind)


def _fit_surface(runs, outcome: str, method: str, config, covariate_blind: bool, *,
                 support_held_out: bool = True,
                 start: tuple[Any, float] | None = None) -> Surface:
  """One family's fit (see `fit_surface`). `support_held_out=False` skips the held-out
  support statistics (cross-validation refits, whose support nobody asks about).
  `start`: (prior precisions, noise precision) the evidence search starts from, e.g.
  the full fit's `info["prior_precision"]` and `info["noise_precision"]` for a
  cross-validation refit with the full fit's chosen design; ignored when the config
  leaves several candidate designs or the design's prior groups differ in number."""
  cfg = default_config() if config is None else config
  inference = str(cfg.inference)
  t0 = time.time()
  name, keep, y_all = usable_runs(runs, outcome)
  if keep.sum() < min_runs(cfg):
    raise DegenerateRunsError(f"{runs.source}: outcome y_{name} has {int(keep.sum())} "
                              f"usable runs; the surface needs at least {min_runs(cfg)}")
  w = runs.W[keep]
  w = w / w.sum(1, keepdims=True)
  x_full = runs.X[keep]
  y = y_all[keep]
  tokens = runs.tokens[keep] if runs.tokens is not None else None
  budget = runs.budget[keep] if runs.budget is not None else None
  scales = runs.scales()[keep]
  tokens_known = tokens is not None and budget is not None
  xb = covariate_basis(np.zeros((len(y), 0)) if covariate_blind else x_full,
                       int(cfg.max_x_components))
  x_cols = xb.cols
  seed = int(cfg.seed)
  y_mu, y_sd = float(y.mean()), float(y.std()) or 1.0
  ys = (y - y_mu) / y_sd
  d = w.shape[1]
  kinds = tuple(cfg.feature_kinds) if cfg.feature_kinds else feats.default_kinds(
      tokens_known)
  if "repetition" in kinds and not tokens_known:
    kinds = tuple(k for k in kinds if k != "repetition")
  pair_options = PAIR_OPTIONS[str(cfg.pairs)]
  if d * (d - 1) // 2 > int(cfg.max_pairs):
    pair_options = (False,)
  floors = tuple(float(f) for f in cfg.floors)
  union_kinds = kinds + (("pairs",) if True in pair_options else ())
  candidates: list[_Candidate] = []
  cand_cfgs = []
  # One nuisance fit for the features at every floor (columns stacked floor by floor).
  uspecs = [feats.FeatureSpec(d, union_kinds, floor) for floor in floors]
  union_phi = np.concatenate([np.asarray(feats.featurize(u, np.asarray(w), tokens,
                                                         budget), np.float64)
                              for u in uspecs], axis=1)
  models_ = tuple(cfg.nuisance_models) if method == "dml" else ()
  nuis_y_full = _remap(nuis.fit_nuisance(
      x_full[:, x_cols], ys[:, None], n_folds=int(cfg.n_folds), seed=seed,
      candidates=models_, what=f"E[y_{name}|X]"), x_cols)
  nuis_phi = _remap(nuis.fit_nuisance(
      x_full[:, x_cols], union_phi, n_folds=int(cfg.n_folds), seed=seed,
      candidates=models_, what="E[phi|X]"), x_cols)
  for fi, (floor, uspec) in enumerate(zip(floors, uspecs)):
    ucols = uspec.groups()
    offset = fi * uspec.n_features
    for pairs in pair_options:
      ks = kinds + (("pairs",) if pairs else ())
      fspec = feats.FeatureSpec(d, ks, floor)
      sel = offset + np.concatenate([np.flatnonzero(ucols == union_kinds.index(k))
                                     for k in ks])
      mods = _modifier_options(tuple(cfg.modifiers), xb)
      for ls in (tuple(cfg.gp_lengthscales) if method == "gp" else (1.0,)):
        for mod in mods:
          cand_cfgs.append((floor, pairs, ls, mod))
          candidates.append(_build(w, x_full, ys, tokens, budget, fspec, union_phi, sel,
                                   method, xb, nuis_y_full, nuis_phi, cfg, seed, ls,
                                   mod))
  h = _noise_design(x_full, xb) if cfg.heteroscedastic else np.zeros((len(y), 0))
  best, best_ev, best_post, best_wt = None, -np.inf, None, None
  evidences = {}
  # The noise prior: pure error of replicate runs (same mixture and covariates), else
  # calibrated on a linear fit of what E[Y|X] leaves (the same for every candidate).
  y_res = candidates[0].y_res_N  # the same E[Y|X] residual for every candidate
  prior = noise_prior(y_res, None, float(cfg.noise_prior_dof),
                      float(cfg.noise_prior_quantile),
                      linear_residual_var(y_res, w))
  # Replicates share mixture, covariates and training scale.
  pe = noise_prior(ys, np.concatenate([w, x_full, scales], axis=1))
  if pe.source == "replicates":
    prior = pe
  if len(candidates) > 1:
    start = None
  for (floor, pairs, ls, mod), cand in zip(cand_cfgs, candidates):
    zc = cand.z_NxQ
    z_mu, z_sd = zc.mean(0), zc.std(0)
    z_sd = np.where(z_sd > 1e-12, z_sd, 1.0)
    cand.params["z_mu"], cand.params["z_sd"] = jnp.asarray(z_mu), jnp.asarray(z_sd)
    zs = (zc - z_mu) / z_sd
    # A refit's design can have other groups than the full fit's (e.g. fewer covariate
    # components in a fold): then its search starts afresh.
    n_groups = int(cand.groups_Q.max()) + 1 if len(cand.groups_Q) else 0
    fits = start is not None and np.size(start[0]) == n_groups
    post = conjugate_fit(zs, cand.y_res_N, cand.groups_Q, prior=prior,
                         start=start if fits else None)
    wt = _reweight(zs, cand.y_res_N, cand.groups_Q, post, h)
    if wt is not None:  # the weighted fit starts where the unweighted one ended
      post = conjugate_fit(zs, cand.y_res_N, cand.groups_Q, wt, prior=prior,
                           start=(post.alpha_G, post.noise_prec))
    key = (f"floor={floor:g},pairs={pairs},modifiers={mod}"
           + (f",ls={ls:g}" if method == "gp" else ""))
    evidences[key] = post.evidence
    if post.evidence > best_ev:
      best, best_ev, best_post, best_wt = cand, post.evidence, post, wt
      best_zs = zs
  assert best is not None
  info: dict[str, Any] = {"method": method, "inference": inference,
                          "covariate_blind": bool(covariate_blind),
                          "covariates": {"varying": int(len(xb.cols)),
                                         "pool_states": xb.n_states,
                                         "components": xb.k,
                                         "explained": xb.explained_K.tolist()},
                          "n_runs": int(len(y)), "evidence": evidences,
                          "chosen": {"kinds": list(best.spec.features.kinds),
                                     "floor": best.spec.features.floor,
                                     "modifiers": best.spec.modifiers},
                          "nuisance": best.nuisance_info,
                          # Noise sd of a new run, averaged (in variance) over the
                          # sweep's rows when the noise is heteroscedastic.
                          "noise_sd": float(y_sd * np.sqrt(np.mean(
                              1.0 / (1.0 if best_wt is None else best_wt))
                                                           / best_post.noise_prec)),
                          "noise_prior": {"source": prior.source,
                                          "sd": float(y_sd * np.sqrt(prior.var)),
                                          "dof": prior.dof},
                          "prior_precision": best_post.alpha_G.tolist(),
                          # On the standardised outcome: with prior_precision, where
                          # a refit on most of these runs starts its search.
                          "noise_precision": float(best_post.noise_prec)}
  n_draws = int(cfg.num_samples) * (int(cfg.num_chains) if inference == "nuts" else 1)
  scale = 1.0
  if cfg.calibrate_pools and len(x_cols):
    _, pools = np.unique(np.concatenate([x_full[:, x_cols], scales], axis=1), axis=0,
                         return_inverse=True)
    scale = pool_calibration(best_zs, best.y_res_N, best.groups_Q,
                             np.asarray(pools).reshape(-1), best_wt, int(cfg.n_folds),
                             seed, prior=prior,
                             pure_noise_var=pe.var if pe.source == "replicates" else None)
  info["pool_calibration"] = scale
  if inference == "exact":
    beta_s, b0_s = conjugate_draws(best_post, np.zeros(best_zs.shape[1]), n_draws, seed)
  else:
    beta_s, b0_s, extra = _nuts_or_svi(best, best.y_res_N, h, cfg, method, inference,
                                       seed)
    info.update(extra)
  if scale != 1.0:
    mean = beta_s.mean(0)
    beta_s = mean + scale * (beta_s - mean)
  # Back to outcome units: f = y_mu + y_sd * (m_y_std(x) + b0 + z_std . beta).
  params = dict(best.params)
  ny = dict(params["nuis_y"])
  if best.spec.nuis_y == "mean":
    ny["mu_K"] = ny["mu_K"] * y_sd + y_mu
  else:
    ny["y_mu"] = ny["y_mu"] * y_sd + y_mu
    ny["y_sd"] = ny["y_sd"] * y_sd
  params["nuis_y"] = ny
  params["beta_SxQ"] = jnp.asarray(beta_s * y_sd)
  params["b0_S"] = jnp.asarray(b0_s * y_sd)
  info["fit_seconds"] = time.time() - t0
  log.info("surface %s/%s on y_%s: %d runs, features %s floor %g, %.2fs", method,
           inference, name, len(y), best.spec.features.kinds, best.spec.features.floor,
           info["fit_seconds"])
  return Surface(best.spec, params, domains=runs.domains, features=runs.features,
                 outcome=name, maximize=name in runs.maximize,
                 support_stats=_support_stats(x_full, w, xb, y, name in runs.maximize,
                                              held_out=support_held_out,
                                              tokens=tokens, budget=budget),
                 info=info)
