"""Per-document reference-model scores of a pool, and what they give a pool state: the
documents a quality filter keeps, and the reference covariates of the tokens the state
exposes.

Every document of every domain's training stream has three scores, each a mean over its
scored tokens (a document's first `max_tokens_per_document` tokens, or all of them):
  loss_bits     next-token loss under the reference model, bits per token (NormLoss)
  entropy_bits  entropy of the reference model's predictive distribution, bits per token
  hes_bits      high-entropy sum: the entropies of the document's tokens that are among
                the top `HES_QUANTILE` token entropies of the whole pool (one threshold
                for every domain, fixed once), summed and divided by the document's
                scored tokens
A token of a document stands for the document's mean score, so a pool state's covariate
is the token-weighted mean over the tokens it exposes (prefix cuts, duplicated copies and
filtered-out documents included as the state has them). `hes_bits` is reported per 1,000
tokens.

A quality filter keeps a domain's top `fraction` of documents (round(fraction * count),
at least one) ranked by the score named in `quality_score`, lowest first when
`keep == "lowest"` (ties: earlier documents first; documents with no scored token last).
The kept documents, in their original order, form the domain's filtered stream, on which
the pool state's prefix and duplicate rules then act (see `data.pool_shift`).
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Mapping, Sequence

import numpy as np

from causalmix_jax.data import pool as pool_lib
from causalmix_jax.data.sources import DataError

HES_QUANTILE = 0.005
SCORES = ("loss_bits", "entropy_bits", "hes_bits")
KEEP = ("lowest", "highest")
# Covariate names (`x_<name>__<domain>` in the runs table) of the three scores.
FEATURES = {"loss_bits": "ref_loss_bits", "entropy_bits": "ref_entropy_bits",
            "hes_bits": "ref_hes_bits"}
_HES_PER = 1000.0


@dataclasses.dataclass(frozen=True)
class DocScores:
  """Scores of every document, per domain (arrays aligned with the pool's doc_starts)."""
  domains: tuple[str, ...]
  scores: dict[str, dict[str, np.ndarray]]  # domain -> score name -> float64[docs]
  scored_tokens: dict[str, np.ndarray]      # domain -> int64[docs]
  hes_threshold: float  # bits; one for the whole pool
  quality_score: str = "loss_bits"
  keep: str = "lowest"

  def __post_init__(self):
    if self.quality_score not in SCORES:
      raise DataError(f"config key reference.quality_score={self.quality_score!r}: "
                      f"known scores {SCORES}")
    if self.keep not in KEEP:
      raise DataError(f"config key reference.keep={self.keep!r}: one of {KEEP}")

  def n_docs(self, domain: str) -> int:
    return len(self.scored_tokens[self._domain(domain)])

  def _domain(self, domain: str) -> str:
    if domain not in self.scores:
      raise DataError(f"document scores have no domain {domain!r} (scored domains: "
                      f"{list(self.domains)}); re-run --stage=reference")
    return domain

  def keep_mask(self, domain: str, fraction: float) -> np.ndarray:
    """bool[docs]: the documents a quality filter keeping `fraction` of them keeps."""
    s = self.scores[self._domain(domain)][self.quality_score]
    n = len(s)
    if not 0 < float(fraction) <= 1:
      raise DataError(f"quality filter of domain {domain!r}: keep fraction {fraction} "
                      "must lie in (0, 1]")
    if float(fraction) >= 1:
      return np.ones(n, bool)
    key = np.where(np.isfinite(s), s if self.keep == "lowest" else -s, np.inf)
    order = np.lexsort((np.arange(n), key))
    mask = np.zeros(n, bool)
    mask[order[:max(1, int(round(float(fraction) * n)))]] = True
    return mask

  def save(self, path: str | pathlib.Path) -> None:
    from causalmix_jax import artifacts  # pylint: disable=import-outside-toplevel
    arrays = {"domains": np.array(self.domains),
              "settings": np.array([self.quality_score, self.keep]),
              "hes_threshold": np.array(self.hes_threshold)}
    for d in self.domains:
      arrays[f"{d}/scored_tokens"] = self.scored_tokens[d]
      for s in SCORES:
        arrays[f"{d}/{s}"] = self.scores[d][s]
    artifacts.write_npz(path, **arrays)

  @classmethod
  def load(cls, path: str | pathlib.Path) -> "DocScores":
    path = pathlib.Path(path)
    try:
      with np.load(path, allow_pickle=False) as z:
        domains = tuple(str(d) for d in z["domains"])
        quality_score, keep = (str(v) for v in z["settings"])
        thr = float(z["hes_threshold"])
        scores = {d: {s: z[f"{d}/{s}"].astype(np.float64) for s in SCORES}
                  for d in domains}
        tokens = {d: z[f"{d}/scored_tokens"].astype(np.int64) for d in domains}
    except (OSError, KeyError, ValueError) as e:
      raise DataError(f"{path}: unreadable document scores ({e}); re-run "
                      "--stage=reference") from None
    return cls(domains, scores, tokens, thr, quality_score, keep)


def from_token_scores(domains: Sequence[str], doc_starts: Mapping[str, np.ndarray],
                      loss_bits: Mapping[str, np.ndarray],
                      entropy_bits: Mapping[str, np.ndarray],
                      scored: Mapping[str, np.ndarray], *, quality_score: str = "loss_bits",
                      keep: str = "lowest") -> DocScores:
  """Document scores from per-token ones (one value per stream position; `scored` marks
  the positions that were scored: predicted and in the loss mask)."""
  out_scores, out_tokens = {}, {}
  every = [np.asarray(entropy_bits[d], np.float64)[np.asarray(scored[d], bool)]
           for d in domains]
  every = np.concatenate(every) if every else np.zeros(0)
  threshold = float(np.quantile(every, 1.0 - HES_QUANTILE)) if len(every) else np.inf
  for d in domains:
    sc = np.asarray(scored[d], bool)
    ent = np.asarray(entropy_bits[d], np.float64)
    n = len(sc)
    starts = np.asarray(doc_starts[d], np.int64)
    starts = starts[starts < n]
    high = np.where(sc & (ent >= threshold), ent, 0.0)
    sums = {}
    for name, vals in (("loss_bits", np.where(sc, loss_bits[d], 0.0)),
                       ("entropy_bits", np.where(sc, ent, 0.0)), ("hes_bits", high)):
      sums[name] = np.add.reduceat(np.asarray(vals, np.float64), starts) if n else \
          np.zeros(0)
    count = np.add.reduceat(sc.astype(np.int64), starts) if n else np.zeros(0, np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
      out_scores[d] = {k: np.where(count > 0, v / np.maximum(count, 1), np.nan)
                       for k, v in sums.items()}
    out_tokens[d] = count.astype(np.int64)
  return DocScores(tuple(domains), out_scores, out_tokens, threshold, quality_score, keep)


def exposed_features(scores: DocScores, domain: str, starts: np.ndarray, n_stream: int,
                     keep_D: np.ndarray | None, n_tokens: int, dup: int
                     ) -> tuple[dict[str, float], float]:
  """Token-weighted mean scores over the tokens a pool state exposes of one domain, and
  the number of those tokens: the kept documents' stream cut to its first `n_tokens`
  tokens, whose last `dup` tokens are copies of its first `dup`.

  Returns ({feature name: value}, exposed tokens); documents without a scored token
  count at the domain's mean.
  """
  length = pool_lib.doc_lengths(starts, n_stream)
  keep = np.ones(len(length), bool) if keep_D is None else np.asarray(keep_D, bool)
  kept_len = np.where(keep, length, 0)
  cum = np.concatenate([[0], np.cumsum(kept_len)])
  n = min(int(n_tokens), int(cum[-1]))
  out = {}
  tok = scores.scored_tokens[domain]
  for name in SCORES:
    s = scores.scores[domain][name]
    fill = float(np.sum(np.nan_to_num(s) * tok) / max(tok.sum(), 1))
    s = np.where(np.isfinite(s), s, fill)
    cum_val = np.concatenate([[0.0], np.cumsum(kept_len * s)])

    def upto(t: int) -> float:  # sum of the score over the first t kept tokens
      j = int(np.searchsorted(cum, t, side="right")) - 1
      j = min(j, len(length) - 1)
      return float(cum_val[j] + (t - cum[j]) * s[j]) if t > cum[j] else float(cum_val[j])

    total = upto(n - dup) + upto(dup)
    value = total / max(n, 1)
    out[FEATURES[name]] = value * _HES_PER if name == "hes_bits" else value
  return out, float(n)
