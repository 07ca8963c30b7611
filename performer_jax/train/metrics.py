"""Metric output: tensorboardX events, metrics.jsonl and progress display.

Only process 0 writes (`enabled=False` elsewhere makes every call a no-op).
metrics.jsonl holds one JSON object per line:
  {"step": 100, "split": "train", "loss": 2.1, "accuracy": 0.3, ...}
Progress goes to a tqdm bar (loss and tokens/s) when stdout is a terminal,
else to plain log lines through `logging`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from typing import Any, Mapping

import tensorboardX
import tqdm

log = logging.getLogger("performer_jax.train")


class MetricsWriter:
  """Writes scalar metrics to TensorBoard and metrics.jsonl in `workdir`."""

  def __init__(self, workdir: str, *, enabled: bool = True,
               purge_step: int | None = None):
    """Args: workdir; enabled (False on processes other than 0);
    purge_step: TensorBoard drops events at and after this step that an
    interrupted run wrote (set it to the resumed step + 1)."""
    self.enabled = enabled
    self._tb = None
    self._jsonl = None
    if enabled:
      os.makedirs(workdir, exist_ok=True)
      self._tb = tensorboardX.SummaryWriter(os.path.join(workdir, "tb"),
                                            purge_step=purge_step)
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")

  def write(self, step: int, split: str, metrics: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    record: dict[str, Any] = {"step": int(step), "split": split}
    for name, value in metrics.items():
      value = float(value)
      record[name] = value if math.isfinite(value) else str(value)
      self._tb.add_scalar(f"{split}/{name}", value, int(step))
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()

  def write_text(self, tag: str, text: str) -> None:
    if self.enabled:
      self._tb.add_text(tag, text, 0)

  def close(self) -> None:
    if self.enabled:
      self._tb.close()
      self._jsonl.close()


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """Reads back metrics.jsonl (for tests and plotting scripts)."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]


class Progress:
  """A tqdm bar on a terminal, periodic log lines otherwise."""

  def __init__(self, total: int, initial: int, *, mode: str = "auto",
               enabled: bool = True):
    use_tqdm = mode == "tqdm" or (mode == "auto" and sys.stdout.isatty())
    self.enabled = enabled
    self._bar = None
    if enabled and use_tqdm:
      self._bar = tqdm.tqdm(total=total, initial=initial, unit="step",
                            dynamic_ncols=True)
    self._last = initial

  def update(self, step: int, metrics: Mapping[str, float]) -> None:
    """Reports training metrics after `step` steps."""
    if not self.enabled:
      return
    if self._bar is not None:
      self._bar.update(step - self._last)
      self._bar.set_postfix(loss=f"{metrics['loss']:.4f}",
                            tok_s=f"{metrics.get('tokens_per_sec', 0):.0f}")
    else:
      parts = " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
      log.info("step %d: %s", step, parts)
    self._last = step

  def message(self, text: str) -> None:
    if not self.enabled:
      return
    if self._bar is not None:
      self._bar.write(text)
    else:
      log.info("%s", text)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
