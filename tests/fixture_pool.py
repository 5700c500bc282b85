"""The small on-disk fixture pool (tests/fixtures/pool) as pool config entries, shared by
the data, covariate and target tests."""

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
