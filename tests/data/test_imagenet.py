"""Downsampled ImageNet npz batches, read by `prepare` in row blocks."""

import numpy as np
import pytest

from performer_jax.data import image_formats
from performer_jax.data import prepare


def read(path):
  return np.concatenate(list(image_formats.imagenet_blocks(str(path))))


def test_channel_major_layout(tmp_path, monkeypatch):
  n, s = 5, 4
  data = np.random.default_rng(0).integers(0, 256, (n, 3 * s * s), np.uint8)
  path = tmp_path / "train_data_batch_1.npz"
  np.savez(path, data=data, labels=np.array([1, 5, 1000, 2, 3]),
           mean=np.zeros(3 * s * s))
  monkeypatch.setattr(image_formats, "ROWS_PER_BLOCK", 2)  # 3 blocks
  images = read(path)
  assert images.shape == (n, s, s, 3) and images.dtype == np.uint8
  for i in range(n):
    for h in range(s):
      for w in range(s):
        for c in range(3):
          assert images[i, h, w, c] == data[i, c * s * s + h * s + w]


@pytest.mark.parametrize("arrays,message", [
    (dict(data=np.zeros((2, 12), np.uint8)),
     r"val\.npz: npz batch must hold 'data' and 'labels', it holds \['data'\]"),
    (dict(data=np.zeros((2, 3 * 10), np.uint8), labels=[0, 1]),
     r"val\.npz: rows of 30 values are not 3 square channels"),
    (dict(data=np.zeros((2, 12), np.uint8), labels=[0]),
     r"val\.npz: 2 images but 1 labels"),
    (dict(data=np.zeros((0, 12), np.uint8), labels=np.zeros(0)),
     r"val\.npz: the npz batch holds no images"),
    (dict(data=np.array([np.zeros(3), "x"], dtype=object),
          labels=np.zeros(2)),
     r"val\.npz: 'data' is an object array; save the images as a uint8"),
    (dict(data=np.zeros((2, 12), np.float32), labels=[0, 1]),
     r"val\.npz: 'data' must be a C-ordered uint8"),
])
def test_malformed_batches_are_named(tmp_path, arrays, message):
  path = tmp_path / "val.npz"
  np.savez(path, **arrays)
  with pytest.raises(ValueError, match=message):
    read(path)


def test_not_an_npz_and_missing_file(tmp_path):
  path = tmp_path / "text.npz"
  path.write_bytes(b"hello")
  with pytest.raises(ValueError, match=r"text\.npz: not a readable npz"):
    read(path)
  with pytest.raises(FileNotFoundError, match=r"gone\.npz.*provided by you"):
    prepare.ensure_prepared(str(tmp_path / "gone.npz"), "imagenet_npz",
                            provider="you: set the path")
