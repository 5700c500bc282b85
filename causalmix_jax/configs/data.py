"""Config sections for the data pool, its covariates and the weighted mixing pipeline."""

from __future__ import annotations

import ml_collections


def domain_spec(paths: tuple[str, ...] | str, fmt: str = "text", *,
                separator: str = "", text_field: str = "text",
                prompt_field: str = "", response_field: str = "") -> ml_collections.ConfigDict:
  """One domain: a set of files (globs) and how to read documents out of them.

  fmt: "text" (one document per file, or documents split by `separator`),
    "jsonl" (`text_field`, or `prompt_field` + `response_field` for instruction data,
    where only response tokens count in the loss), "parquet" (`text_field` column).
  Relative paths are resolved against the embedded default pool directory when
  `pool.source == "default"`, else against the working directory.
  """
  if isinstance(paths, str):
    paths = (paths,)
  return ml_collections.ConfigDict(dict(
      paths=tuple(paths), format=fmt, separator=separator, text_field=text_field,
      prompt_field=prompt_field, response_field=response_field))


def pool_section(variants: frozenset[str]) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # "default": the pool shipped inside the package (causalmix_jax/data/default_pool).
  # "files": the domains below, read from the user's files.
  c.source = "default"
  # Domain name -> domain_spec(...). Empty with source="default" means "all embedded
  # domains". Canonical domain order everywhere is the sorted list of names.
  c.domains = ml_collections.ConfigDict()
  # The held-out target evaluation set (a domain_spec, or empty for the default one).
  c.target_eval = ml_collections.ConfigDict()
  c.tokenizer = ml_collections.ConfigDict(dict(kind="byte", path=""))
  c.heldout_fraction = 0.05
  # Cap per domain on tokens kept (0 = everything).
  c.max_tokens_per_domain = 0
  # The pool the recommendation is for, relative to the built pool: per domain, the
  # fraction of its documents a quality filter keeps (< 1 needs reference.enabled), the
  # fraction of the remaining tokens it exposes (< 1: scarcer) and an injected duplicate
  # rate. Empty: the built pool itself. The optimise and validate stages answer for it;
  # the sweep's pool states are drawn from the built pool (see `design`).
  c.deploy = ml_collections.ConfigDict(dict(fraction=ml_collections.ConfigDict(),
                                            dup_rate=ml_collections.ConfigDict(),
                                            quality=ml_collections.ConfigDict()))
  if "smoke" in variants:
    c.max_tokens_per_domain = 60_000
  return c


def covariates_section(variants: frozenset[str]) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.near_dup_ngram = 8
  # Statistics are computed on at most this many bytes per domain (0 = all).
  c.max_bytes_per_domain = 0
  if "smoke" in variants:
    c.max_bytes_per_domain = 200_000
  return c


def mixing_section(variants: frozenset[str]) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seq_len = 128
  c.batch_size = 32
  c.shuffle_seed = 0
  # grain read threads (0 = read in the training thread) and batches prefetched.
  c.num_threads = 2
  c.prefetch = 8
  del variants
  return c
