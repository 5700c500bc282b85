"""Mixture features: maps a mixture on the simplex (and, when known, the tokens each
domain has and the training budget) to the real-valued features a surface regresses on.

Two families live here:
- free coordinates of the simplex (D-1 of them): additive log-ratios against a reference
  domain (`alr`) or isometric log-ratios in an explicit orthonormal basis (`ilr`);
- physics features: log weights with a floor (diminishing returns; the floor keeps a
  zero weight finite), square roots, pairwise products of log weights, hinges (a
  domain's weight past fixed shares of the uniform weight: kinks, thresholds and
  saturation that no concave feature bends into), and, when tokens and budget are
  known, repetition (log-epochs beyond one pass).

Everything is a pure function of arrays in the namespace of its inputs (`array_module`):
`jax.numpy` for jax arrays and tracers, so a fitted surface's sampler can evaluate the
features inside `jit`, and plain NumPy for NumPy arrays, so fitting and one-off queries
compile nothing. `FeatureSpec` is the serialisable description.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax.numpy as jnp
import numpy as np

KINDS = ("linear", "log", "sqrt", "pairs", "hinge", "repetition")
# Where the "hinge" kind's kinks sit, as multiples of the uniform weight 1/D: one
# below, one at and one above an even share, whatever the number of domains.
HINGE_KNOTS = (0.5, 1.0, 2.0)


def array_module(*arrays: Any) -> Any:
  """NumPy when every argument is a NumPy array or scalar (or None), else jax.numpy."""
  for a in arrays:
    if a is not None and not isinstance(a, (np.ndarray, np.generic, float, int)):
      return jnp
  return np


def log_weights(w_NxD: jnp.ndarray, floor: float) -> jnp.ndarray:
  """log(w + floor): finite at w = 0, log-like (diminishing returns) above the floor."""
  return array_module(w_NxD).log(w_NxD + floor)


def alr(w_NxD: jnp.ndarray, reference: int = 0, floor: float = 1e-6) -> jnp.ndarray:
  """Additive log-ratios log((w_j + floor) / (w_ref + floor)) for j != reference:
  N x (D-1) free coordinates."""
  lw = log_weights(w_NxD, floor)
  d = w_NxD.shape[-1]
  keep = np.array([j for j in range(d) if j != reference])
  return lw[..., keep] - lw[..., reference:reference + 1]


def helmert_basis(d: int) -> np.ndarray:
  """An explicit D x (D-1) orthonormal basis of the sum-zero subspace (Helmert
  contrasts): column k contrasts domain k+1 against the mean of domains 0..k."""
  if d < 2:
    raise ValueError(f"helmert_basis needs at least 2 domains, got {d}")
  v = np.zeros((d, d - 1))
  for k in range(1, d):
    v[:k, k - 1] = 1.0 / k
    v[k, k - 1] = -1.0
    v[:, k - 1] /= np.linalg.norm(v[:, k - 1])
  return v


def ilr(w_NxD: jnp.ndarray, floor: float = 1e-6) -> jnp.ndarray:
  """Isometric log-ratio coordinates (centred log-ratios in the Helmert basis): N x (D-1)."""
  lw = log_weights(w_NxD, floor)
  return lw @ array_module(w_NxD).asarray(helmert_basis(w_NxD.shape[-1]), lw.dtype)


def from_ilr(z_NxK: jnp.ndarray) -> jnp.ndarray:
  """Inverse of `ilr` (with floor 0): the mixture with these ilr coordinates."""
  v = jnp.asarray(helmert_basis(z_NxK.shape[-1] + 1), z_NxK.dtype)
  clr = z_NxK @ v.T
  e = jnp.exp(clr - clr.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def epochs(w_NxD: jnp.ndarray, tokens_NxD: jnp.ndarray, budget_N: jnp.ndarray
           ) -> jnp.ndarray:
  """Passes over each domain's unique tokens: w * budget / tokens."""
  xp = array_module(w_NxD, tokens_NxD, budget_N)
  return w_NxD * budget_N[..., None] / xp.maximum(tokens_NxD, 1.0)


def hinges(w_NxD: jnp.ndarray) -> jnp.ndarray:
  """relu(w - c / D) for each knot c of HINGE_KNOTS, knot by knot: N x (knots * D)."""
  xp = array_module(w_NxD)
  d = w_NxD.shape[-1]
  return xp.concatenate([xp.maximum(w_NxD - c / d, 0.0) for c in HINGE_KNOTS], axis=1)


def repetition(w_NxD: jnp.ndarray, tokens_NxD: jnp.ndarray, budget_N: jnp.ndarray
               ) -> jnp.ndarray:
  """Share of training spent repeating a domain, weighted by how often it repeats:
  w * relu(log epochs)^2 (0 while a domain is seen at most once)."""
  e = epochs(w_NxD, tokens_NxD, budget_N)
  xp = array_module(e)
  over = xp.maximum(xp.log(xp.maximum(e, 1e-30)), 0.0)
  return w_NxD * over ** 2


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
  """What features a surface uses for the mixture.

  kinds: subset of KINDS, in order. floor: the floor inside the logs. n_domains: D.
  Each kind is a group of columns; groups get separate prior scales in the models."""
  n_domains: int
  kinds: tuple[str, ...] = ("log", "sqrt")
  floor: float = 1e-3

  def __post_init__(self):
    object.__setattr__(self, "kinds", tuple(self.kinds))
    bad = [k for k in self.kinds if k not in KINDS]
    if bad:
      raise ValueError(f"surface features: unknown kind(s) {bad}; known: {list(KINDS)}")
    if not self.kinds:
      raise ValueError("surface features: `kinds` is empty")
    if self.n_domains < 2:
      raise ValueError(f"surface features: need at least 2 domains, got {self.n_domains}")
    if not self.floor > 0:
      raise ValueError(f"surface features: floor must be > 0, got {self.floor}")

  @property
  def needs_tokens(self) -> bool:
    return "repetition" in self.kinds

  def group_sizes(self) -> list[int]:
    d = self.n_domains
    sizes = {"pairs": d * (d - 1) // 2, "hinge": len(HINGE_KNOTS) * d}
    return [sizes.get(k, d) for k in self.kinds]

  @property
  def n_features(self) -> int:
    return sum(self.group_sizes())

  def groups(self) -> np.ndarray:
    """Group index of every feature column (length n_features)."""
    return np.concatenate([np.full(n, g) for g, n in enumerate(self.group_sizes())])

  def names(self, domains: Sequence[str]) -> list[str]:
    if len(domains) != self.n_domains:
      raise ValueError(f"FeatureSpec has {self.n_domains} domains, got {len(domains)}")
    out: list[str] = []
    for k in self.kinds:
      if k == "pairs":
        i, j = np.triu_indices(self.n_domains, 1)
        out += [f"logw_{domains[a]}*logw_{domains[b]}" for a, b in zip(i, j)]
      elif k == "hinge":
        out += [f"hinge{c:g}_{d}" for c in HINGE_KNOTS for d in domains]
      else:
        out += [f"{k}_{d}" for d in domains]
    return out

  def to_dict(self) -> dict[str, Any]:
    return {"n_domains": self.n_domains, "kinds": list(self.kinds), "floor": self.floor}

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "FeatureSpec":
    return cls(int(d["n_domains"]), tuple(d["kinds"]), float(d["floor"]))


def featurize(spec: FeatureSpec, w_NxD: jnp.ndarray, tokens_NxD: jnp.ndarray | None = None,
              budget_N: jnp.ndarray | None = None) -> jnp.ndarray:
  """Mixture features, N x spec.n_features. Pure; jittable for a fixed spec."""
  xp = array_module(w_NxD, tokens_NxD, budget_N)
  w_NxD = xp.asarray(w_NxD)
  if w_NxD.ndim != 2 or w_NxD.shape[1] != spec.n_domains:
    raise ValueError(f"featurize: w must be (N, {spec.n_domains}), got {w_NxD.shape}")
  lw = log_weights(w_NxD, spec.floor)
  cols = []
  for k in spec.kinds:
    if k == "linear":
      cols.append(w_NxD)
    elif k == "log":
      cols.append(lw)
    elif k == "sqrt":
      cols.append(xp.sqrt(xp.maximum(w_NxD, 0.0)))
    elif k == "pairs":
      i, j = np.triu_indices(spec.n_domains, 1)
      cols.append(lw[:, i] * lw[:, j])
    elif k == "hinge":
      cols.append(hinges(w_NxD))
    elif k == "repetition":
      if tokens_NxD is None or budget_N is None:
        raise ValueError("featurize: the 'repetition' feature needs tokens_<domain> "
                         "columns and budget_tokens in the runs table")
      cols.append(repetition(w_NxD, xp.asarray(tokens_NxD, w_NxD.dtype),
                             xp.broadcast_to(xp.asarray(budget_N, w_NxD.dtype),
                                              w_NxD.shape[:1])))
  return xp.concatenate(cols, axis=1)


def default_kinds(tokens_known: bool) -> tuple[str, ...]:
  """The default feature groups: log weights with a floor and square roots (both
  concave, with different curvature near zero), plus repetition when tokens and budget
  are known."""
  return ("log", "sqrt", "repetition") if tokens_known else ("log", "sqrt")
