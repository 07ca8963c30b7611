"""Downsampled ImageNet (32x32 / 64x64) npz batches.

Each file (`train_data_batch_<k>.npz`, `val_data.npz`) holds `data`:
uint8 [N, 3*s*s] channel-major (all red, then green, then blue, each row-major)
and `labels` [N] (1-based classes); training batches also hold `mean`.
"""

from __future__ import annotations

import math
import os
import zipfile

import numpy as np

from performer_jax.data import defaults
from performer_jax.data import files


def channel_major_to_nhwc(data: np.ndarray, channels: int,
                          path: str) -> np.ndarray:
  """uint8 [N, C*s*s] channel-major rows -> uint8 [N, s, s, C]."""
  if data.ndim != 2 or data.dtype != np.uint8:
    raise ValueError(f"{path}: image data must be uint8 [N, {channels}*s*s], "
                     f"got {data.dtype} {data.shape}")
  side = math.isqrt(data.shape[1] // channels)
  if channels * side * side != data.shape[1]:
    raise ValueError(f"{path}: rows of {data.shape[1]} values are not "
                     f"{channels} square channels")
  return np.ascontiguousarray(
      data.reshape(-1, channels, side, side).transpose(0, 2, 3, 1))


def read_imagenet_npz(path: str | os.PathLike[str], *,
                      provider: str = defaults.USER_FILE_PROVIDER
                      ) -> tuple[np.ndarray, np.ndarray]:
  """Reads one batch: (images uint8 [N, s, s, 3], labels int64 [N])."""
  p = files.require_file(path, provider)
  if files.compression_of(p) != "zip":  # an npz is a zip of .npy files
    raise ValueError(f"{p}: not a readable npz file (no zip header)")
  try:
    with np.load(p, allow_pickle=False) as npz:
      if "data" not in npz.files or "labels" not in npz.files:
        raise ValueError(f"{p}: npz batch must hold 'data' and 'labels', it "
                         f"holds {sorted(npz.files)}")
      data, labels = npz["data"], np.asarray(npz["labels"])
  except (OSError, EOFError, zipfile.BadZipFile) as e:
    raise ValueError(f"{p}: not a readable npz file: {e}") from e
  except ValueError as e:  # object (pickled) arrays, which we never unpickle
    raise ValueError(f"{p}: 'data' and 'labels' must be plain numeric arrays "
                     f"({e}); save them as uint8 / integer numpy arrays, "
                     "without pickled objects") from e
  if data.ndim >= 1 and data.shape[0] == 0:
    raise ValueError(f"{p}: the npz batch holds no images ('data' has shape "
                     f"{data.shape}); point the path at a non-empty batch")
  images = channel_major_to_nhwc(data, 3, str(p))
  labels = labels.reshape(-1).astype(np.int64)
  if labels.shape[0] != images.shape[0]:
    raise ValueError(f"{p}: {images.shape[0]} images but {labels.shape[0]} "
                     "labels")
  return images, labels
