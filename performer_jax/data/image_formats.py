"""Image inputs for `prepare`: downsampled ImageNet npz batches (streamed in
row blocks, so memory does not grow with the batch), CIFAR-10 python
batches and IDX files (read one file at a time: their sizes are fixed by
their formats). Every image is written as uint8 [H, W, C]."""

from __future__ import annotations

import hashlib
import os
import zipfile
from typing import Any, Iterator

import numpy as np

from performer_jax.data import cifar
from performer_jax.data import dataset as prepared
from performer_jax.data import idx
from performer_jax.data import imagenet

ROWS_PER_BLOCK = 2048


def _npz_member(zf: zipfile.ZipFile, name: str, path: str):
  if name not in zf.namelist():
    raise ValueError(f"{path}: npz batch must hold 'data' and 'labels', it "
                     f"holds {sorted(n[:-4] for n in zf.namelist())}")
  # np.savez writes a zip of .npy files; read the header, then the rows.
  f = zf.open(name)
  version = np.lib.format.read_magic(f)
  read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                 else np.lib.format.read_array_header_2_0)
  shape, fortran, dtype = read_header(f)
  if dtype.hasobject:
    raise ValueError(f"{path}: '{name[:-4]}' is an object array; save the "
                     "images as a uint8 numpy array, without pickled objects")
  return f, shape, fortran, dtype


def imagenet_blocks(path: str) -> Iterator[np.ndarray]:
  """uint8 [n, s, s, 3] blocks of one downsampled-ImageNet npz batch."""
  try:
    zf = zipfile.ZipFile(path)
  except (OSError, zipfile.BadZipFile) as e:
    raise ValueError(f"{path}: not a readable npz file: {e}") from e
  with zf:
    f, shape, fortran, dtype = _npz_member(zf, "data.npy", path)
    labels, label_shape, _, _ = _npz_member(zf, "labels.npy", path)
    labels.close()
    if len(shape) != 2 or dtype != np.uint8 or fortran:
      raise ValueError(f"{path}: 'data' must be a C-ordered uint8 [N, 3*s*s] "
                       f"array, got {dtype} {shape}")
    if shape[0] == 0:
      raise ValueError(f"{path}: the npz batch holds no images ('data' has "
                       f"shape {shape}); point the path at a non-empty batch")
    if int(np.prod(label_shape)) != shape[0]:
      raise ValueError(f"{path}: {shape[0]} images but "
                       f"{int(np.prod(label_shape))} labels")
    width = shape[1]
    with f:
      for start in range(0, shape[0], ROWS_PER_BLOCK):
        rows = min(ROWS_PER_BLOCK, shape[0] - start)
        raw = f.read(rows * width)
        if len(raw) != rows * width:
          raise ValueError(f"{path}: 'data' is truncated at image {start}")
        yield imagenet.channel_major_to_nhwc(
            np.frombuffer(raw, np.uint8).reshape(rows, width), 3, path)


def read_blocks(fmt: str, path: str) -> Iterator[np.ndarray]:
  if fmt == "imagenet_npz":
    yield from imagenet_blocks(path)
  elif fmt == "cifar":
    yield cifar.read_cifar_batch(path)[0]
  else:
    images = idx.read_idx_images(path)
    if images.shape[0] == 0:
      raise ValueError(f"{path}: the IDX file holds no images")
    yield images


def image_piece(task: dict[str, Any]) -> dict[str, Any]:
  """Worker: one image file -> shard `task["name"]` of split "all"."""
  directory = os.path.join(task["tmp"], "all")
  os.makedirs(directory, exist_ok=True)
  out_path = os.path.join(directory, f"{task['name']}.images")
  records, shape = 0, None
  unigram = np.zeros(256, np.int64)
  digest = hashlib.sha256()
  with open(out_path, "wb") as out:
    for block in read_blocks(task["format"], task["path"]):
      if shape is None:
        shape = block.shape[1:]
      elif block.shape[1:] != shape:
        raise ValueError(f"{task['path']}: images of shapes {shape} and "
                         f"{block.shape[1:]} in one file")
      data = np.ascontiguousarray(block).tobytes()
      out.write(data)
      digest.update(data)
      unigram += prepared.byte_counts(block.reshape(-1))
      records += block.shape[0]
  size = records * int(np.prod(shape))
  return {"shards": {"all": {"name": task["name"], "records": records,
                             "tokens": size, "unigram": unigram.tolist(),
                             "sha256": digest.hexdigest(),
                             "length_min": int(np.prod(shape)),
                             "length_max": int(np.prod(shape))}},
          "skipped": 0, "examples": [], "sha256": "", "piece": task["piece"],
          "image_shape": list(shape)}
