"""The value every surface and baseline answers with: a mean and an interval per row,
optionally with the draws they came from."""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import stats


def central_z(ci: float) -> float:
  """The standard normal quantile whose central interval holds `ci` (1.645 at 0.9)."""
  return float(stats.norm.ppf(0.5 + ci / 2))


@dataclasses.dataclass(frozen=True)
class Prediction:
  """mean, lo, hi: arrays of the same shape (rows of the query, or D for theta).
  samples: optional draws, shape (S, *mean.shape). ci: the interval's mass."""
  mean: np.ndarray
  lo: np.ndarray
  hi: np.ndarray
  samples: np.ndarray | None = None
  ci: float = 0.9

  def __post_init__(self):
    for name in ("mean", "lo", "hi"):
      object.__setattr__(self, name, np.asarray(getattr(self, name), dtype=np.float64))
    if not (self.mean.shape == self.lo.shape == self.hi.shape):
      raise ValueError(f"Prediction: mean {self.mean.shape}, lo {self.lo.shape}, "
                       f"hi {self.hi.shape} must have one shape")
    if self.samples is not None:
      s = np.asarray(self.samples, dtype=np.float64)
      if s.shape[1:] != self.mean.shape:
        raise ValueError(f"Prediction: samples {s.shape} do not end in {self.mean.shape}")
      object.__setattr__(self, "samples", s)

  @classmethod
  def from_samples(cls, samples: np.ndarray, ci: float = 0.9) -> "Prediction":
    """Mean and central `ci` interval of draws along axis 0."""
    s = np.asarray(samples, dtype=np.float64)
    q = (1.0 - ci) / 2.0
    return cls(s.mean(0), np.quantile(s, q, axis=0), np.quantile(s, 1.0 - q, axis=0),
               s, ci)

  @property
  def width(self) -> np.ndarray:
    return self.hi - self.lo

  def covers(self, truth: np.ndarray) -> np.ndarray:
    """Boolean array: truth within [lo, hi]."""
    t = np.asarray(truth, dtype=np.float64)
    return (self.lo <= t) & (t <= self.hi)

  def to_dict(self) -> dict[str, list[float] | float]:
    return {"mean": self.mean.tolist(), "lo": self.lo.tolist(), "hi": self.hi.tolist(),
            "ci": self.ci}
