"""The quickstart's response-surface notebook: executed headless (nbclient, an ipykernel
of this interpreter) against a copy of the session's smoke study, and stored without
outputs."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import sys

# Test extras (requirements-test.txt): a missing one fails the suite rather than skipping.
import ipykernel  # noqa: F401  # pylint: disable=unused-import
import nbclient
import nbformat
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "experiments/quickstart/response_surface.ipynb"
STRIP = (".venv/bin/python -c \"import nbformat as f, sys; n = f.read(sys.argv[1], 4); "
         "[(c.update(outputs=[], execution_count=None), "
         "c.metadata.pop('execution', None)) for c in n.cells if c.cell_type == 'code']; "
         "f.write(n, sys.argv[1])\" experiments/quickstart/response_surface.ipynb")


def _kernelspec(root: pathlib.Path) -> pathlib.Path:
  """A `python3` kernelspec that runs this interpreter, first on a JUPYTER_PATH: the
  notebook runs in the test's environment whatever kernels the user has installed."""
  spec = root / "kernels" / "python3"
  spec.mkdir(parents=True)
  (spec / "kernel.json").write_text(json.dumps({
      "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      "display_name": "Python 3", "language": "python"}))
  return root


@pytest.mark.xdist_group("smoke_study")  # one worker builds the study and runs its users
def test_notebook_executes(smoke_study, tmp_path, monkeypatch, xla_cache_env):
  workdir = tmp_path / "study"
  shutil.copytree(smoke_study, workdir)
  env = dict(os.environ)
  env.update(xla_cache_env)
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"

  monkeypatch.setenv("JUPYTER_PATH", str(_kernelspec(tmp_path / "jupyter")))
  nb = nbformat.read(NOTEBOOK, as_version=4)
  client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                   resources={"metadata": {"path": str(ROOT)}})
  env["CAUSALMIX_WORKDIR"] = str(workdir)
  client.execute(env=env)  # raises CellExecutionError, naming the cell, on any error

  code = [c for c in nb.cells if c.cell_type == "code"]
  assert all(c.execution_count is not None for c in code)
  outputs = [o for c in code for o in c.outputs]
  assert not [o for o in outputs if o.output_type == "error"]
  figures = [o for o in outputs if "image/png" in o.get("data", {})]
  assert len(figures) >= 4, f"{len(figures)} inline figures"
  text = "\n".join(o.get("text", "") + o.get("data", {}).get("text/plain", "")
                   for o in outputs)
  assert "stages done: pool, reference, design, sweep, fit, optimise" in text, text[:2000]
  for objective in ("mean", "bound", "safe"):
    assert f"{objective} (max" in text, objective


def test_notebook_is_stored_stripped():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  assert nb.metadata.get("kernelspec", {}).get("name") == "python3"
  dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"
           and (c.get("outputs") or c.get("execution_count") is not None
                or "execution" in c.get("metadata", {}))]
  assert not dirty, (f"code cells {dirty} of {NOTEBOOK.relative_to(ROOT)} keep outputs, "
                     f"execution counts or timings; strip them with:\n  {STRIP}")
  assert "widgets" not in nb.metadata
