"""End to end: the whole pipeline through launch/main.py on the tiny config, then a second
invocation that finds every stage up to date."""

import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _main(workdir: pathlib.Path, *extra: str) -> subprocess.CompletedProcess:
  env = dict(os.environ)
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
  return subprocess.run(
      [sys.executable, "launch/main.py", "--config=experiments/quickstart/config.py:smoke",
       f"--workdir={workdir}", "--stage=all", *extra],
      cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)


def test_pipeline_end_to_end(tmp_path):
  proc = _main(tmp_path)
  assert proc.returncode == 0, proc.stderr[-5000:]
  for rel in ("pool/pool.json", "pool/covariates.json", "design/interventions.npz",
              "sweep/runs.parquet", "sweep/runs.csv", "surface/surface.json",
              "optimise/mixture.json", "optimise/mixture.yaml", "target/summary.json",
              "report/report.md"):
    assert (tmp_path / rel).exists(), rel
  pool = json.loads((tmp_path / "pool/pool.json").read_text())
  mixture = json.loads((tmp_path / "optimise/mixture.json").read_text())
  assert mixture["domains"] == pool["domains"]
  assert abs(sum(mixture["weights"].values()) - 1.0) < 1e-6
  summary = json.loads((tmp_path / "target/summary.json").read_text())
  assert summary["steps"] > 0
  report = (tmp_path / "report/report.md").read_text()
  for d in pool["domains"]:
    assert d in report
  again = _main(tmp_path)
  assert again.returncode == 0, again.stderr[-3000:]
  assert again.stderr.count("up to date") == 7, again.stderr[-3000:]
