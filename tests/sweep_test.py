"""Tests of the vmapped, sharded proxy sweep: batched == alone, sharded == unsharded,
divergence recording, and the runs table it writes."""

from __future__ import annotations

import dataclasses
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from causalmix_jax import interventions  # noqa: E402
from causalmix_jax import sweep  # noqa: E402
from causalmix_jax.configs import base  # noqa: E402
from causalmix_jax.data import pool as pool_lib  # noqa: E402
from causalmix_jax.data import token_pool  # noqa: E402

# Its module-level fixtures and caches are built once: one xdist worker runs it all.
pytestmark = pytest.mark.xdist_group("sweep")

DOMAINS = ["code", "digits", "prose"]  # canonical (sorted) order


def make_pool(seed: int = 0) -> pool_lib.Pool:
  """Three domains with very different byte statistics, plus held-out and target text."""
  rng = np.random.default_rng(seed)
  alphabets = {"code": list("{}();=abcxyz_ \n"), "prose": list("the quick brown fox "),
               "digits": list("0123456789+-")}

  def docs(d, k, n):
    return ["".join(rng.choice(alphabets[d], n)) for _ in range(k)]

  pool = pool_lib.from_documents({d: docs(d, 30, 200) for d in DOMAINS},
                                 docs("prose", 3, 200) + docs("digits", 3, 200))
  held = pool_lib.from_documents({d: docs(d, 3, 200) for d in DOMAINS}, ["x"])
  return dataclasses.replace(pool, heldout=held.train, heldout_mask=held.train_mask,
                             heldout_doc_starts=held.doc_starts)


def make_cfg(**sweep_kw):
  cfg = base.get_config("smoke")
  cfg.unlock()
  cfg.proxy.optim.steps = 12
  cfg.proxy.optim.batch_size = 4
  cfg.proxy.model.seq_len = 16
  cfg.design.state_per_mixture = False
  cfg.design.n_mixtures = 4
  cfg.design.seeds = 2
  cfg.sweep.chunk_size = 6
  cfg.sweep.eval_batches = 1
  cfg.sweep.progress = False
  for k, v in sweep_kw.items():
    cfg.sweep[k] = v
  return cfg


def make_design(cfg, pool):
  full = np.array([len(pool.train[d]) for d in DOMAINS])
  n = np.stack([full, full // np.array([4, 1, 1])])
  r = np.array([[0, 0, 0], [0, 0.5, 0]], np.float32)
  design = interventions.build_design(cfg, DOMAINS, n, r)
  meta = {"domains": DOMAINS, "states": [
      {"name": "full", "covariates": {"x_size": 1.0}},
      {"name": "shifted", "covariates": {"x_size": 0.5}}]}
  return design, meta


@pytest.fixture(scope="module")
def world():
  cfg = make_cfg()
  pool = make_pool()
  tp = token_pool.from_pool(pool, seq_len=16, eval_batch_size=4, eval_batches=1)
  design, meta = make_design(cfg, pool)
  # Intervention 1 repeats intervention 0's mixture (for the common-random-numbers test).
  assert design["state_N"][2] == design["state_N"][0] == 0
  design["w_NxD"][2:4] = design["w_NxD"][0:2]
  model_cfg = sweep.proxy_model_config(cfg, pool.vocab_size)
  mesh1 = sweep.proxy_mesh(jax.devices()[:1])
  fn = sweep.make_sweep_fn(cfg, model_cfg, len(DOMAINS), mesh1)
  n_runs = len(design["run_id_N"])
  s = design["state_N"]
  out = jax.device_get(fn(tp.device_arrays(), design["seed_N"].astype(np.int32),
                          design["w_NxD"].astype(np.float32),
                          design["n_tokens_SxD"][s].astype(np.int32),
                          design["dup_rate_SxD"][s]))
  assert out["loss_T"].shape == (n_runs, 12)
  return dict(cfg=cfg, pool=pool, tp=tp, design=design, meta=meta, model_cfg=model_cfg,
              out=out)


def test_proxy_in_vmapped_batch_matches_proxy_trained_alone(world):
  """Tolerance: 1e-5 absolute on every step's loss (float32, same program up to
  batching; on CPU they are usually bit-identical)."""
  cfg, tp, design = world["cfg"], world["tp"], world["design"]
  train = sweep.make_train(cfg, tp, vocab_size=world["pool"].vocab_size)
  i = 5  # state 1 (scarce + duplicated domain), seed replicate 1
  s = design["state_N"][i]
  alone = jax.device_get(jax.jit(train)(
      sweep.run_key(cfg.seed, design["seed_N"][i]), design["w_NxD"][i].astype(np.float32),
      design["n_tokens_SxD"][s].astype(np.int32), design["dup_rate_SxD"][s]))
  batched = world["out"]
  np.testing.assert_allclose(alone["loss_T"], batched["loss_T"][i], atol=1e-5, rtol=0)
  np.testing.assert_allclose(alone["heldout_D"], batched["heldout_D"][i], atol=1e-5)
  np.testing.assert_allclose(alone["target"], batched["target"][i], atol=1e-5)
  # Training happened and depends on the mixture.
  assert batched["loss_T"][:, -1].mean() < batched["loss_T"][:, 0].mean() - 0.2
  assert np.ptp(batched["target"]) > 1e-3


def test_common_random_numbers_key_depends_on_seed_replicate_only(world):
  """Runs 0 and 2 (interventions 0 and 1, replicate 0) were given the same mixture and
  state: with common random numbers they are the same proxy, bit for bit, although
  they sit at different places in the batch; replicate 1 of the same mixture differs."""
  out = world["out"]
  np.testing.assert_array_equal(out["loss_T"][0], out["loss_T"][2])
  np.testing.assert_array_equal(out["loss_T"][1], out["loss_T"][3])
  assert np.abs(out["loss_T"][0] - out["loss_T"][1]).max() > 1e-4


@pytest.mark.skipif(jax.device_count() < 4, reason="needs 4 (fake) devices")
def test_sharded_sweep_equals_unsharded_and_records_divergence(world, tmp_path):
  cfg, out, design = world["cfg"], world["out"], world["design"]
  # Threshold between runs: the worse half of runs (by their largest loss) diverge.
  final = out["loss_T"][:, -1]
  worst = np.max(np.concatenate([final[:, None], out["heldout_D"], out["target"][:, None]],
                                axis=1), axis=1)
  threshold = float(np.median(worst))
  cfg.sweep.divergence_loss = threshold
  mesh4 = sweep.proxy_mesh(jax.devices()[:4])
  path = sweep.run_sweep(cfg, world["tp"], design, world["meta"], tmp_path,
                         vocab_size=world["pool"].vocab_size, mesh=mesh4)
  frame = pd.read_parquet(path)
  assert sorted(frame["run_id"]) == sorted(design["run_id_N"].tolist())
  assert (tmp_path / "runs.csv").exists()
  frame = frame.set_index("run_id").loc[design["run_id_N"]]
  np.testing.assert_allclose(frame["train_loss_final"], final, atol=1e-5)
  should_diverge = (final > threshold) | (out["target"] > threshold) | np.any(
      out["heldout_D"] > threshold, axis=1)
  assert 0 < should_diverge.sum() < len(final)
  np.testing.assert_array_equal(frame["status"] == "diverged", should_diverge)
  ok = ~should_diverge
  np.testing.assert_allclose(frame["y_target"][ok], out["target"][ok], atol=1e-5)
  for j, d in enumerate(DOMAINS):
    np.testing.assert_allclose(frame[f"y_{d}"][ok], out["heldout_D"][ok, j], atol=1e-5)
    assert frame[f"y_{d}"][~ok].isna().all()
  assert frame["y_target"][~ok].isna().all()
  # Covariates and token counts follow each run's pool state.
  s = design["state_N"]
  np.testing.assert_array_equal(frame["x_size"], np.where(s == 0, 1.0, 0.5))
  np.testing.assert_array_equal(frame["tokens_code"], design["n_tokens_SxD"][s, 0])
  assert (frame["budget_tokens"] == 12 * 4 * 16).all()
  # 16 runs in chunks of 6: three chunk files.
  assert len(list((tmp_path / "chunks").glob("chunk_*.parquet"))) == 3


def test_nan_outputs_are_recorded_as_diverged(world):
  design, meta = world["design"], world["meta"]
  out = {k: np.array(v) for k, v in world["out"].items()}
  out["loss_T"][1, -1] = np.nan
  out["target"][2] = np.inf
  frame = sweep.chunk_frame(np.arange(4), out, design, meta, params=10, threshold=1e3)
  assert frame["status"].tolist() == ["ok", "diverged", "diverged", "ok"]
  assert frame["y_target"].isna().tolist() == [False, True, True, False]


def test_grouped_sweep_equals_plain_vmap(world):
  """Runs trained 4 at a time in lockstep (lax.map over groups of a vmap) give the same
  losses as the default width; tolerance 1e-5 absolute."""
  cfg = make_cfg(vmap_width=4)
  design, tp = world["design"], world["tp"]
  fn = sweep.make_sweep_fn(cfg, world["model_cfg"], len(DOMAINS),
                           sweep.proxy_mesh(jax.devices()[:1]))
  s = design["state_N"]
  out = jax.device_get(fn(tp.device_arrays(), design["seed_N"].astype(np.int32),
                          design["w_NxD"].astype(np.float32),
                          design["n_tokens_SxD"][s].astype(np.int32),
                          design["dup_rate_SxD"][s]))
  for k in ("loss_T", "heldout_D", "target"):
    np.testing.assert_allclose(out[k], world["out"][k], atol=1e-5, rtol=0)


def test_group_width_divides_runs_and_devices():
  cfg = make_cfg(vmap_width=0)
  assert sweep.group_width(cfg, 32, 4, "cpu") == 32
  assert sweep.group_width(cfg, 256, 1, "cpu") == sweep.CPU_RUNS_PER_DEVICE
  assert sweep.group_width(cfg, 256, 4, "cpu") == 4 * sweep.CPU_RUNS_PER_DEVICE
  assert sweep.group_width(cfg, 256, 4, "gpu") == 256
  with pytest.raises(ValueError, match="vmap_width"):
    sweep.group_width(make_cfg(vmap_width=-1), 8, 1, "cpu")
  with pytest.raises(ValueError, match="divide"):
    sweep.group_width(cfg, 6, 4, "cpu")
  cfg = make_cfg(vmap_width=12)
  assert sweep.group_width(cfg, 32, 4, "cpu") == 8  # largest divisor of 32, <= 12, 4 | w
  assert sweep.group_width(cfg, 6, 1, "cpu") == 6
