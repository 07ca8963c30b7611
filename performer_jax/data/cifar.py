"""CIFAR-10 python batches (`data_batch_1..5`, `test_batch`).

Each is a pickled dict with b'data': uint8 [N, 3072] channel-major 32x32x3
and b'labels': list of N ints. Pickle can run code: only read files you trust.
"""

from __future__ import annotations

import os
import pickle

import numpy as np

from performer_jax.data import defaults
from performer_jax.data import files
from performer_jax.data import imagenet


def read_cifar_batch(path: str | os.PathLike[str], *,
                     provider: str = defaults.USER_FILE_PROVIDER
                     ) -> tuple[np.ndarray, np.ndarray]:
  """Reads one batch: (images uint8 [N, 32, 32, 3], labels int64 [N])."""
  p = files.require_file(path, provider)
  try:
    with files.open_binary(p) as f:
      batch = pickle.load(f, encoding="bytes")
  except (pickle.UnpicklingError, EOFError, ValueError) as e:
    raise ValueError(f"{p}: not a CIFAR python batch (unpickling failed: "
                     f"{e})") from e
  if not isinstance(batch, dict) or b"data" not in batch or (
      b"labels" not in batch):
    keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
    raise ValueError(f"{p}: CIFAR batch must be a dict with b'data' and "
                     f"b'labels', got {keys}")
  data = np.asarray(batch[b"data"])
  if data.ndim != 2 or data.shape[1] != 3072:
    raise ValueError(f"{p}: b'data' must be [N, 3072], got {data.shape}")
  images = imagenet.channel_major_to_nhwc(data, 3, str(p))
  labels = np.asarray(batch[b"labels"], dtype=np.int64).reshape(-1)
  if labels.shape[0] != images.shape[0]:
    raise ValueError(f"{p}: {images.shape[0]} images but {labels.shape[0]} "
                     "labels")
  return images, labels
