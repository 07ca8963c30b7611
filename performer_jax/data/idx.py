"""IDX reader (the MNIST / Fashion-MNIST format), gzipped or not.

Layout: 2 zero bytes, a type code, the number of dimensions d, then d
big-endian uint32 sizes and the row-major data (big-endian for multi-byte
types). The reader checks the magic number, the sizes and that the file
length matches them exactly; errors name the file.
"""

from __future__ import annotations

import os

import numpy as np

from performer_jax.data import defaults
from performer_jax.data import files

_DTYPES = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8),
           0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
           0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str | os.PathLike[str], *,
             provider: str = defaults.USER_FILE_PROVIDER) -> np.ndarray:
  """Reads any IDX file into an array of its declared dtype and shape."""
  p = files.require_file(path, provider)
  raw = files.read_all(p)
  if len(raw) < 4:
    raise ValueError(f"{p}: {len(raw)} bytes is too short for an IDX header")
  if raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
    raise ValueError(f"{p}: bad IDX magic number {raw[:4].hex()} (expected "
                     "00 00 <type code 08/09/0b/0c/0d/0e> <ndim>)")
  dtype = _DTYPES[raw[2]]
  ndim = raw[3]
  if ndim == 0:
    raise ValueError(f"{p}: IDX header declares 0 dimensions")
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise ValueError(f"{p}: truncated IDX header ({len(raw)} bytes, need "
                     f"{header} for {ndim} dimensions)")
  shape = tuple(int(x) for x in np.frombuffer(raw, ">u4", ndim, offset=4))
  expected = header + int(np.prod(shape)) * dtype.itemsize
  if len(raw) != expected:
    raise ValueError(f"{p}: file has {len(raw)} bytes but its IDX header "
                     f"(shape {shape}, {dtype}) needs {expected}; the file is "
                     "truncated or corrupt")
  data = np.frombuffer(raw, dtype, offset=header).reshape(shape)
  return data.astype(dtype.newbyteorder("="))


def read_idx_images(path: str | os.PathLike[str], *,
                    provider: str = defaults.USER_FILE_PROVIDER) -> np.ndarray:
  """Reads an IDX image file as uint8 [N, H, W, C].

  Accepts ubyte data of shape [N, H, W] (grayscale, C=1) or [N, H, W, C].
  """
  data = read_idx(path, provider=provider)
  if data.dtype != np.uint8:
    raise ValueError(f"{path}: IDX images must be unsigned bytes (type 0x08), "
                     f"got {data.dtype}")
  if data.ndim == 3:
    data = data[..., None]
  if data.ndim != 4:
    raise ValueError(f"{path}: IDX images must have 3 or 4 dimensions "
                     f"[N, H, W(, C)], got shape {data.shape}")
  return data
