"""The channel-major image layout of downsampled ImageNet and CIFAR-10.

Downsampled ImageNet (32x32 / 64x64) npz batches (`train_data_batch_<k>.npz`,
`val_data.npz`) hold `data`: uint8 [N, 3*s*s] channel-major (all red, then
green, then blue, each row-major) and `labels` [N] (1-based classes);
training batches also hold `mean`. CIFAR-10 python batches use the same
layout with s = 32. `prepare` (image_formats.py) reads both.
"""

from __future__ import annotations

import math

import numpy as np



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
