"""Tests of the orbax checkpointer: round trip of state and data state, keep-last-k,
refusal of a checkpoint written under another config, and fallback past an unreadable
step."""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from causalmix_jax import checkpointing


def tree(v: float):
  return {"w": jnp.full((3, 2), v, jnp.float32), "step": jnp.asarray(int(v), jnp.int32)}


def abstract():
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                      tree(0.0))


def test_round_trip_keeps_last_k(tmp_path):
  ck = checkpointing.Checkpointer(tmp_path / "ck", fingerprint="abc",
                                  fingerprint_config={"lr": 1}, max_to_keep=2)
  for s in (1, 2, 3):
    ck.save(s, tree(float(s)), data_state={"pos": s * 10})
  ck.wait()
  assert ck.all_steps() == [2, 3] and ck.latest_step() == 3
  state, data, meta = ck.restore(3, abstract())
  np.testing.assert_array_equal(np.asarray(state["w"]), np.full((3, 2), 3.0))
  assert int(state["step"]) == 3 and data == {"pos": 30} and meta["step"] == 3
  ck.close()
  # A fresh manager on the same directory sees the same steps.
  again = checkpointing.Checkpointer(tmp_path / "ck", fingerprint="abc", max_to_keep=2)
  assert again.latest_step() == 3
  again.close()


def test_refuses_checkpoint_of_another_config(tmp_path):
  ck = checkpointing.Checkpointer(tmp_path / "ck", fingerprint="abc",
                                  fingerprint_config={"optim": {"lr": 1}}, max_to_keep=1)
  ck.save(1, tree(1.0))
  ck.close()
  other = checkpointing.Checkpointer(tmp_path / "ck", fingerprint="xyz",
                                     fingerprint_config={"optim": {"lr": 2}})
  with pytest.raises(checkpointing.CheckpointMismatchError,
                     match=r"different config.*optim\.lr: checkpoint=1 now=2"):
    other.restore(1, abstract())
  other.close()


def test_rejects_non_json_data_state(tmp_path):
  ck = checkpointing.Checkpointer(tmp_path / "ck", fingerprint="abc")
  with pytest.raises(TypeError, match="not JSON serialisable"):
    ck.save(1, tree(1.0), data_state={"x": object()})
  ck.close()


def test_unreadable_latest_step_falls_back_and_is_set_aside(tmp_path, caplog):
  ck = checkpointing.Checkpointer(tmp_path / "ck", fingerprint="abc", max_to_keep=3)
  for s in (1, 2):
    ck.save(s, tree(float(s)), data_state={"pos": s})
  ck.close()
  meta = tmp_path / "ck" / "2" / "meta" / "metadata"
  meta.write_bytes(meta.read_bytes()[:10])  # a half-written file
  again = checkpointing.Checkpointer(tmp_path / "ck", fingerprint="abc", max_to_keep=3)
  assert again.check_resumable() == 1
  with caplog.at_level(logging.WARNING, logger="causalmix_jax.checkpointing"):
    restored = again.restore_latest(abstract())
  assert restored.step == 1 and restored.data_state == {"pos": 1}
  np.testing.assert_array_equal(np.asarray(restored.state["w"]), np.full((3, 2), 1.0))
  assert f"checkpoint {tmp_path / 'ck' / '2'} cannot be read back" in caplog.text
  assert again.all_steps() == [1]
  assert (tmp_path / "ck.unreadable" / "2" / "meta" / "metadata").exists()
  again.save(2, tree(2.0))  # the step can be saved again
  again.close()
