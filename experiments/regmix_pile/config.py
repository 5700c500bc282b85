"""python experiments/regmix_pile/run.py --config=experiments/regmix_pile/config.py --workdir=/tmp/regmix_pile

RegMix on the Pile: the default causal surface against RegMix's own LightGBM regression
on RegMix's 512 proxy runs at the 1M scale (Pile-CC validation loss), scored by 5-fold
CV and on the held-out last 20% of runs by index. Append ":smoke" to the config path
for the same study on the first 160 runs, in about a minute.
"""

from __future__ import annotations

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  cfg = ml_collections.ConfigDict()
  cfg.regmix_dir = ""  # empty: <repo>/../shared/data/regmix
  cfg.max_runs = 0  # the first max_runs runs by index; 0 = all
  cfg.fit_repeats = 7  # rounds of timed fits on all runs (fastest and median reported)

  if arg == "smoke":
    cfg.max_runs = 160
    cfg.fit_repeats = 1
  elif arg:
    raise ValueError(f"unknown config variant {arg!r}; known: 'smoke'")
  return cfg
