"""Jitted search over the simplex on a posterior objective: the objectives computed from
joint posterior draws, the continuous projection used inside the search, CausalMix-S
(candidate scoring + multi-start mirror descent) and CausalMix-A (a step along the
marginal returns with a line search), each one jitted call.

Inside jit everything is arrays in the canonical domain order. `fns` is a tuple of
posterior samplers `fn(params, w_NxD, x_F) -> y_SxN` (static), combined as
z = sum_k coef_k * y_k, always *minimised* (coefs carry the sign of maximised outcomes).
The sampler is batched over rows, so all starts of the search run as one batch: the
batch axis plays the role of the vmapped start axis without a nested vmap inside the
sampler.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Sampler = Callable[[Any, jax.Array, jax.Array], jax.Array]
OBJECTIVES = ("mean", "bound", "pi")
_OBJECTIVE_ALIASES = {"mean": "mean", "bound": "bound", "lcb": "bound", "ucb": "bound",
                      "risk": "bound", "quantile": "bound", "pi": "pi",
                      "prob": "pi", "probability": "pi"}


def canonical_objective(name: str) -> str:
  try:
    return _OBJECTIVE_ALIASES[name.lower()]
  except KeyError:
    raise ValueError(f"unknown objective {name!r}; use 'mean', 'bound' (alias 'lcb': the "
                     f"risk-averse credible bound) or 'pi' (probability of improving on "
                     f"the reference)") from None


@dataclasses.dataclass(frozen=True)
class Problem:
  """Static description of what is optimised (hashable: a jit static argument)."""
  fns: tuple[Sampler, ...]
  objective: str  # "mean" | "bound" | "pi"
  ci: float  # the bound is the (1+ci)/2 quantile of the loss draws
  trust_kind: str  # "l1" | "kl"
  has_trust: bool


def combined_draws(fns: Sequence[Sampler], params: Sequence[Any], xs: Sequence[jax.Array],
                   coefs: jax.Array, w_NxD: jax.Array) -> jax.Array:
  """z_SxN = sum_k coefs[k] * fn_k(params_k, w, x_k), draws truncated to the fewest."""
  ys = [fn(p, w_NxD, x) for fn, p, x in zip(fns, params, xs)]
  s = min(y.shape[0] for y in ys)
  return sum(coefs[k] * ys[k][:s] for k in range(len(ys)))


def loss_from_draws(prob: Problem, z_SxN: jax.Array, zref_S: jax.Array,
                    smooth: bool) -> jax.Array:
  """Per-row objective (lower is better). PI: minus the probability of beating the
  reference, ties broken by the mean; `smooth` replaces the indicator by a sigmoid."""
  if prob.objective == "mean":
    return z_SxN.mean(0)
  if prob.objective == "bound":
    return jnp.quantile(z_SxN, 0.5 * (1 + prob.ci), axis=0)
  d_SxN = z_SxN - zref_S[:, None]
  scale = jnp.std(zref_S) + 1e-6 * (jnp.abs(zref_S).mean() + 1e-12)
  if smooth:
    p = jax.nn.sigmoid(-d_SxN / (0.1 * scale)).mean(0)
  else:
    p = (d_SxN < 0).mean(0)
  return -p + 1e-6 * d_SxN.mean(0) / scale


# ---------------------------------------------------------------- continuous projection


def project_box_simplex(v_NxD: jax.Array, lo_D: jax.Array, hi_D: jax.Array,
                        iters: int = 50) -> jax.Array:
  """Euclidean projection of each row onto {lo <= w <= hi, sum w = 1}, by bisection on the
  shift tau of w = clip(v - tau, lo, hi)."""
  a = jnp.min(v_NxD - hi_D, axis=1) - 1e-6  # sum >= 1 here
  b = jnp.max(v_NxD - lo_D, axis=1) + 1e-6  # sum <= 1 here

  def body(_, ab):
    a, b = ab
    mid = 0.5 * (a + b)
    s = jnp.clip(v_NxD - mid[:, None], lo_D, hi_D).sum(1)
    return jnp.where(s > 1, mid, a), jnp.where(s > 1, b, mid)

  a, b = jax.lax.fori_loop(0, iters, body, (a, b))
  return jnp.clip(v_NxD - 0.5 * (a + b)[:, None], lo_D, hi_D)


def trust_distance(w_NxD: jax.Array, ref_D: jax.Array, kind: str) -> jax.Array:
  if kind == "l1":
    return jnp.abs(w_NxD - ref_D).sum(1)
  safe_ref = jnp.where(ref_D > 0, ref_D, 1.0)
  safe_w = jnp.where(w_NxD > 0, w_NxD, 1.0)
  term = jnp.where(w_NxD > 0, w_NxD * jnp.log(safe_w / safe_ref), 0.0)
  term = jnp.where((w_NxD > 1e-12) & (ref_D <= 0), jnp.inf, term)
  return term.sum(1)


def retract(w_NxD: jax.Array, c_D: jax.Array, ref_D: jax.Array, radius: jax.Array,
            kind: str, iters: int = 30) -> jax.Array:
  """Moves rows outside the trust region towards the centre c until they are inside."""
  inside = trust_distance(w_NxD, ref_D, kind) <= radius
  a = jnp.zeros(w_NxD.shape[0])
  b = jnp.ones(w_NxD.shape[0])

  def body(_, ab):
    a, b = ab
    mid = 0.5 * (a + b)
    ok = trust_distance(c_D + mid[:, None] * (w_NxD - c_D), ref_D, kind) <= radius
    return jnp.where(ok, mid, a), jnp.where(ok, b, mid)

  a, _ = jax.lax.fori_loop(0, iters, body, (a, b))
  moved = c_D + a[:, None] * (w_NxD - c_D)
  return jnp.where(inside[:, None], w_NxD, moved)


def make_feasible_relaxed(prob: Problem, v_NxD, lo_D, hi_D, c_D, ref_D, radius):
  w = project_box_simplex(v_NxD, lo_D, hi_D)
  if prob.has_trust:
    w = retract(w, c_D, ref_D, radius, prob.trust_kind)
  return w


# ---------------------------------------------------------------- objective evaluation


def _exact_loss(prob: Problem, params, xs, coefs, zref_S, w_NxD):
  z = combined_draws(prob.fns, params, xs, coefs, w_NxD)
  return loss_from_draws(prob, z, zref_S, smooth=False)


@functools.partial(jax.jit, static_argnames=("fns",))
def draws(fns: tuple[Sampler, ...], params, xs, coefs, w_NxD) -> jax.Array:
  """Jitted combined posterior draws z_SxN (for summaries on the host)."""
  return combined_draws(fns, params, xs, coefs, w_NxD)


@functools.partial(jax.jit, static_argnames=("prob",))
def exact_loss(prob: Problem, params, xs, coefs, zref_S, w_NxD) -> jax.Array:
  return _exact_loss(prob, params, xs, coefs, zref_S, w_NxD)


def _scored(prob, params, xs, coefs, zref_S, w_CxD, chunk: int) -> jax.Array:
  """Exact losses of many rows, evaluated in chunks (bounded memory) in one call."""
  n = w_CxD.shape[0]
  n_chunks = -(-n // chunk)
  pad = n_chunks * chunk - n
  w_pad = jnp.concatenate([w_CxD, jnp.broadcast_to(w_CxD[:1], (pad, w_CxD.shape[1]))])
  losses = jax.lax.map(
      lambda wc: _exact_loss(prob, params, xs, coefs, zref_S, wc),
      w_pad.reshape(n_chunks, chunk, -1))
  return losses.reshape(-1)[:n]


# ---------------------------------------------------------------- CausalMix-S


@dataclasses.dataclass(frozen=True)
class SearchSettings:
  n_candidates: int = 16_384
  n_starts: int = 64
  n_steps: int = 300
  step_size: float = 1.0  # initial mirror-descent step, in log-weight units
  chunk: int = 2048
  n_keep: int = 8  # best points handed to the exact (host) feasibility step


def candidate_pool(rng: np.random.Generator, ref: np.ndarray, n_random: int,
                   fixed_KxD: np.ndarray) -> np.ndarray:
  """Dirichlet draws around the reference at several concentrations, a flat-Dirichlet
  share, and the fixed points (vertices, edge midpoints, reference, centre, uniform).
  Drawn on the host (cheap) so the jitted search holds no rejection sampler."""
  dn = ref.shape[0]
  base = 0.9 * ref + 0.1 / dn
  conc = np.array([0.0, 0.5, 2.0, 8.0, 32.0]) * dn  # 0 = flat Dirichlet(1)
  group = np.arange(n_random) % conc.shape[0]
  alpha = np.where(conc[group][:, None] > 0, conc[group][:, None] * base, 1.0)
  g = rng.standard_gamma(alpha) + 1e-30
  return np.concatenate([g / g.sum(1, keepdims=True), fixed_KxD]).astype(np.float32)


def fixed_points(dn: int, ref: np.ndarray, centre: np.ndarray) -> np.ndarray:
  eye = np.eye(dn)
  pts = [eye, ref[None], centre[None], np.full((1, dn), 1.0 / dn)]
  if dn <= 64:
    i, j = np.triu_indices(dn, 1)
    pts.append(0.5 * (eye[i] + eye[j]))
  return np.concatenate(pts).astype(np.float32)


@functools.partial(jax.jit, static_argnames=("prob", "settings"))
def search_s(prob: Problem, settings: SearchSettings, params, xs, coefs, cand_CxD, ref_D,
             lo_D, hi_D, c_D, radius) -> tuple[jax.Array, jax.Array]:
  """CausalMix-S in one call: score a large candidate set (`candidate_pool`), start
  mirror descent from the best and some random candidates, keep each start's best
  iterate.

  Returns (w_KxD, loss_K): the n_keep best points (relaxed-feasible) and their losses;
  K = min(n_keep, points searched) when there are fewer starts and candidates than that.
  """
  zref_S = combined_draws(prob.fns, params, xs, coefs, ref_D[None])[:, 0]
  cand = make_feasible_relaxed(prob, cand_CxD, lo_D, hi_D, c_D, ref_D, radius)
  cand_loss = _scored(prob, params, xs, coefs, zref_S, cand, settings.chunk)
  n_top = settings.n_starts - settings.n_starts // 4
  _, top = jax.lax.top_k(-cand_loss, n_top)
  starts = jnp.concatenate([cand[top], cand[:settings.n_starts - n_top]])
  starts = make_feasible_relaxed(prob, 0.98 * starts + 0.02 * c_D, lo_D, hi_D, c_D,
                                 ref_D, radius)
  free_D = (hi_D - lo_D) > 1e-12

  def smooth_loss(w):
    z = combined_draws(prob.fns, params, xs, coefs, w)
    return loss_from_draws(prob, z, zref_S, smooth=True)

  def exact(w):
    z = combined_draws(prob.fns, params, xs, coefs, w)
    return loss_from_draws(prob, z, zref_S, smooth=False)

  grad_fn = jax.grad(lambda w: smooth_loss(w).sum())
  n_steps = settings.n_steps

  def step(carry, t):
    w, best_w, best_l = carry
    g = grad_fn(w)
    g = jnp.where(free_D, g, 0.0)
    n_free = jnp.maximum(free_D.sum(), 1)
    gc = jnp.where(free_D, g - (g.sum(1, keepdims=True) / n_free), 0.0)
    scale = jnp.max(jnp.abs(gc), axis=1, keepdims=True) + 1e-30
    frac = t / n_steps
    eta = settings.step_size * (0.5 * (1 + jnp.cos(jnp.pi * frac)) + 1e-3)
    w_new = w * jnp.exp(-eta * gc / scale)
    w_new = jnp.maximum(w_new, 1e-30)
    w_new = make_feasible_relaxed(prob, w_new / w_new.sum(1, keepdims=True), lo_D, hi_D,
                                  c_D, ref_D, radius)
    l_new = exact(w_new)
    better = l_new < best_l
    best_w = jnp.where(better[:, None], w_new, best_w)
    best_l = jnp.where(better, l_new, best_l)
    return (w_new, best_w, best_l), None

  l0 = exact(starts)
  (_, best_w, best_l), _ = jax.lax.scan(step, (starts, starts, l0),
                                        jnp.arange(n_steps, dtype=jnp.float32))
  all_w = jnp.concatenate([best_w, cand[top[:settings.n_keep]]])
  all_l = jnp.concatenate([best_l, cand_loss[top[:settings.n_keep]]])
  # n_starts descents and at most n_top candidates: fewer than n_keep when n_starts is
  # small (4 starts keep 4 + 3 points).
  _, keep = jax.lax.top_k(-all_l, min(settings.n_keep, all_l.shape[0]))
  return all_w[keep], all_l[keep]


# ---------------------------------------------------------------- CausalMix-A


@functools.partial(jax.jit, static_argnames=("prob", "n_grid"))
def search_a(prob: Problem, params, xs, coefs, ref_D, lo_D, hi_D, c_D, radius,
             n_grid: int = 32) -> tuple[jax.Array, jax.Array, jax.Array]:
  """CausalMix-A: one step from the reference (its feasible centre c) against the
  marginal returns theta = d E[loss] / dw, restricted to the free domains, projected
  onto the feasible set. The step is taken in three closed forms along theta -- the
  Euclidean tangent step c - t (theta - mean theta), the natural (Shahshahani) step
  c - t c * (theta - c . theta), and the mirror (exponentiated) step
  c * exp(-t theta) / Z -- each over a geometric grid of lengths up to the trust radius
  (or the simplex diameter); every point is scored and the best is kept by the caller.

  Returns (w_GxD, loss_G, theta_D) with G = 3 * n_grid + 1 (the first row is c).
  """
  zref_S = combined_draws(prob.fns, params, xs, coefs, ref_D[None])[:, 0]
  mean_prob = dataclasses.replace(prob, objective="mean") if prob.objective == "pi" else prob

  def f(w_D):
    z = combined_draws(prob.fns, params, xs, coefs, w_D[None])
    return loss_from_draws(mean_prob, z, zref_S, smooth=True)[0]

  theta = jax.grad(f)(c_D)
  free_D = (hi_D - lo_D) > 1e-12
  n_free = jnp.maximum(free_D.sum(), 1)
  th = jnp.where(free_D, theta, 0.0)
  unit = lambda v: v / (jnp.abs(v).sum() + 1e-30)  # noqa: E731
  d_euclid = unit(-jnp.where(free_D, th - th.sum() / n_free, 0.0))
  d_natural = unit(-jnp.where(free_D, c_D * (th - jnp.sum(c_D * th)), 0.0))
  g_mirror = th / (jnp.max(jnp.abs(th)) + 1e-30)
  t_max = radius if (prob.has_trust and prob.trust_kind == "l1") else 2.0
  ts = t_max * jnp.geomspace(1e-3, 1.0, n_grid)
  mirror = c_D * jnp.exp(-(8.0 * ts / t_max)[:, None] * g_mirror)
  w = jnp.concatenate([c_D[None], c_D + ts[:, None] * d_euclid,
                       c_D + ts[:, None] * d_natural,
                       mirror / mirror.sum(1, keepdims=True)])
  w = make_feasible_relaxed(prob, w, lo_D, hi_D, c_D, ref_D, radius)
  loss = _exact_loss(prob, params, xs, coefs, zref_S, w)
  return w, loss, theta
