"""The gradient-boosted-trees family as a surface, for the stack: LightGBM on the mixture
and the pool's covariates, so that held-out stacking can weigh a family that fits kinks,
thresholds and worst cases the smooth families cannot. RegMix's regression settings,
but 100 rounds at learning rate 0.1 instead of 1000 at 0.01: the stack refits the
member on every fold, and the shorter schedule is ten times cheaper with the same
shrinkage budget.

Its draws are its point prediction repeated: the family has no spread of its own, and
the stack's conformal step, fitted on held-out pools after stacking, sets the
intervals' width. Its derivative in the mixture is zero almost everywhere (trees are
piecewise constant): inside the optimiser it moves the candidates' scores and the
tracked best iterate, not the descent direction, and the stack's `theta` carries the
smooth members' slopes only. It reads neither token counts nor budgets, nor the
scale columns: where scales differ, held-out folds keep them apart and weigh the
member by what it predicts there. It reads the raw covariates, not their principal
components, so its "_all" copy is the same model as the aware one.

The companion model may also read each domain's epochs, w * budget / tokens (the
passes over its unique tokens; surface.companion = "trees_epochs"): the trees then
answer for one pool's token counts and budget, given per query or, where none are
given, the sweep's median pool (`epochs_pool`).
"""

from __future__ import annotations

import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from causalmix_jax import artifacts
from causalmix_jax.surface import baselines
from causalmix_jax.surface import features
from causalmix_jax.surface.surface import SurfaceBase

MODEL_FILE = "trees.txt"
ROUNDS = 100
LEARNING_RATE = 0.1


def _booster(design_NxP: np.ndarray, y_N: np.ndarray, seed: int) -> Any:
  import lightgbm as lgb
  params = {**baselines.REGMIX_LGBM_PARAMS, "learning_rate": LEARNING_RATE,
            "seed": int(seed)}
  return lgb.train(params, lgb.Dataset(design_NxP, y_N), num_boost_round=ROUNDS)


def shares(w_NxD: Any) -> np.ndarray:
  """Each row's mixture normalised to shares."""
  w = np.asarray(w_NxD, np.float64)
  return w / np.maximum(w.sum(1, keepdims=True), 1e-300)


def _design(w_NxD: Any, x_NxF: Any, blind: bool,
            epochs_NxD: np.ndarray | None = None) -> np.ndarray:
  """The trees' inputs: each row's mixture as shares, then its covariates unless
  `blind`, then its epochs per domain where given."""
  w = shares(w_NxD)
  x = np.asarray(x_NxF, np.float64).reshape(w.shape[0], -1)
  parts = [w] + ([] if blind or x.shape[1] == 0 else [x])
  if epochs_NxD is not None:
    parts.append(np.asarray(epochs_NxD, np.float64).reshape(w.shape))
  return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)


def epochs_rows(w_NxD: Any, tokens_NxD: Any, budget_N: Any) -> np.ndarray:
  """Passes over each domain's unique tokens per row (`features.epochs` of the
  shares)."""
  return features.epochs(shares(w_NxD), np.asarray(tokens_NxD, np.float64),
                         np.asarray(budget_N, np.float64).reshape(-1))


class TreeSurface(SurfaceBase):
  """A LightGBM regression of the outcome on the mixture (and the covariates, unless
  `blind`), with `n` identical draws: its point prediction."""

  def __init__(self, model_text: str, n: int, blind: bool,
               epochs_pool: tuple[Any, float] | None = None, **kw):
    import lightgbm as lgb
    super().__init__(**kw)
    self.model_text = model_text
    self.booster = lgb.Booster(model_str=model_text)
    self.blind = bool(blind)
    # (tokens_D, budget): the pool the trees answer for when they read epochs and a
    # query names none (the sweep's median pool); None: the trees read no epochs.
    self.epochs_pool = None if epochs_pool is None else (
        np.asarray(epochs_pool[0], np.float64).reshape(-1), float(epochs_pool[1]))
    self._n = int(n)
    self._fn = _sampler(self._host, self._n)

  @property
  def reads_epochs(self) -> bool:
    return self.epochs_pool is not None

  def _epochs(self, w_NxD: Any, tokens: Any, budget: float | None) -> np.ndarray | None:
    """The rows' epochs at the pool (`tokens`, `budget`; the default pool's where
    None), or None for trees that read no epochs."""
    if self.epochs_pool is None:
      return None
    tokens_D = self.epochs_pool[0] if tokens is None else np.asarray(
        tokens, np.float64).reshape(-1)
    budget = self.epochs_pool[1] if budget is None else float(budget)
    if tokens_D.shape != (len(self.domains),) or np.any(~(tokens_D > 0)) or not budget > 0:
      raise ValueError(f"trees with epochs: need {len(self.domains)} positive token "
                       f"counts and a positive budget, got tokens {tokens_D.tolist()}, "
                       f"budget {budget!r}")
    w = np.asarray(w_NxD, np.float64)
    return epochs_rows(w, np.broadcast_to(tokens_D, w.shape), np.full(w.shape[0], budget))

  def point_rows(self, w_NxD: Any, x_NxF: Any, epochs_NxD: Any = None) -> np.ndarray:
    """The prediction of each row's mixture in its own pool (covariates per row, and
    epochs per row for trees that read them)."""
    if self.reads_epochs and epochs_NxD is None:
      raise ValueError("trees with epochs: point_rows needs each row's epochs")
    return self.booster.predict(_design(w_NxD, x_NxF, self.blind,
                                        epochs_NxD if self.reads_epochs else None))

  def _rows(self, x_F: Any, n: int) -> np.ndarray:
    return np.broadcast_to(np.asarray(x_F, np.float64).reshape(1, -1),
                           (n, len(self.features)))

  def point(self, w: Any, x: Any = None, *, tokens: Any = None,
            budget: float | None = None) -> np.ndarray:
    """The trees' prediction at mixtures `w` in the pool with covariates `x` (and, for
    trees that read epochs, unique tokens `tokens` and budget `budget`)."""
    w_NxD = self._w(w)
    return self.point_rows(w_NxD, self._rows(self._x(x), w_NxD.shape[0]),
                           self._epochs(w_NxD, tokens, budget))

  def _host(self, w_NxD: Any, x_F: Any, tokens: Any = None,
            budget: float | None = None) -> np.ndarray:
    w = np.asarray(w_NxD, np.float64)
    return self.point_rows(w, self._rows(x_F, w.shape[0]),
                           self._epochs(w, tokens, budget)).astype(np.float32)

  def sampler(self, tokens: Any = None, budget: float | None = None):
    if not self.reads_epochs or (tokens is None and budget is None):
      return self._fn, {}
    return _sampler(lambda w, x: self._host(w, x, tokens, budget), self._n), {}

  @property
  def n_draws(self) -> int:
    return self._n

  def draws(self, w: Any, x: Any = None, *, tokens: Any = None,
            budget: float | None = None) -> np.ndarray:
    p_N = self.point(w, x, tokens=tokens, budget=budget)
    return np.broadcast_to(p_N[None, :], (self._n, p_N.shape[0])).copy()

  def save(self, directory: str | pathlib.Path) -> pathlib.Path:
    directory = pathlib.Path(directory)
    with artifacts.atomic_path(directory / MODEL_FILE) as tmp:
      tmp.write_text(self.model_text)
    pool = None if self.epochs_pool is None else {
        "tokens": self.epochs_pool[0].tolist(), "budget": self.epochs_pool[1]}
    return artifacts.write_json(directory / "surface.json",
                                {**self.saved_meta("trees"), "blind": self.blind,
                                 "epochs_pool": pool})

  def __repr__(self) -> str:
    return (f"TreeSurface(outcome={self.outcome!r}, {len(self.domains)} domains, "
            f"{0 if self.blind else len(self.features)} covariates, "
            f"{'epochs, ' if self.reads_epochs else ''}"
            f"{self.booster.num_trees()} trees)")


def _sampler(host: Any, n: int):
  """fn(params, w_NxD, x_F) -> n x N identical draws, through a host callback whose
  derivative is declared zero (the trees are piecewise constant), so the optimiser's
  gradient and the jacobian of `theta` pass through it."""

  @jax.custom_jvp
  def point(w_NxD, x_F):
    shape = jax.ShapeDtypeStruct((w_NxD.shape[0],), jnp.float32)
    return jax.pure_callback(host, shape, w_NxD, x_F, vmap_method="sequential")

  @point.defjvp
  def _point_jvp(primals, tangents):
    del tangents
    out = point(*primals)
    return out, jnp.zeros_like(out)

  def fn(params, w_NxD, x_F):
    del params
    p_N = point(w_NxD, x_F)
    return jnp.broadcast_to(p_N[None, :], (n, w_NxD.shape[0]))

  return fn


def fit_trees(w_NxD: np.ndarray, x_NxF: np.ndarray, y_N: np.ndarray, *, n: int,
              blind: bool, seed: int, epochs_NxD: np.ndarray | None = None,
              epochs_pool: tuple[Any, float] | None = None,
              **surface_kw: Any) -> TreeSurface:
  """Fits the trees on the rows given (mixtures normalised to shares; with each row's
  epochs as more inputs where `epochs_NxD` is given, and then `epochs_pool`, the pool
  a query without tokens answers for, is required) and returns the member;
  `surface_kw` are SurfaceBase's keyword arguments (domains, features, ...)."""
  if (epochs_NxD is None) != (epochs_pool is None):
    raise ValueError("fit_trees: epochs_NxD and epochs_pool go together")
  t0 = time.time()
  design = _design(w_NxD, x_NxF, blind, epochs_NxD)
  booster = _booster(design, np.asarray(y_N, np.float64), seed)
  info = dict(surface_kw.pop("info", None) or {})
  if "noise_sd" not in info:  # in-sample residuals, unless the caller has held-out ones
    info["noise_sd"] = float(np.std(np.asarray(y_N, np.float64) - booster.predict(design)))
  info.update(method="trees", inference="point (no spread of its own)",
              n_runs=int(len(y_N)), trees=int(booster.num_trees()),
              covariates="none" if blind else "all",
              epochs=epochs_NxD is not None, fit_seconds=time.time() - t0)
  return TreeSurface(booster.model_to_string(), n, blind, epochs_pool, info=info,
                     **surface_kw)


def load(directory: pathlib.Path, meta: dict[str, Any]) -> TreeSurface:
  """Reads a tree member written by `TreeSurface.save`."""
  path = directory / MODEL_FILE
  if not path.exists():
    raise FileNotFoundError(f"tree surface model not found: {path}")
  pool = meta.get("epochs_pool")
  return TreeSurface(path.read_text(), int(meta["n_draws"]), bool(meta["blind"]),
                     None if pool is None else (pool["tokens"], pool["budget"]),
                     **SurfaceBase.saved_kwargs(meta))

