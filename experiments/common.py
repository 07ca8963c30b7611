"""CSV and plotting helpers shared by the experiment scripts."""

from __future__ import annotations

import csv
import os
from typing import Sequence

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)


def write_csv(path: str, rows: Sequence[dict]) -> None:
  """Writes dict rows (same keys) to `path`, creating its directory."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  print(f"wrote {path}")


def save_figure(fig, path: str) -> None:
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  print(f"wrote {path}")


def int_list(text: str) -> list[int]:
  return [int(t) for t in text.split(",") if t]


def float_list(text: str) -> list[float]:
  return [float(t) for t in text.split(",") if t]


def log_fit(xs: Sequence[float], ys: Sequence[float]
            ) -> tuple[float, float, float]:
  """(b, r2, alpha): the fit y = a + b log2 x with its R^2, and the exponent
  alpha of the fit y ~ x^alpha (a straight line on log-log axes)."""
  x = np.log2(np.asarray(xs, float))
  y = np.asarray(ys, float)
  b, a = np.polyfit(x, y, 1)
  r2 = 1 - ((y - (a + b * x)) ** 2).sum() / max(((y - y.mean()) ** 2).sum(),
                                                 1e-12)
  alpha = np.polyfit(x, np.log2(y), 1)[0]
  return float(b), float(r2), float(alpha)


def smallest(ok, lo: int, hi_max: int, *, start: int | None = None,
             resolution: float = 1.25) -> int:
  """Smallest n in [lo, hi_max] with ok(n), up to a factor `resolution`.

  Probes `start` (default lo), halves down to the last failure or doubles
  up to the first success, then bisects geometrically; returns hi_max + 1
  if ok(hi_max) fails. Assumes ok is monotone; for a random ok, make each
  probe a vote over several draws (the callers do), or the answer carries
  one draw's noise.
  """
  n = max(lo, min(start or lo, hi_max))
  if ok(n):
    good, bad = n, lo - 1
    while good > lo:
      n = max(lo, good // 2)
      if not ok(n):
        bad = n
        break
      good = n
  else:
    bad = n
    while True:
      if bad >= hi_max:
        return hi_max + 1
      n = min(2 * bad, hi_max)
      if ok(n):
        good = n
        break
      bad = n
  while bad >= lo and good > resolution * bad and good - bad > 1:
    mid = min(max(int(round(np.sqrt(good * bad))), bad + 1), good - 1)
    if ok(mid):
      good = mid
    else:
      bad = mid
  return good
