"""Data on disk: raw formats, their preparation, and prepared datasets.

  prepare.py         `performer-data prepare`: raw data -> a prepared dataset
  shards.py          its workers: one piece of input -> one shard per split
  dataset.py         the prepared format and its readers; verify.py checks it
  *_formats.py       FASTA, BLAST databases, text, bytes and images parsed in
                     bounded memory (fasta.py, idx.py, cifar.py, imagenet.py)
  files.py           (compressed) files
  defaults.py        where the embedded default datasets are
"""
