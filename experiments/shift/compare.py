"""Compares the recommendation with every other validated mixture over several studies,
e.g. the shift study run at several design seeds:

  python experiments/shift/compare.py --workdir=workdir/shift_s2 \
      --workdir=workdir/shift_s3 [--out=workdir/shift_compare.md]

Each --workdir is a study whose optimise and validate stages ran (any config, not only
this study's). Reads their typed artifacts through `api.open_study`, prints the
Markdown of `validation.comparison_markdown` (also written to --out if given): the
recommendation's realized gain over each mixture per study with its interval, how often
it was better, level or worse, the mean gain over the studies with a t interval across
them (the studies as independent designs: gains too small to tell apart from 0 one
study at a time can add up), each study's best mixture, and the gains the
recommendation reported over uniform and the sweep's best-known mixture against the
realized ones. The last line printed is one JSON object with the same figures.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))

from causalmix_jax import api  # noqa: E402
from causalmix_jax import study as study_lib  # noqa: E402
from causalmix_jax import validation  # noqa: E402

_WORKDIR = flags.DEFINE_multi_string(
    "workdir", None, "A validated study's workdir (repeat the flag for more).")
_OUT = flags.DEFINE_string("out", None, "Where to write the Markdown comparison.")
flags.mark_flags_as_required(["workdir"])


def load_cases(workdirs: list[str]) -> list[tuple[str, object, object]]:
  """(label, validation table, recommendation) per workdir, labelled by its directory
  name (its path where two names repeat); a missing artifact raises UsageError naming
  the workdir, the file and the stage that writes it."""
  names = [pathlib.Path(w).name for w in workdirs]
  labels = names if len(set(names)) == len(names) else list(workdirs)
  cases = []
  for label, wd in zip(labels, workdirs):
    if not pathlib.Path(wd).is_dir():
      raise app.UsageError(f"--workdir={wd}: not a directory")
    study = api.open_study(wd)
    try:
      cases.append((label, study.validation, study.mixture))
    except study_lib.MissingArtifactError as e:
      raise app.UsageError(f"--workdir={wd}: {e}") from None
  return cases


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    result = validation.compare_studies(load_cases(list(_WORKDIR.value)))
  except validation.ValidationError as e:
    raise app.UsageError(str(e)) from None
  text = validation.comparison_markdown(result)
  if _OUT.value:
    out = pathlib.Path(_OUT.value)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
  print(text)
  print(json.dumps(result))


if __name__ == "__main__":
  app.run(main)
