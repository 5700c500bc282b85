"""A planted-truth synthetic world for testing response surfaces: pools described by
covariates x whose best mixture moves with x, sweeps whose mixtures are drawn around
x-dependent token shares (confounded), and exact effects to score estimates against.

The outcome is a loss (lower is better):

  f(w, x) = base(x) + sum_d a_d(x) * -log(eps + w_d)
            + rho * sum_d w_d * relu(log e_d)^2,

  base(x)  = c0 + u . x                       (x moves the outcome directly)
  a_d(x)   = scale * softplus(a0_d + B_d . x) (value of domain d in pool x)
  s(x)     = softmax(b + A x)                 (the pool's token shares)
  tokens_d = T0 * exp(0.3 x_0) * s_d(x),  e_d = w_d * budget / tokens_d (epochs)

so returns diminish (log), repeating a scarce domain costs (the share of training spent
on repeats times squared log-epochs beyond one), and the
sweep's prior (token shares) depends on x, which also moves y: a regression of y on w
alone is confounded.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from causalmix_jax.runs import Runs


class PlantedWorld:
  """A deterministic synthetic world (by `seed`) with a known outcome function."""

  def __init__(self, n_domains: int = 5, n_features: int = 3, seed: int = 0, *,
               eps: float = 1e-3, value_scale: float = 0.15, repetition: float = 0.1,
               tokens_total: float = 1e9, budget_tokens: float = 5e8):
    if n_domains < 2 or n_features < 1:
      raise ValueError("PlantedWorld needs n_domains >= 2 and n_features >= 1")
    self.n_domains, self.n_features, self.seed = n_domains, n_features, seed
    self.domains = [f"d{i}" for i in range(n_domains)]
    self.features = [f"f{i}" for i in range(n_features)]
    rng = np.random.default_rng(seed)
    D, F = n_domains, n_features
    self.params = {
        "c0": np.float32(3.5),
        "u_F": rng.normal(0.0, 0.15, F).astype(np.float32),
        "a0_D": rng.normal(0.0, 0.5, D).astype(np.float32),
        "B_DxF": rng.normal(0.0, 0.8, (D, F)).astype(np.float32),
        "b_D": rng.normal(0.0, 0.7, D).astype(np.float32),
        "A_DxF": rng.normal(0.0, 0.6, (D, F)).astype(np.float32),
    }
    self.eps, self.value_scale, self.repetition = eps, value_scale, repetition
    self.tokens_total, self.budget_tokens = tokens_total, budget_tokens
    self._rng_seed = seed

  # -- the truth ------------------------------------------------------------------------
  def token_shares(self, x_NxF: np.ndarray) -> np.ndarray:
    """s(x): the pool's token shares, N x D (the sweep's prior mixture)."""
    x = np.atleast_2d(np.asarray(x_NxF, np.float64))
    logits = self.params["b_D"].astype(np.float64) + x @ self.params["A_DxF"].T.astype(
        np.float64)
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)

  def tokens(self, x_NxF: np.ndarray) -> np.ndarray:
    """Unique tokens per domain, N x D."""
    x = np.atleast_2d(np.asarray(x_NxF, np.float64))
    return self.tokens_total * np.exp(0.3 * x[:, :1]) * self.token_shares(x)

  def _f(self, w_D: jax.Array, x_F: jax.Array) -> jax.Array:
    p = self.params
    base = p["c0"] + x_F @ p["u_F"]
    value_D = self.value_scale * jax.nn.softplus(p["a0_D"] + p["B_DxF"] @ x_F)
    shares_D = jax.nn.softmax(p["b_D"] + p["A_DxF"] @ x_F)
    tokens_D = self.tokens_total * jnp.exp(0.3 * x_F[0]) * shares_D
    epochs_D = w_D * self.budget_tokens / tokens_D
    over_D = jax.nn.relu(jnp.log(jnp.maximum(epochs_D, 1e-30)))
    penalty = self.repetition * jnp.sum(w_D * over_D ** 2)
    return base + jnp.sum(value_D * -jnp.log(self.eps + w_D)) + penalty

  @functools.cached_property
  def _grad_rows(self):
    return jax.jit(jax.vmap(jax.grad(self._f, argnums=0)))

  def _rows(self, w: np.ndarray, x: np.ndarray) -> tuple[jax.Array, jax.Array]:
    w = np.atleast_2d(np.asarray(w, np.float32))
    x = np.atleast_2d(np.asarray(x, np.float32))
    if w.shape[1] != self.n_domains or x.shape[1] != self.n_features:
      raise ValueError(f"w must be (N, {self.n_domains}) and x (N, {self.n_features}); "
                       f"got {w.shape} and {x.shape}")
    n = max(w.shape[0], x.shape[0])
    return (jnp.asarray(np.broadcast_to(w, (n, w.shape[1]))),
            jnp.asarray(np.broadcast_to(x, (n, x.shape[1]))))

  def _f_np(self, w_NxD: np.ndarray, x_NxF: np.ndarray) -> np.ndarray:
    """f in float64 numpy, row-wise (the same formula as `_f`)."""
    p = {k: np.asarray(v, np.float64) for k, v in self.params.items()}
    base_N = p["c0"] + x_NxF @ p["u_F"]
    value_NxD = self.value_scale * np.logaddexp(0.0, p["a0_D"] + x_NxF @ p["B_DxF"].T)
    logits_NxD = p["b_D"] + x_NxF @ p["A_DxF"].T
    logits_NxD = logits_NxD - logits_NxD.max(-1, keepdims=True)
    shares_NxD = np.exp(logits_NxD) / np.exp(logits_NxD).sum(-1, keepdims=True)
    tokens_NxD = self.tokens_total * np.exp(0.3 * x_NxF[:, :1]) * shares_NxD
    epochs_NxD = w_NxD * self.budget_tokens / tokens_NxD
    over_NxD = np.maximum(np.log(np.maximum(epochs_NxD, 1e-300)), 0.0)
    penalty_N = self.repetition * np.sum(w_NxD * over_NxD ** 2, axis=-1)
    return base_N + np.sum(value_NxD * -np.log(self.eps + w_NxD), axis=-1) + penalty_N

  def _rows64(self, w: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    w = np.atleast_2d(np.asarray(w, np.float64))
    x = np.atleast_2d(np.asarray(x, np.float64))
    if w.shape[1] != self.n_domains or x.shape[1] != self.n_features:
      raise ValueError(f"w must be (N, {self.n_domains}) and x (N, {self.n_features}); "
                       f"got {w.shape} and {x.shape}")
    n = max(w.shape[0], x.shape[0])
    return np.broadcast_to(w, (n, w.shape[1])), np.broadcast_to(x, (n, x.shape[1]))

  def true_outcome(self, w_NxD: np.ndarray, x_NxF: np.ndarray) -> np.ndarray:
    """Expected outcome f(w, x) (no noise), length N (rows broadcast)."""
    return self._f_np(*self._rows64(w_NxD, x_NxF))

  def true_effect(self, w_NxD: np.ndarray, w_ref: np.ndarray,
                  x_NxF: np.ndarray) -> np.ndarray:
    """The CATE f(w, x) - f(w_ref, x), length N."""
    w, x = self._rows64(w_NxD, x_NxF)
    wr = np.broadcast_to(np.atleast_2d(np.asarray(w_ref, np.float64)), w.shape)
    return self._f_np(w, x) - self._f_np(wr, x)

  def true_gradient(self, w_NxD: np.ndarray, x_NxF: np.ndarray) -> np.ndarray:
    """Euclidean gradient of f with respect to w (N x D)."""
    return np.asarray(self._grad_rows(*self._rows(w_NxD, x_NxF)), np.float64)

  def directional_derivative(self, w_NxD: np.ndarray, v_NxD: np.ndarray,
                             x_NxF: np.ndarray) -> np.ndarray:
    """Derivative of f along direction v at w (v should sum to 0 to stay on the
    simplex), length N."""
    g = self.true_gradient(w_NxD, x_NxF)
    return np.sum(g * np.broadcast_to(np.asarray(v_NxD, np.float64), g.shape), axis=-1)

  def true_theta(self, x: np.ndarray, w_ref: np.ndarray | None = None) -> np.ndarray:
    """Marginal return of each domain at pool x: the derivative of f along e_d - w_ref
    (mass moved into d from all domains proportionally), at w_ref (default: the pool's
    token shares, the sweep's prior). Returns length D for one x, N x D for N rows."""
    x2 = np.atleast_2d(np.asarray(x, np.float64))
    w0 = self.token_shares(x2) if w_ref is None else np.broadcast_to(
        np.atleast_2d(np.asarray(w_ref, np.float64)), (x2.shape[0], self.n_domains))
    g = self.true_gradient(w0, x2)
    theta = g - np.sum(g * w0, axis=-1, keepdims=True)
    return theta[0] if np.ndim(x) == 1 else theta

  def true_theta_logratio(self, x: np.ndarray,
                          w_ref: np.ndarray | None = None) -> np.ndarray:
    """Gradient of f in the D-1 log-ratio coordinates z_j = log(w_j / w_0), j >= 1,
    at w_ref (default token shares): d f / d z_j = w_j (g_j - w . g)."""
    x2 = np.atleast_2d(np.asarray(x, np.float64))
    w0 = self.token_shares(x2) if w_ref is None else np.broadcast_to(
        np.atleast_2d(np.asarray(w_ref, np.float64)), (x2.shape[0], self.n_domains))
    g = self.true_gradient(w0, x2)
    out = (w0 * (g - np.sum(g * w0, axis=-1, keepdims=True)))[:, 1:]
    return out[0] if np.ndim(x) == 1 else out

  @functools.cached_property
  def _solve(self):
    grad = jax.grad(self._f, argnums=0)
    steps = 1500

    def solve_one(x_F):
      def body(carry, t):
        w, best_w, best_v = carry
        g = grad(w, x_F)
        gc = g - jnp.sum(g * w)
        lr = 0.5 / (1.0 + t / 150.0) / (jnp.max(jnp.abs(gc)) + 1e-9)
        w_new = w * jnp.exp(-lr * gc)
        w_new = w_new / jnp.sum(w_new)
        v = self._f(w_new, x_F)
        better = v < best_v
        return (w_new, jnp.where(better, w_new, best_w),
                jnp.where(better, v, best_v)), None

      w0 = jnp.full((self.n_domains,), 1.0 / self.n_domains, jnp.float32)
      init = (w0, w0, self._f(w0, x_F))
      (_, best_w, _), _ = jax.lax.scan(body, init, jnp.arange(steps, dtype=jnp.float32))
      return best_w

    return jax.jit(jax.vmap(solve_one))

  def best_mixture(self, x: np.ndarray) -> np.ndarray:
    """The mixture minimising f at pool x (mirror descent on the simplex; f is convex in
    w). Length D for one x, N x D for N rows."""
    x2 = np.atleast_2d(np.asarray(x, np.float32))
    w = np.asarray(self._solve(jnp.asarray(x2)), np.float64)
    w = w / w.sum(-1, keepdims=True)
    return w[0] if np.ndim(x) == 1 else w

  def regret(self, w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """f(w, x) - f(best_mixture(x), x) >= 0, per row."""
    x2 = np.atleast_2d(np.asarray(x, np.float64))
    return self.true_outcome(w, x2) - self.true_outcome(self.best_mixture(x2), x2)

  # -- sweeps and new pools ---------------------------------------------------------------
  def pool_states(self, n: int, seed: int | None = None) -> np.ndarray:
    """n pool covariate vectors drawn from the sweep's distribution (standard normal)."""
    rng = np.random.default_rng([self.seed, 1 if seed is None else 2 + seed])
    return rng.standard_normal((n, self.n_features))

  def sample_sweep(self, n_runs: int = 256, n_pool_states: int = 8,
                   seeds: int | Sequence[int] = 1, noise: float = 0.01,
                   confounding: float = 1.0, strength: tuple[float, float] = (0.5, 5.0),
                   sample_seed: int = 0) -> Runs:
    """A proxy sweep: n_runs mixtures over n_pool_states pools, each run at every seed.

    Mixtures are Dirichlet(prior(x) * c), c log-uniform in `strength`, with prior(x)
    proportional to token_shares(x) ** confounding (0: uniform, no confounding).
    Outcomes are f(w, x) + noise * N(0, 1), independently per (run, seed). Columns:
    run_id, seed, pool_state, w_d*, x_f*, tokens_d*, budget_tokens, y_loss."""
    seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    if not seed_list or n_runs < 1 or n_pool_states < 1:
      raise ValueError("sample_sweep needs n_runs >= 1, n_pool_states >= 1, a seed")
    rng = np.random.default_rng([self.seed, 1000 + sample_seed])
    xs = self.pool_states(n_pool_states, seed=sample_seed)
    state = np.arange(n_runs) % n_pool_states
    x = xs[state]
    prior = self.token_shares(xs).astype(np.float64) ** confounding
    prior = prior / prior.sum(-1, keepdims=True)
    c = np.exp(rng.uniform(np.log(strength[0]), np.log(strength[1]), (n_runs, 1)))
    g = rng.standard_gamma(prior[state] * c)
    g = np.where(g.sum(-1, keepdims=True) > 0, g, 1.0)
    w = g / g.sum(-1, keepdims=True)
    w = np.maximum(w, 0.0)
    w = w / w.sum(-1, keepdims=True)
    mean = self.true_outcome(w, x)
    tokens = self.tokens(x)
    rows = []
    for s in seed_list:
      eps = np.random.default_rng([self.seed, 2000 + sample_seed, s]).standard_normal(n_runs)
      frame = pd.DataFrame({"run_id": [f"planted-{i:05d}-s{s}" for i in range(n_runs)],
                            "seed": np.full(n_runs, s, np.int64),
                            "pool_state": state})
      for j, d in enumerate(self.domains):
        frame[f"w_{d}"] = w[:, j]
      for k, f in enumerate(self.features):
        frame[f"x_{f}"] = x[:, k]
      for j, d in enumerate(self.domains):
        frame[f"tokens_{d}"] = tokens[:, j]
      frame["budget_tokens"] = self.budget_tokens
      frame["y_loss"] = mean + noise * eps
      rows.append(frame)
    return Runs(pd.concat(rows, ignore_index=True),
                source=f"planted(seed={self.seed}, D={self.n_domains}, "
                       f"F={self.n_features})",
                meta={"format": "planted", "confounding": confounding, "noise": noise})

  def shifted_pools(self, n: int, outside_fraction: float = 0.5,
                    radius: tuple[float, float] = (3.0, 4.0),
                    seed: int = 0) -> np.ndarray:
    """n new pool covariate vectors: the first (1 - outside_fraction) drawn like the
    sweep's pools, the rest at norm in `radius` (outside the sweep's support)."""
    rng = np.random.default_rng([self.seed, 3000 + seed])
    n_out = int(round(n * outside_fraction))
    inside = rng.standard_normal((n - n_out, self.n_features))
    direction = rng.standard_normal((n_out, self.n_features))
    direction /= np.linalg.norm(direction, axis=-1, keepdims=True)
    r = rng.uniform(radius[0], radius[1], (n_out, 1))
    return np.concatenate([inside, direction * r], axis=0)
