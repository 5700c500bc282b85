"""Tests of the target loop and stage: exact resume after an interruption (each step
logged once), NaN stop that keeps the last good checkpoint, refusal of a stale
checkpoint, mixture reading, and the stage end to end on a small real pool with the
grain mixture."""

from __future__ import annotations

import json
import pathlib
import re

import numpy as np
import pytest

from causalmix_jax import checkpointing
from causalmix_jax import metrics as metrics_lib
from causalmix_jax import train_target
from causalmix_jax.configs import base
from causalmix_jax.stages import target as target_stage
import fixture_pool

DOMAINS = ["code", "prose", "qa"]
VOCAB = 259  # the byte tokenizer's, so the fake and the real pool share one compilation


class FakeIterator:
  """Deterministic batches: domain d draws tokens from [20 d, 20 d + 20)."""

  def __init__(self, batch: int, seq_len: int):
    self.batch, self.seq_len, self.i = batch, seq_len, 0

  def __next__(self):
    rng = np.random.default_rng([7, self.i])
    self.i += 1
    domain = rng.integers(0, len(DOMAINS), self.batch).astype(np.int32)
    tokens = (rng.integers(0, 20, (self.batch, self.seq_len + 1))
              + 20 * domain[:, None]).astype(np.int32)
    return {"tokens": tokens, "mask": np.ones_like(tokens, np.uint8), "domain": domain}

  def get_state(self):
    return {"i": self.i}

  def set_state(self, state):
    self.i = int(state["i"])


def smoke_config(**optim):
  cfg = base.get_config("smoke")
  cfg.target.optim.steps = 6
  cfg.target.checkpoint_every = 2
  cfg.target.eval_every = 3
  cfg.target.eval_batches = 1
  for k, v in optim.items():
    cfg.target.optim[k] = v
  return cfg


def fake_eval(seq_len: int, batch: int) -> dict[str, np.ndarray]:
  it = FakeIterator(batch, seq_len)
  b = next(it)
  return {"eval_tokens": b["tokens"][None], "eval_mask": b["mask"][None],
          "eval_domain": b["domain"][None], "target_tokens": b["tokens"][None],
          "target_mask": b["mask"][None]}


def run(cfg, out, stop_after=None):
  seq_len, batch = cfg.target.model.seq_len, cfg.target.optim.batch_size
  return train_target.train(
      cfg, out, domains=DOMAINS, vocab_size=VOCAB, weights_D=np.ones(3) / 3,
      make_iterator=lambda b, i, n: FakeIterator(b, seq_len),
      eval_host=fake_eval(seq_len, batch), stop_after=stop_after)


def losses_by_step(out: pathlib.Path) -> dict[int, float]:
  """Logged loss per step, checking that no step was logged twice (a resumed run drops
  the records it logs again)."""
  recs = [r for r in metrics_lib.read_metrics(out / "metrics.jsonl") if "loss" in r]
  steps = [r["step"] for r in recs]
  assert len(steps) == len(set(steps)), f"steps logged more than once: {steps}"
  return {r["step"]: r["loss"] for r in recs}


def step_records(out: pathlib.Path, key: str) -> list[tuple[int, float]]:
  """(step, value) of every record holding `key`, in file order."""
  return [(r["step"], r[key]) for r in metrics_lib.read_metrics(out / "metrics.jsonl")
          if key in r]


def test_resume_after_interruption_matches_uninterrupted(tmp_path):
  cfg = smoke_config()
  full = run(cfg, tmp_path / "full")
  part = run(cfg, tmp_path / "part", stop_after=3)
  assert part["steps"] == 3
  assert checkpointing.Checkpointer(
      tmp_path / "part" / "checkpoints", fingerprint="").latest_step() == 2
  resumed = run(cfg, tmp_path / "part")
  assert resumed["resumed_from"] == 2 and resumed["steps"] == 6
  a, b = losses_by_step(tmp_path / "full"), losses_by_step(tmp_path / "part")
  assert sorted(a) == sorted(b) == list(range(1, 7))
  np.testing.assert_allclose([b[s] for s in a], [a[s] for s in a], rtol=1e-6)
  # Each step once, in order, with the uninterrupted run's values: the interrupted run's
  # step 3 (loss and evaluation, after the step-2 checkpoint) was dropped on resume.
  for key in ("loss", "grad_norm", "target_loss"):
    got, want = step_records(tmp_path / "part", key), step_records(tmp_path / "full", key)
    assert [s for s, _ in got] == [s for s, _ in want], key
    np.testing.assert_allclose([v for _, v in got], [v for _, v in want], rtol=1e-6,
                               err_msg=key)
  starts = [(r["step"], r["resumed"]) for r in metrics_lib.read_metrics(
      tmp_path / "part" / "metrics.jsonl") if r.get("event") == "start"]
  assert starts == [(0, False), (2, True)]
  assert resumed["final_train_loss"] == pytest.approx(full["final_train_loss"], rel=1e-6)
  assert resumed["target_loss"] == pytest.approx(full["target_loss"], rel=1e-6)
  # Starting a finished run again trains nothing and reports the same figures.
  again = run(cfg, tmp_path / "full")
  assert again["steps_this_run"] == 0 and again["resumed_from"] == 6
  assert again["final_train_loss"] == pytest.approx(full["final_train_loss"], rel=1e-6)
  assert again["target_loss"] == pytest.approx(full["target_loss"], rel=1e-6)
  assert again["eval_loss"] == pytest.approx(full["eval_loss"], rel=1e-6)
  assert set(full["eval_loss"]) == set(DOMAINS)
  assert full["flops"] == full["flops_per_token"] * full["tokens"] > 0
  assert a[6] < a[1]  # it learns
  # keep_checkpoints = 2
  assert sorted(p.name for p in (tmp_path / "full" / "checkpoints").iterdir()
                if p.name.isdigit()) == ["4", "6"]
  # Another config refuses to resume from this run.
  with pytest.raises(checkpointing.CheckpointMismatchError, match="optim.lr"):
    run(smoke_config(lr=1e-3), tmp_path / "full")


def test_restart_before_first_checkpoint_starts_metrics_afresh(tmp_path):
  cfg = smoke_config()
  run(cfg, tmp_path / "a", stop_after=1)  # no checkpoint yet (checkpoint_every = 2)
  assert [s for s, _ in step_records(tmp_path / "a", "loss")] == [1]
  with open(tmp_path / "a" / "metrics.jsonl", "a") as f:
    f.write('{"time": 1.0, "step": 2, "loss": 3.')  # a record cut short by a kill
  summary = run(cfg, tmp_path / "a")
  assert summary["resumed_from"] is None and summary["steps"] == 6
  recs = metrics_lib.read_metrics(tmp_path / "a" / "metrics.jsonl")
  assert [r["step"] for r in recs if "loss" in r] == list(range(1, 7))
  assert [r["resumed"] for r in recs if r.get("event") == "start"] == [False]


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  # A huge unclipped step: finite after the first update (so step 1 is checkpointed),
  # then the activations overflow.
  cfg = smoke_config(lr=1e15, clip_norm=0.0, warmup_steps=1)
  cfg.target.checkpoint_every = 1
  with pytest.raises(train_target.NonFiniteLossError, match=r"at step (\d+)") as err:
    run(cfg, tmp_path / "nan")
  bad = int(re.search(r"at step (\d+)", str(err.value)).group(1))
  ck = checkpointing.Checkpointer(tmp_path / "nan" / "checkpoints", fingerprint="")
  steps = ck.all_steps()
  assert bad == 2 and steps == [1]  # step 2 diverged; only the good step 1 was saved
  assert "last good checkpoint is" in str(err.value)
  assert str(err.value).split("last good checkpoint is ")[1].startswith(
      str(tmp_path / "nan" / "checkpoints" / "1"))
  assert np.isfinite(ck.read_meta(1)["extra"]["loss"])


def test_read_mixture_validates_names_and_normalises(tmp_path):
  cfg = base.get_config("smoke")
  (tmp_path / "optimise").mkdir()
  (tmp_path / "optimise" / "mixture.json").write_text(json.dumps(
      {"domains": ["code", "qa"], "weights": {"code": 0.25, "qa": 0.75}}))
  w, src = train_target.read_mixture(cfg, tmp_path, DOMAINS)
  np.testing.assert_allclose(w, [0.25, 0.0, 0.75])
  assert src.endswith("mixture.json")
  (tmp_path / "optimise" / "mixture.json").write_text(json.dumps(
      {"weights": {"code": 1.0, "web": 1.0}}))
  with pytest.raises(ValueError, match="'web'"):
    train_target.read_mixture(cfg, tmp_path, DOMAINS)
  cfg.target.weights = {"prose": 2.0, "qa": 2.0}
  w, src = train_target.read_mixture(cfg, tmp_path, DOMAINS)
  np.testing.assert_allclose(w, [0.0, 0.5, 0.5])
  assert src == "config key target.weights"


def test_stage_on_a_real_pool(tmp_path):
  from causalmix_jax.data import pool as pool_lib
  cfg = smoke_config()
  with cfg.unlocked():
    cfg.pool.source = "files"
    cfg.pool.domains = fixture_pool.domains()
    cfg.pool.target_eval = fixture_pool.target_eval()
    cfg.pool.heldout_fraction = 0.2
  pool_lib.build_pool(cfg, tmp_path / "pool")
  cfg.target.weights = {"code": 0.5, "prose": 0.25, "qa": 0.25}
  path = target_stage.run(cfg, tmp_path)
  summary = json.loads(path.read_text())
  assert path == tmp_path / "target" / "summary.json"
  assert summary["steps"] == 6 and np.isfinite(summary["final_train_loss"])
  assert summary["weights"] == {"code": 0.5, "prose": 0.25, "qa": 0.25}
  assert np.isfinite(summary["target_loss"])
  assert summary["tokens"] == 6 * cfg.target.optim.batch_size * cfg.target.model.seq_len
  assert (tmp_path / "target" / "metrics.jsonl").exists()
