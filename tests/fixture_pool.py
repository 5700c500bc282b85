"""The small on-disk fixture pool (tests/fixtures/pool) as pool config entries, shared by
the data, covariate, reference, multi-process and target tests."""

import pathlib

from causalmix_jax.configs import data as data_cfg

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "pool"


def domains() -> dict:
  """Three domains: Python files, '%'-separated prose and prompt/response JSONL."""
  return {
      "code": data_cfg.domain_spec(str(FIXTURES / "code" / "*.py")),
      "prose": data_cfg.domain_spec(str(FIXTURES / "prose" / "notes.txt"),
                                    separator="\n%\n"),
      "qa": data_cfg.domain_spec(str(FIXTURES / "qa" / "qa.jsonl"), "jsonl",
                                 prompt_field="prompt", response_field="response"),
  }


def target_eval():
  return data_cfg.domain_spec(str(FIXTURES / "target" / "target.jsonl"), "jsonl")


def smoke_config():
  """The smoke config on this pool (a fifth of each domain's documents held out),
  locked like every config."""
  from causalmix_jax.configs import base  # pylint: disable=import-outside-toplevel
  cfg = base.get_config("smoke")
  with cfg.unlocked():
    cfg.pool.source = "files"
    cfg.pool.domains = domains()
    cfg.pool.target_eval = target_eval()
    cfg.pool.heldout_fraction = 0.2
  return cfg
