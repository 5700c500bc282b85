"""Fault injection: nothing stale, nothing silent.

* kill -9 at seeded random points of the sweep, of the validate stage and of the target
  loop (one child process per trial, killed at the chosen event: a chunk computed, a file
  written but not yet renamed, a file renamed, a batch fetched, a checkpoint save
  dispatched, a metrics record written); the resumed stage holds every run once (sweep:
  the uninterrupted runs table; validate: the uninterrupted results and summary table)
  and logs every step once (target: the uninterrupted losses);
* disk full / permission denied mid-write: the previous artifact is intact and the error
  names the file;
* a garbled sweep chunk, a truncated runs.parquet and a half-written checkpoint: each is
  named and recomputed (the chunk), refused with the way out (runs.parquet), or skipped
  for the step before it or a fresh start (the checkpoint).

The uninterrupted references are computed once per module; the children load the
compiled programs from the session's compilation cache.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import pathlib
import runpy
import shutil
import signal
import subprocess
import sys
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402

from causalmix_jax import metrics as metrics_lib  # noqa: E402
from causalmix_jax import runs as runs_lib  # noqa: E402
from causalmix_jax import sweep  # noqa: E402
from causalmix_jax.data import token_pool  # noqa: E402
import sweep_kill_test  # noqa: E402
import sweep_test  # noqa: E402
import train_target_test  # noqa: E402

# Its module-level fixtures and caches are built once: one xdist worker runs it all.
pytestmark = pytest.mark.xdist_group("faults")

HERE = pathlib.Path(__file__).resolve().parent
KILL_ENV = "CAUSALMIX_FAULTS_KILL_AT"  # "<event>:<n>": the child kills itself there
SEED = 20240611
N_CHUNKS = 3  # 16 runs in chunks of 6

# Every event a child can be killed at (event, n-th occurrence). Sweep writes: 1 is
# design_digest.json, 2-4 the chunks, 5 runs.parquet, 6 runs.csv. Target: 6 batches,
# saves at steps 2, 4, 6, metrics records start, loss 1-3, eval 3, loss 4-6, eval 6.
SWEEP_POINTS = ([("computed", n) for n in range(1, N_CHUNKS + 1)]
                + [("written", n) for n in range(1, 7)]
                + [("renamed", n) for n in range(1, 7)])
TARGET_POINTS = ([("batch", n) for n in range(1, 7)] + [("save", n) for n in range(1, 4)]
                 + [("record", n) for n in range(1, 10)])


def _draw(points: list[tuple[str, int]], k: int, seed: int) -> list[tuple[str, int]]:
  idx = np.random.default_rng(seed).choice(len(points), size=k, replace=False)
  return [points[i] for i in sorted(idx)]


# The validate stage of the smoke study, run through launch/main.py on one device: 30 runs
# (10 distinct mixtures x 3 seeds) in 8 chunks of 4. Writes: 1 is design_digest.json,
# 2-9 the chunks, 10 runs.parquet, 11 runs.csv, 12 results.parquet, 13 table.md, 14
# summary.json (the stage's stamp follows).
VALIDATE_CHUNKS = 8
VALIDATE_POINTS = ([("computed", n) for n in range(1, VALIDATE_CHUNKS + 1)]
                   + [("written", n) for n in range(1, 15)]
                   + [("renamed", n) for n in range(1, 15)])

SWEEP_TRIALS = _draw(SWEEP_POINTS, 5, SEED)
TARGET_TRIALS = _draw(TARGET_POINTS, 5, SEED + 1)
VALIDATE_TRIALS = _draw(VALIDATE_POINTS, 1, SEED + 2)


# ----------------------------------------------------------------------------- worlds


def sweep_world() -> dict:
  """sweep_test's small synthetic world, 16 runs in 3 chunks on 4 devices."""
  cfg = sweep_test.make_cfg()
  if "state_per_mixture" in cfg.design:
    cfg.design.state_per_mixture = False  # 2 states x 4 mixtures x 2 seeds
  pool = sweep_test.make_pool()
  tp = token_pool.from_pool(pool, seq_len=16, eval_batch_size=4, eval_batches=1)
  design, meta = sweep_test.make_design(cfg, pool)
  assert len(design["run_id_N"]) == 16, len(design["run_id_N"])
  return dict(cfg=cfg, tp=tp, design=design, meta=meta, vocab=pool.vocab_size)


def run_sweep(world: dict, out: pathlib.Path) -> pathlib.Path:
  assert jax.device_count() >= 4, "run with --xla_force_host_platform_device_count=4"
  mesh = sweep.proxy_mesh(jax.devices()[:4])
  return sweep.run_sweep(world["cfg"], world["tp"], world["design"], world["meta"], out,
                         vocab_size=world["vocab"], mesh=mesh)


def run_target(out: pathlib.Path) -> dict:
  """train_target_test's 6-step smoke run (checkpoints at steps 2, 4, 6; keeps 2)."""
  return train_target_test.run(train_target_test.smoke_config(), out)


MAIN = sweep_kill_test.ROOT / "launch" / "main.py"


def launch_args(workdir: pathlib.Path, stages: str) -> list[str]:
  """launch/main.py's arguments for `stages` of the smoke study in `workdir`."""
  return ["--config=experiments/quickstart/config.py:smoke", "--config.sweep.chunk_size=4",
          f"--workdir={workdir}", f"--stage={stages}"]


def child_env(cache_env: dict[str, str], devices: int) -> dict[str, str]:
  env = dict(os.environ, **cache_env)
  env["PYTHONPATH"] = os.pathsep.join([str(sweep_kill_test.ROOT), str(HERE),
                                       env.get("PYTHONPATH", "")])
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  return env


def launch(workdir: pathlib.Path, stages: str, cache_env: dict[str, str]) -> str:
  """Runs `stages` of the smoke study through launch/main.py on one device; its log."""
  proc = subprocess.run([sys.executable, str(MAIN), *launch_args(workdir, stages)],
                        cwd=sweep_kill_test.ROOT, env=child_env(cache_env, 1),
                        capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, f"--stage={stages} failed:\n{proc.stderr[-4000:]}"
  return proc.stderr


# ----------------------------------------------------------------------------- the child


class _Tripwire:
  """Counts events; SIGKILLs this process at the n-th occurrence of the chosen one."""

  def __init__(self, spec: str):
    event, n = spec.split(":")
    self.event, self.n, self.seen = event, int(n), 0

  def __call__(self, event: str) -> None:
    if event != self.event:
      return
    self.seen += 1
    if self.seen == self.n:
      sys.stdout.flush()
      os.kill(os.getpid(), signal.SIGKILL)


def _child(stage: str, out: str) -> None:
  logging.basicConfig(level=logging.WARNING)
  trip = _Tripwire(os.environ[KILL_ENV])
  from causalmix_jax import artifacts  # pylint: disable=import-outside-toplevel
  from causalmix_jax import checkpointing  # pylint: disable=import-outside-toplevel
  atomic_path = artifacts.atomic_path

  @contextlib.contextmanager
  def tripped_atomic_path(path):
    with atomic_path(path) as tmp:
      yield tmp
      trip("written")  # the temporary file is complete, not yet renamed
    trip("renamed")

  artifacts.atomic_path = tripped_atomic_path
  if stage in ("sweep", "validate"):
    to_host = sweep._to_host  # pylint: disable=protected-access

    def tripped_to_host(tree):
      trip("computed")
      return to_host(tree)

    sweep._to_host = tripped_to_host  # pylint: disable=protected-access
  if stage == "sweep":
    run_sweep(sweep_world(), pathlib.Path(out))
  elif stage == "validate":  # launch/main.py in this process, on the patched modules
    sys.argv = [str(MAIN), *launch_args(pathlib.Path(out), "validate")]
    try:
      runpy.run_path(str(MAIN), run_name="__main__")
    except SystemExit as e:
      print(f"launch/main.py exited with {e.code}", flush=True)
  else:
    it = train_target_test.FakeIterator
    nxt, save = it.__next__, checkpointing.Checkpointer.save
    write = metrics_lib.MetricsWriter.write

    def tripped_next(self):
      trip("batch")
      return nxt(self)

    def tripped_save(self, *args, **kwargs):
      save(self, *args, **kwargs)
      trip("save")  # the asynchronous save is in flight

    def tripped_write(self, *args, **kwargs):
      write(self, *args, **kwargs)
      trip("record")

    it.__next__ = tripped_next
    checkpointing.Checkpointer.save = tripped_save
    metrics_lib.MetricsWriter.write = tripped_write
    run_target(pathlib.Path(out))
  print("finished without reaching the kill point", flush=True)


def kill_child_at(stage: str, out: pathlib.Path, point: tuple[str, int],
                  cache_env: dict[str, str]) -> None:
  validate = stage == "validate"  # launch/main.py: from the repository, on one device
  env = child_env(cache_env, 1 if validate else 4)
  env[KILL_ENV] = f"{point[0]}:{point[1]}"
  proc = subprocess.run([sys.executable, __file__, stage, str(out)], env=env,
                        cwd=sweep_kill_test.ROOT if validate else None,
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                        timeout=300, check=False)
  assert proc.returncode == -signal.SIGKILL, (
      f"{stage} child was not killed at {point} (rc {proc.returncode}):\n"
      f"{proc.stdout[-4000:]}")


def leftovers(out: pathlib.Path) -> list[str]:
  """Temporary files and directories of writes cut short."""
  return sorted(str(p.relative_to(out)) for p in out.rglob("*")
                if p.name.endswith(".tmp") or "orbax-checkpoint-tmp" in p.name)


# ----------------------------------------------------------------------------- references


@pytest.fixture(scope="module")
def sweep_ref(tmp_path_factory) -> dict:
  world = sweep_world()
  out = tmp_path_factory.mktemp("sweep_ref")
  path = run_sweep(world, out)
  return dict(world=world, out=out, frame=pd.read_parquet(path))


@pytest.fixture(scope="module")
def target_ref(tmp_path_factory) -> dict:
  out = tmp_path_factory.mktemp("target_ref")
  return dict(out=out, summary=run_target(out))


# Stages after `optimise`: left out of the copy the validate stage is killed in.
AFTER_OPTIMISE = ("validate", "analysis", "target", "report")


@pytest.fixture(scope="module")
def validate_ref(tmp_path_factory, smoke_study) -> dict:
  """The session's smoke study, whose `validate` ran uninterrupted, and a copy of it up to
  `optimise` (`base`) to kill `validate` in."""
  base = tmp_path_factory.mktemp("validate_base") / "work"
  shutil.copytree(smoke_study, base, ignore=lambda d, names: [
      n for n in names if n in AFTER_OPTIMISE] if pathlib.Path(d) == smoke_study else [])
  out = smoke_study
  n_chunks = len(list((out / "validate" / "chunks").glob("chunk_*.parquet")))
  assert n_chunks == VALIDATE_CHUNKS, f"VALIDATE_POINTS assume {VALIDATE_CHUNKS} chunks"
  return dict(base=base, frame=pd.read_parquet(out / "validate" / "results.parquet"),
              summary=json.loads((out / "validate" / "summary.json").read_text()))


def assert_same_runs(out: pathlib.Path, ref: pd.DataFrame) -> None:
  got = pd.read_parquet(out / "runs.parquet")
  assert len(got) == len(ref) and got["run_id"].is_unique
  assert sorted(got["run_id"]) == sorted(ref["run_id"])
  pd.testing.assert_frame_equal(got.set_index("run_id").loc[ref["run_id"]],
                                ref.set_index("run_id"), check_exact=False, rtol=0,
                                atol=1e-6)
  csv = pd.read_csv(out / "runs.csv")
  assert len(csv) == len(ref) and csv["run_id"].is_unique


def assert_same_validation(out: pathlib.Path, ref: dict) -> None:
  got = pd.read_parquet(out / "results.parquet")
  want = ref["frame"]
  assert len(got) == len(want) and got["run_id"].is_unique
  assert sorted(got["run_id"]) == sorted(want["run_id"])
  pd.testing.assert_frame_equal(got.set_index("run_id").loc[want["run_id"]],
                                want.set_index("run_id"), check_exact=False, rtol=0,
                                atol=1e-6)
  summary = json.loads((out / "summary.json").read_text())
  assert {k: v for k, v in summary.items() if k != "table"} == {
      k: v for k, v in ref["summary"].items() if k != "table"}
  pd.testing.assert_frame_equal(pd.DataFrame(summary["table"]),
                                pd.DataFrame(ref["summary"]["table"]), check_exact=False,
                                rtol=0, atol=1e-6)


def assert_same_training(out: pathlib.Path, summary: dict, ref: dict) -> None:
  assert summary["steps"] == 6
  assert summary["final_train_loss"] == pytest.approx(ref["summary"]["final_train_loss"],
                                                      rel=1e-6)
  assert summary["target_loss"] == pytest.approx(ref["summary"]["target_loss"], rel=1e-6)
  for key in ("loss", "target_loss"):  # each step once, the uninterrupted values
    got = train_target_test.step_records(out, key)
    want = train_target_test.step_records(ref["out"], key)
    assert [s for s, _ in got] == [s for s, _ in want], (key, got)
    np.testing.assert_allclose([v for _, v in got], [v for _, v in want], rtol=1e-6,
                               err_msg=key)


# ----------------------------------------------------------------------------- kill -9


@pytest.mark.parametrize("point", SWEEP_TRIALS, ids=[f"{e}{n}" for e, n in SWEEP_TRIALS])
def test_sweep_killed_at_a_random_point_resumes_to_the_same_runs(
    point, sweep_ref, tmp_path, xla_cache_env):
  out = tmp_path / "sweep"
  kill_child_at("sweep", out, point, xla_cache_env)
  if point[0] == "written":  # killed between writing a temporary file and renaming it
    assert leftovers(out), "no partial write left behind"
  run_sweep(sweep_ref["world"], out)
  assert_same_runs(out, sweep_ref["frame"])
  assert len(list((out / "chunks").glob("chunk_*.parquet"))) == N_CHUNKS
  assert leftovers(out) == []


@pytest.mark.parametrize("point", TARGET_TRIALS,
                         ids=[f"{e}{n}" for e, n in TARGET_TRIALS])
def test_target_killed_at_a_random_point_resumes_to_the_same_loss(
    point, target_ref, tmp_path, xla_cache_env):
  out = tmp_path / "target"
  kill_child_at("target", out, point, xla_cache_env)
  summary = run_target(out)
  assert_same_training(out, summary, target_ref)
  assert leftovers(out) == []


@pytest.mark.xdist_group("smoke_study")  # with the study's other users, not the module
@pytest.mark.parametrize("point", VALIDATE_TRIALS,
                         ids=[f"{e}{n}" for e, n in VALIDATE_TRIALS])
def test_validate_killed_at_a_random_point_resumes_to_the_same_table(
    point, validate_ref, tmp_path, xla_cache_env):
  work = tmp_path / "work"
  shutil.copytree(validate_ref["base"], work)
  kill_child_at("validate", work, point, xla_cache_env)
  out = work / "validate"
  if point[0] == "written":
    assert leftovers(out), "no partial write left behind"
  assert not (out / "stamp.json").exists()
  log = launch(work, "validate", xla_cache_env)
  event, n = point  # chunks on disk at the kill (the first write is the digest)
  done = min(VALIDATE_CHUNKS, max(0, n - (2 if event == "written" else 1)))
  if done:
    assert f"{done} of {VALIDATE_CHUNKS} chunks already done, resuming" in log, log[-3000:]
  else:
    assert "chunks already done" not in log, log[-3000:]
  assert_same_validation(out, validate_ref)
  assert len(list((out / "chunks").glob("chunk_*.parquet"))) == VALIDATE_CHUNKS
  assert leftovers(out) == []


# ------------------------------------------------------------------------- disk faults


def _enospc(*_args, **_kwargs):
  raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_mid_write_keeps_the_previous_runs_table(sweep_ref, tmp_path,
                                                            monkeypatch):
  out = tmp_path / "sweep"
  shutil.copytree(sweep_ref["out"], out)
  before = {n: (out / n).read_bytes() for n in ("runs.parquet", "runs.csv")}
  write_table = pq.write_table

  def half_then_full(table, where, **kwargs):  # half the file lands, then ENOSPC
    write_table(table, where, **kwargs)
    data = pathlib.Path(where).read_bytes()
    pathlib.Path(where).write_bytes(data[:len(data) // 2])
    _enospc()

  monkeypatch.setattr(pq, "write_table", half_then_full)
  with pytest.raises(OSError, match=f"could not write {out / 'runs.parquet'}: No space "
                     "left on device") as err:
    run_sweep(sweep_ref["world"], out)  # every chunk done: only the table is written
  assert err.value.errno == errno.ENOSPC
  assert {n: (out / n).read_bytes() for n in before} == before
  assert leftovers(out) == []


def test_permission_denied_writing_a_chunk_names_it(sweep_ref, tmp_path, monkeypatch):
  out = tmp_path / "sweep"
  shutil.copytree(sweep_ref["out"], out)
  (out / "chunks" / "chunk_00001.parquet").unlink()  # to be recomputed and written
  before = {p: p.read_bytes() for p in sorted(out.rglob("*.parquet"))}
  mkstemp = tempfile.mkstemp

  def read_only_chunks(*args, **kwargs):  # what a read-only chunks/ does (as non-root)
    if kwargs.get("prefix", "").startswith(".chunk_"):
      name = os.path.join(kwargs["dir"], kwargs["prefix"] + "x" + kwargs["suffix"])
      raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), name)
    return mkstemp(*args, **kwargs)

  monkeypatch.setattr(tempfile, "mkstemp", read_only_chunks)
  chunk = out / "chunks" / "chunk_00001.parquet"
  with pytest.raises(PermissionError, match=f"sweep: could not write {chunk}: "
                     "Permission denied"):
    run_sweep(sweep_ref["world"], out)
  assert {p: p.read_bytes() for p in sorted(out.rglob("*.parquet"))} == before


def test_disk_full_rewinding_metrics_keeps_the_file(tmp_path, monkeypatch):
  path = tmp_path / "metrics.jsonl"
  w = metrics_lib.MetricsWriter(path)
  for step in range(5):
    w.write(step, loss=float(step))
  before = path.read_bytes()
  monkeypatch.setattr(pathlib.Path, "write_text", _enospc)
  with pytest.raises(OSError, match=f"could not (re)?write {path}: No space left"):
    metrics_lib.MetricsWriter(path, start_step=2)  # a resume from step 2
  assert path.read_bytes() == before
  assert leftovers(tmp_path) == []


# ----------------------------------------------------------------------------- corruption


def test_garbled_sweep_chunks_are_named_and_recomputed(sweep_ref, tmp_path, caplog):
  out = tmp_path / "sweep"
  shutil.copytree(sweep_ref["out"], out)
  rng = np.random.default_rng(SEED)
  whole, middle = (out / "chunks" / f"chunk_{i:05d}.parquet" for i in (0, 2))
  whole.write_bytes(rng.bytes(whole.stat().st_size))  # garbage from the first byte
  data = bytearray(middle.read_bytes())
  at = len(data) // 3
  data[at:at + 64] = rng.bytes(64)  # garbage inside a column's pages
  middle.write_bytes(bytes(data))
  with caplog.at_level(logging.INFO, logger="causalmix_jax.sweep"):
    run_sweep(sweep_ref["world"], out)
  for p in (whole, middle):
    assert f"sweep: chunk file {p} is corrupt or truncated" in caplog.text
  assert "1 of 3 chunks already done, resuming" in caplog.text
  assert_same_runs(out, sweep_ref["frame"])
  for p in (whole, middle):
    pd.testing.assert_frame_equal(pd.read_parquet(p),
                                  pd.read_parquet(sweep_ref["out"] / "chunks" / p.name))


def test_truncated_runs_table_is_named_with_the_way_out(sweep_ref, tmp_path):
  out = tmp_path / "sweep"
  shutil.copytree(sweep_ref["out"], out)
  table = out / "runs.parquet"
  table.write_bytes(table.read_bytes()[:table.stat().st_size // 2])
  with pytest.raises(runs_lib.RunsTableError,
                     match=rf"^{table}: cannot be read as a runs table: the Parquet file "
                     r"is truncated .*re-run that stage .*\(--stage=sweep --force\)"):
    runs_lib.load_runs(out)
  run_sweep(sweep_ref["world"], out)  # what the sweep stage does: chunks are reused
  assert_same_runs(out, sweep_ref["frame"])
  assert len(runs_lib.load_runs(out).run_ids) == 16


def _truncate_largest(step_dir: pathlib.Path) -> pathlib.Path:
  victim = max((p for p in step_dir.rglob("*") if p.is_file()),
               key=lambda p: (p.stat().st_size, str(p)))
  victim.write_bytes(victim.read_bytes()[:victim.stat().st_size // 2])
  return victim


def test_half_written_checkpoint_falls_back_to_the_step_before(target_ref, tmp_path,
                                                                caplog):
  out = tmp_path / "target"
  shutil.copytree(target_ref["out"], out)
  ckpts = out / "checkpoints"
  _truncate_largest(ckpts / "6")
  with caplog.at_level(logging.WARNING, logger="causalmix_jax.checkpointing"):
    summary = run_target(out)
  assert f"checkpoint {ckpts / '6'} cannot be read back" in caplog.text
  aside = out / "checkpoints.unreadable" / "6"
  assert f"moved unreadable checkpoint {ckpts / '6'} to {aside}" in caplog.text
  assert summary["resumed_from"] == 4 and summary["steps_this_run"] == 2
  assert_same_training(out, summary, target_ref)
  assert sorted(p.name for p in ckpts.iterdir() if p.name.isdigit()) == ["4", "6"]


def test_every_checkpoint_unreadable_restarts_from_scratch(target_ref, tmp_path, caplog):
  out = tmp_path / "target"
  shutil.copytree(target_ref["out"], out)
  ckpts = out / "checkpoints"
  for step in ("4", "6"):
    _truncate_largest(ckpts / step)
  with caplog.at_level(logging.WARNING, logger="causalmix_jax.checkpointing"):
    summary = run_target(out)
  for step in ("4", "6"):
    assert f"checkpoint {ckpts / step} cannot be read back" in caplog.text
  assert f"no checkpoint under {ckpts} can be read back; training starts over" in \
      caplog.text
  assert summary["resumed_from"] is None and summary["steps_this_run"] == 6
  assert_same_training(out, summary, target_ref)


if __name__ == "__main__":
  _child(sys.argv[1], sys.argv[2])
