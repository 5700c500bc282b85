"""Command-line entry point: parses flags, initialises JAX (multi-host when asked), logs
the hosts and dispatches pipeline stages.

  python launch/main.py --config=experiments/quickstart/config.py --workdir=/tmp/qs \
      --stage=all
"""

from __future__ import annotations

import logging
import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from causalmix_jax import pipeline  # noqa: E402
from causalmix_jax import sharding  # noqa: E402
from causalmix_jax.configs import base  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (a .py with get_config), e.g. "
    "experiments/quickstart/config.py or experiments/quickstart/config.py:smoke.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for every stage's artifacts.")
_STAGE = flags.DEFINE_list(
    "stage", ["all"], f"Stages to run: all, or any of {', '.join(pipeline.ORDER)}.")
_FORCE = flags.DEFINE_bool("force", False, "Re-run stages even when up to date.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0 for multi-host runs.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
_HEARTBEAT = flags.DEFINE_integer(
    "heartbeat_timeout_s", None, "Multi-host runs: seconds a process may be silent "
    "before the others give it up as dead and stop (default: JAX's, 100).")

flags.mark_flags_as_required(["config", "workdir"])


class _QuietLibraries(logging.Filter):
  """Keeps the libraries' INFO chatter (checkpoint I/O, backend probing) out of the log;
  their warnings and errors still show."""

  _NOISY = ("/orbax/", "/jax/_src/xla_bridge.py", "/jax/_src/distributed.py")

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or not any(
        s in record.pathname for s in self._NOISY)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.getLogger().setLevel(logging.INFO)
  for handler in logging.getLogger().handlers:
    handler.addFilter(_QuietLibraries())
  sharding.initialize_distributed(
      _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
      heartbeat_timeout_s=_HEARTBEAT.value)
  # A failing process of a multi-process job exits at once with code 1 rather than wait
  # for the others at jax.distributed's shutdown (they may be waiting for it).
  with sharding.exit_at_once_on_failure():
    sharding.log_hosts()
    cfg = _CONFIG.value
    for key, name, value in _MAPPING_ENTRIES:
      base.set_mapping_entry(cfg, key, name, value)
    pipeline.run_stages(
        _STAGE.value, cfg, _WORKDIR.value, force=_FORCE.value,
        study_id=study_id(config_flags.get_config_filename(flags.FLAGS["config"])))


def study_id(config_arg: str) -> str:
  """The study a config file (and variant) defines: "experiments/x/config.py:smoke" ->
  "experiments/x/config.py:smoke", with the path made relative to the repository when it
  lies inside it, so the same study run from another directory keeps its identity."""
  path, sep, variant = config_arg.partition(":")
  full = os.path.abspath(path)
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  rel = os.path.relpath(full, root) if full.startswith(root + os.sep) else full
  return rel + (sep + variant if sep else "")


_MAPPING_ENTRIES: list[tuple[str, str, str]] = []


def split_mapping_entries(argv: list[str]) -> tuple[list[str], list[tuple[str, str, str]]]:
  """Takes `--config.<mapping>.<name>=<value>` for the domain mappings of
  `configs.base.DOMAIN_MAPPINGS` out of argv (the config library cannot add keys):
  (the other arguments, [(mapping, name, value)])."""
  rest, entries = [], []
  for a in argv:
    if a.startswith("--config.") and "=" in a:
      dotted, value = a[len("--config."):].split("=", 1)
      key, _, name = dotted.rpartition(".")
      if key in base.DOMAIN_MAPPINGS and name:
        entries.append((key, name, value))
        continue
    rest.append(a)
  return rest, entries


def unknown_override(argv: list[str]) -> str | None:
  """A one-line error for the first `--config.<key>` override that names no config key
  (with the closest key as a suggestion), or None. Run before absl parses the flags, so
  a typo is not reported as a long traceback from the config library."""
  import difflib  # pylint: disable=import-outside-toplevel
  import importlib.util  # pylint: disable=import-outside-toplevel
  config_arg = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  keys = [a[len("--config."):].split("=", 1)[0] for a in argv if a.startswith("--config.")]
  if not config_arg or not keys:
    return None
  path, _, variant = config_arg.partition(":")
  spec = importlib.util.spec_from_file_location("_study_config", path)
  if spec is None or spec.loader is None or not os.path.exists(path):
    return f"--config={config_arg}: no such config file {path!r}"
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  cfg = module.get_config(variant) if variant else module.get_config()
  for key in keys:
    node, done = cfg, []
    for part in key.split("."):
      children = list(node.keys()) if hasattr(node, "keys") else []
      if part not in children:
        near = difflib.get_close_matches(part, children, n=1)
        where = ".".join(done) or "the config"
        hint = f"; did you mean --config.{'.'.join(done + near)}?" if near else (
            f"; {where} has keys: {', '.join(sorted(children))}" if children else
            f"; {where} is a value, not a section")
        return f"--config.{key}: unknown config key {part!r} in {where}{hint}"
      node, done = node[part], done + [part]
  return None


if __name__ == "__main__":
  _argv, _MAPPING_ENTRIES[:] = split_mapping_entries(sys.argv[1:])
  _error = unknown_override(_argv)
  if _error:
    sys.exit(f"error: {_error}")
  app.run(main, argv=[sys.argv[0]] + _argv)
