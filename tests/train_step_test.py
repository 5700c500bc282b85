"""Tests of the pure train/eval steps: golden loss after one step, accumulation,
per-domain reductions, vmap equivalence, optimiser schedule, eval step."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from causalmix_jax import losses
from causalmix_jax import optim
from causalmix_jax import train_step as ts
from causalmix_jax.configs import model as model_cfgs

# Its module-level fixtures and caches are built once: one xdist worker runs it all.
pytestmark = pytest.mark.xdist_group("train_step")

N_DOMAINS = 3


def tiny_model() -> ml_collections.ConfigDict:
  c = model_cfgs.model_preset("tiny")
  c.vocab_size, c.seq_len = 32, 8
  return c


def tiny_optim(**kw) -> ml_collections.ConfigDict:
  c = model_cfgs.optim_section(lr=1e-2, steps=10, batch_size=4)
  c.update(kw)
  return c


def fixed_batch(b: int = 4, seq_len: int = 8) -> dict[str, np.ndarray]:
  """Deterministic batch: domain d uses tokens 10*d .. 10*d+9; one row half-masked."""
  rng = np.random.default_rng(0)
  domain = np.arange(b, dtype=np.int32) % N_DOMAINS
  tokens = (rng.integers(0, 10, (b, seq_len + 1)) + 10 * domain[:, None]).astype(np.int32)
  mask = np.ones_like(tokens, np.uint8)
  mask[0, : seq_len // 2] = 0  # labels 1..3 of row 0 do not count
  return {"tokens": tokens, "mask": mask, "domain": domain}


@functools.lru_cache(maxsize=None)
def jitted_step(grad_accum: int = 1):
  """The jitted unsharded train step of the tiny setup, compiled once per process."""
  opt = tiny_optim(grad_accum=grad_accum)
  return jax.jit(ts.make_train_step(tiny_model(), opt, N_DOMAINS))


@functools.lru_cache(maxsize=None)
def jitted_init(grad_accum: int = 1):
  """The jitted `init_train_state` of the tiny setup (eager init dispatches op by op)."""
  opt = tiny_optim(grad_accum=grad_accum)
  return jax.jit(lambda k: ts.init_train_state(tiny_model(), opt, k))


# Golden values for the tiny config above (model "tiny" with vocab 32, seq_len 8; AdamW
# lr 1e-2, batch `fixed_batch()`, init key 0). They change whenever the model's
# initialisation or architecture, the loss or the optimiser changes on purpose. To update,
# run `python -m pytest tests/train_step_test.py -k golden -s` and copy the printed values.
GOLDEN_LOSS_STEP0 = 3.4862316
GOLDEN_LOSS_STEP1 = 2.1249671


def test_golden_loss_after_one_step():
  state = jitted_init()(jax.random.key(0))
  step = jitted_step()
  batch = fixed_batch()
  state, m0 = step(state, batch)
  state, m1 = step(state, batch)
  print(f"GOLDEN_LOSS_STEP0 = {float(m0['loss']):.7f}\nGOLDEN_LOSS_STEP1 = "
        f"{float(m1['loss']):.7f}")
  assert int(state.step) == 2
  np.testing.assert_allclose(float(m0["loss"]), GOLDEN_LOSS_STEP0, rtol=1e-5)
  np.testing.assert_allclose(float(m1["loss"]), GOLDEN_LOSS_STEP1, rtol=1e-5)
  # Per-domain sums add up to the batch loss; counts follow the mask.
  np.testing.assert_allclose(float(m0["loss_sum_D"].sum() / m0["count_D"].sum()),
                             float(m0["loss"]), rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(m0["count_D"]), [(8 - 3) + 8, 8, 8])


def test_grad_accumulation_matches_one_big_batch():
  batch = fixed_batch()
  key = jax.random.key(0)
  outs = []
  for accum in (1, 2):
    state = jitted_init()(key)  # grad_accum does not change the initial state
    state, m = jitted_step(accum)(state, batch)
    outs.append((state, m))
  (s1, m1), (s2, m2) = outs
  np.testing.assert_allclose(float(m1["loss"]), float(m2["loss"]), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(m1["loss_sum_D"]), np.asarray(m2["loss_sum_D"]),
                             rtol=1e-5)
  for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s2.params)):
    # Relative norm: Adam magnifies float noise on entries whose gradient is ~0.
    a, b = np.asarray(a), np.asarray(b)
    assert np.linalg.norm(a - b) <= 1e-5 * np.linalg.norm(b)


def test_vmapped_init_and_steps_equal_sequential():
  model_cfg, opt = tiny_model(), tiny_optim()
  keys = jax.random.split(jax.random.key(5), 2)
  step = ts.make_train_step(model_cfg, opt, N_DOMAINS)
  states = jax.jit(jax.vmap(lambda k: ts.init_train_state(model_cfg, opt, k)))(keys)
  batch = fixed_batch()
  _, mv = jax.jit(jax.vmap(step, in_axes=(0, None)))(states, batch)
  for i in range(2):
    one = jitted_init()(keys[i])
    for a, b in zip(jax.tree.leaves(states.params), jax.tree.leaves(one.params)):
      np.testing.assert_array_equal(np.asarray(a[i]), np.asarray(b))
    _, m = jitted_step()(one, batch)
    np.testing.assert_allclose(float(mv["loss"][i]), float(m["loss"]), rtol=1e-6)


def test_eval_step_matches_train_metrics_before_update():
  model_cfg = tiny_model()
  state = jitted_init()(jax.random.key(0))
  batch = fixed_batch()
  ev = jax.jit(ts.make_eval_step(model_cfg, N_DOMAINS))(state.params, batch)
  _, m = jitted_step()(state, batch)
  np.testing.assert_allclose(np.asarray(ev["loss_sum_D"]), np.asarray(m["loss_sum_D"]),
                             rtol=1e-5)
  np.testing.assert_array_equal(np.asarray(ev["count_D"]), np.asarray(m["count_D"]))


def test_masked_xent_ignores_masked_tokens_and_matches_manual():
  logits = jax.random.normal(jax.random.key(0), (2, 3, 5))
  labels = jnp.array([[1, 2, 3], [4, 0, 1]])
  weight = jnp.array([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
  s_B, c_B = losses.masked_xent_sums(logits, labels, weight)
  logp = jax.nn.log_softmax(logits)
  manual = -(logp[0, 0, 1] + logp[0, 2, 3])
  np.testing.assert_allclose(float(s_B[0]), float(manual), rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(c_B), [2.0, 2.0])
  d = losses.per_domain(jnp.array([1.0, 2.0, 4.0]), jnp.array([0, 2, 2]), 3)
  np.testing.assert_array_equal(np.asarray(d), [1.0, 0.0, 6.0])


def test_schedule_warmup_then_cosine_to_floor():
  opt = tiny_optim(lr=1.0, min_lr_ratio=0.1, warmup_steps=4, steps=20)
  sched = optim.learning_rate_schedule(opt)
  lrs = np.array([float(sched(i)) for i in range(21)])
  np.testing.assert_allclose(lrs[0], 0.25)
  np.testing.assert_allclose(lrs[4], 1.0)
  assert np.all(np.diff(lrs[:5]) > 0) and np.all(np.diff(lrs[4:]) <= 1e-7)
  np.testing.assert_allclose(lrs[20], 0.1, rtol=1e-6)


def test_accumulation_needs_divisible_batch():
  opt = tiny_optim(grad_accum=3)
  state = jax.eval_shape(lambda k: ts.init_train_state(tiny_model(), opt, k),
                         jax.random.key(0))
  with pytest.raises(ValueError, match="grad_accum"):
    jax.eval_shape(ts.make_train_step(tiny_model(), opt, N_DOMAINS), state, fixed_batch())
