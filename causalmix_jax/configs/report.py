"""Config section for the report and the CATE interpreter."""

from __future__ import annotations

import ml_collections


def section(variants: frozenset[str]) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.tree_depth = 3
  c.n_grid = 25
  del variants
  return c
