"""CSV and plotting helpers shared by the experiment scripts."""

from __future__ import annotations

import csv
import os
from typing import Sequence

import matplotlib

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
