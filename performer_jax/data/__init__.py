"""Data on disk: raw formats, their preparation, and prepared datasets.

  prepare.py            `performer-data prepare`: raw data -> a prepared
                        dataset, in one streaming pass
  dataset.py            the prepared format and its readers (what training
                        opens); verify.py checks it byte by byte
  sequence_formats.py,  parsing FASTA, BLAST databases, text, bytes and
  image_formats.py      images in bounded memory (with fasta.py's alphabet,
                        idx.py, cifar.py, imagenet.py)
  files.py, defaults.py (compressed) files; where the embedded default
                        datasets are
"""
