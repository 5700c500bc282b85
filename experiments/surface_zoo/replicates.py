"""Summarises zoo runs made at several world seeds: regret per world and split over
seeds, ours' wins against the best baseline and losses against uniform as counts of
(world, seed) cells, ours' effect coverage against the issue's bands, and the
covariate set ours' stack kept (runs since the rows carry `covariate_set`).

  python experiments/surface_zoo/replicates.py \
      --results=workdir/zoo_seed1/results.json --results=workdir/zoo_seed2/results.json \
      [--ours_from=workdir/ours_variant_seed1/results.json ...]

Each results.json is one `run.py` run; its seed is the run's `config.seed`. Runs of one
seed over different worlds are merged; a (world, split, method) met twice at one seed is
an error naming both files. --ours_from names runs of "ours" alone (another setting):
their rows replace the "ours" rows of --results for the same seed, world and split, so
a variant is compared with the baselines of the main runs. Prints the Markdown summary (and writes it to --out if
given); the last line printed is one JSON object with the counts.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
from typing import Any

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))

from causalmix_jax import artifacts  # noqa: E402
from causalmix_jax.surface import evaluation  # noqa: E402

_RESULTS = flags.DEFINE_multi_string(
    "results", None, "A zoo run's results.json (repeat the flag for each run).")
_OURS_FROM = flags.DEFINE_multi_string(
    "ours_from", [], "A results.json whose 'ours' rows replace those of --results.")
_OUT = flags.DEFINE_string("out", None, "Where to write the Markdown summary.")
flags.mark_flags_as_required(["results"])


def load(paths: list[str]) -> dict[int, list[dict[str, Any]]]:
  """The world rows of each results.json, grouped by the run's seed."""
  by_seed: dict[int, list[dict[str, Any]]] = {}
  seen: dict[tuple, str] = {}
  for path in paths:
    try:
      stored = json.loads(pathlib.Path(path).read_text())
      seed = int(stored["config"]["seed"])
      rows = [r for r in stored["rows"] if "world" in r]
    except (OSError, ValueError, KeyError, TypeError) as e:
      raise ValueError(f"{path}: not a surface-zoo results.json ({e})") from e
    for r in rows:
      key = (seed, r["world"], r["split"], r["method"])
      if key in seen:
        raise ValueError(f"{r['world']}/{r['split']}/{r['method']} at seed {seed} is in "
                         f"both {seen[key]} and {path}")
      seen[key] = path
    by_seed.setdefault(seed, []).extend(rows)
  return by_seed


def replace_ours(by_seed: dict[int, list[dict[str, Any]]],
                 variant: dict[int, list[dict[str, Any]]]) -> dict[int, list[dict[str, Any]]]:
  """by_seed with its "ours" rows replaced by variant's at the same seed, world and
  split; a variant cell with no counterpart in by_seed is an error naming it."""
  out = {s: list(rows) for s, rows in by_seed.items()}
  for seed, rows in variant.items():
    ours = [r for r in rows if r["method"] == "ours"]
    keys = {(r["world"], r["split"]) for r in ours}
    base = out.get(seed, [])
    have = {(r["world"], r["split"]) for r in base if r["method"] == "ours"}
    if keys - have:
      missing = ", ".join(f"{w}/{sp}" for w, sp in sorted(keys - have))
      raise ValueError(f"--ours_from has ours at seed {seed} for {missing}, which "
                       "--results lacks")
    out[seed] = [r for r in base if not (r["method"] == "ours"
                                         and (r["world"], r["split"]) in keys)] + ours
  return out


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  by_seed = load(_RESULTS.value)
  if _OURS_FROM.value:
    by_seed = replace_ours(by_seed, load(_OURS_FROM.value))
  text = evaluation.summarise_replicates(by_seed)
  if _OUT.value:
    with artifacts.atomic_path(pathlib.Path(_OUT.value)) as tmp:
      tmp.write_text(text)
  print(text)
  rep = evaluation.replicates(by_seed)
  print(artifacts.to_json({k: rep[k] for k in ("seeds", "worlds", *evaluation.SPLITS)},
                          None))


if __name__ == "__main__":
  app.run(main)
