"""Readers for the raw data formats (FASTA, bytes, IDX, npz, CIFAR pickles).

Each reader lives in its own module: `fasta`, `text`, `idx`, `imagenet`,
`cifar`; `files` opens (compressed) files and `defaults` says where the
embedded default datasets are.
"""
