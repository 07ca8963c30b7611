"""The training loop's batches, prepared ahead by grain.

Batches stay pure functions of the step (`source.get_batch(step)`, see
tasks/base.py), so a resumed run starts its pipeline at the step it resumes
from and continues exactly. grain turns that random-access source into a
`MapDataset` over steps and prefetches it in a background thread (the batch
work is numpy and file reads, which release the GIL), so host data work
overlaps device compute; the loop logs the time it still waits for a batch
as `data_wait`.
"""

from __future__ import annotations

import sys
from typing import Iterator

import grain
import numpy as np

from performer_jax.tasks import base


def local_batches(source: base.BatchSource, start: int, *, prefetch: int
                  ) -> Iterator[dict[str, np.ndarray]]:
  """This process's batches `start, start + 1, ...` of `source`, with
  `prefetch` of them prepared ahead (0: built on demand)."""
  dataset = grain.MapDataset.range(start, sys.maxsize).map(
      source.get_batch).to_iter_dataset()
  if prefetch > 0:
    dataset = grain.experimental.ThreadPrefetchIterDataset(
        dataset, prefetch_buffer_size=prefetch)
  return iter(dataset)
