"""Where the embedded default datasets are and what provides them.

All of them are installed by `bash scripts/setup_data.sh`:
  protein: Debian `mmseqs2-examples`, 20,000 UniProt sequences (train) and a
           separate set of 500 (eval).
  text:    the 6,089,746-byte Wikipedia XML sample in the gensim wheel,
           copied bz2-compressed into `files.data_dir()`.
  pixels:  Debian `dataset-fashion-mnist`, 60,000 + 10,000 28x28 images.
Debian packages that cannot be installed system-wide are unpacked under
`files.data_dir() / "debian"`, where the path functions fall back to.
"""

from __future__ import annotations

import pathlib

from performer_jax.data import files

MMSEQS2_DIR = pathlib.Path("/usr/share/doc/mmseqs2/example-data")
FASHION_MNIST_DIR = pathlib.Path("/usr/share/datasets/fashion-mnist")
WIKI_SAMPLE_NAME = ("enwiki-latest-pages-articles1.xml-p000000010p000030302-"
                    "shortened.bz2")
# The same file inside the gensim wheel, for readers given the wheel itself.
WIKI_SAMPLE_WHEEL_MEMBER = "gensim/test/test_data/" + WIKI_SAMPLE_NAME
WIKI_SAMPLE_NUM_BYTES = 6_089_746

PROTEIN_PROVIDER = (f"the Debian package mmseqs2-examples (run "
                    f"`{files.SETUP_COMMAND}` or `apt-get install "
                    "mmseqs2-examples`)")
FASHION_MNIST_PROVIDER = (f"the Debian package dataset-fashion-mnist (run "
                          f"`{files.SETUP_COMMAND}` or `apt-get install "
                          "dataset-fashion-mnist`)")
WIKI_SAMPLE_PROVIDER = (f"`{files.SETUP_COMMAND}`, which extracts it from the "
                        "gensim wheel (`pip download --no-deps gensim`) into "
                        f"${files.DATA_DIR_ENV} (default ~/.cache/"
                        "performer_jax)")
USER_FILE_PROVIDER = "you: set the path in the data config to a local copy"


def _installed(path: pathlib.Path) -> pathlib.Path:
  """`path`, or its copy unpacked under the data dir if only that exists."""
  unpacked = files.data_dir() / "debian" / path.relative_to(path.anchor)
  if not path.exists() and unpacked.exists():
    return unpacked
  return path


def protein_train() -> pathlib.Path:
  return _installed(MMSEQS2_DIR / "DB.fasta.gz")


def protein_eval() -> pathlib.Path:
  return _installed(MMSEQS2_DIR / "QUERY.fasta.gz")


def fashion_mnist(split: str, kind: str = "images") -> pathlib.Path:
  """Path of a Fashion-MNIST IDX file; split "train" or "test"."""
  prefix = {"train": "train", "test": "t10k"}[split]
  suffix = {"images": "images-idx3", "labels": "labels-idx1"}[kind]
  return _installed(FASHION_MNIST_DIR / f"{prefix}-{suffix}-ubyte.gz")


def wiki_sample() -> pathlib.Path:
  return files.data_dir() / WIKI_SAMPLE_NAME
