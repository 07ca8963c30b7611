"""Raw byte corpora for byte-level language modelling.

`read_bytes` returns a file's bytes as a uint8 array, decompressing gzip, bz2
and single-member zip (e.g. `enwik8.zip`) transparently. Splits:

  * enwik8: exactly 10^8 bytes, split 90M / 5M / 5M (train/valid/test), the
    convention of the Transformer-XL and Performer papers.
  * anything else (e.g. the Wikipedia sample from the gensim wheel): split by
    byte fractions, 90% / 5% / 5% by default, in file order.
"""

from __future__ import annotations

import os

import numpy as np

from performer_jax.data import defaults
from performer_jax.data import files

ENWIK8_NUM_BYTES = 100_000_000
ENWIK8_SPLIT_BYTES = (90_000_000, 5_000_000, 5_000_000)
SPLITS = ("train", "valid", "test")


def read_bytes(path: str | os.PathLike[str], *,
               provider: str = defaults.USER_FILE_PROVIDER,
               member: str | None = None) -> np.ndarray:
  """Reads a (possibly compressed) file as uint8 [num_bytes].

  Args:
    path: plain, gzip, bz2 or zip file (zip: see `member`).
    provider: named in the error when the file is missing.
    member: the member to read from a zip archive or wheel.
  """
  p = files.require_file(path, provider)
  data = files.read_all(p, member)
  if not data:
    raise ValueError(f"{p}: file is empty")
  return np.frombuffer(data, dtype=np.uint8)


def read_wiki_sample(path: str | os.PathLike[str] | None = None) -> np.ndarray:
  """The gensim Wikipedia XML sample, uint8 [6_089_746].

  Args:
    path: the extracted `.bz2` or the gensim wheel itself; None means the
      copy `scripts/setup_data.sh` put in the data directory.
  """
  path = defaults.wiki_sample() if path is None else path
  member = None
  if str(path).endswith(".whl"):
    member = defaults.WIKI_SAMPLE_WHEEL_MEMBER
  return read_bytes(path, provider=defaults.WIKI_SAMPLE_PROVIDER,
                    member=member)


def split_by_fraction(data: np.ndarray,
                      fractions: tuple[float, float, float] = (0.9, 0.05, 0.05)
                      ) -> dict[str, np.ndarray]:
  """Splits uint8 [n] into consecutive train/valid/test views.

  The valid and test sizes are floor(fraction * n); train gets the rest.
  """
  if len(fractions) != 3 or any(f <= 0 for f in fractions) or abs(
      sum(fractions) - 1.0) > 1e-6:
    raise ValueError(f"fractions must be 3 positive numbers summing to 1, got "
                     f"{fractions}")
  n = data.shape[0]
  n_valid = int(fractions[1] * n)
  n_test = int(fractions[2] * n)
  n_train = n - n_valid - n_test
  return {"train": data[:n_train],
          "valid": data[n_train:n_train + n_valid],
          "test": data[n_train + n_valid:]}


def split_enwik8(data: np.ndarray, path: str = "enwik8"
                 ) -> dict[str, np.ndarray]:
  """The standard 90M/5M/5M split of enwik8 (uint8 [10^8])."""
  if data.shape[0] != ENWIK8_NUM_BYTES:
    raise ValueError(f"{path}: has {data.shape[0]} bytes, enwik8 has exactly "
                     f"{ENWIK8_NUM_BYTES}; for another corpus use "
                     "source='file' (fraction split)")
  a, b, _ = ENWIK8_SPLIT_BYTES
  return {"train": data[:a], "valid": data[a:a + b], "test": data[a + b:]}
