"""The protein alphabet of FASTA files (TrEMBL, UniRef50, mmseqs2).

Records are parsed by `prepare` (sequence_formats.py): sequences are
upper-cased and joined over lines, one trailing '*' (stop marker) is
dropped, and any other character outside the 25 letters below, or an empty
sequence, makes a record invalid (an error, or skipped and counted with
--skip-invalid). `tasks.protein.encode` (performer-score, performer-generate)
reads a sequence by the same rule.
"""

STANDARD_AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
# The 20 standard amino acids plus the ambiguous and rare B Z X U O.
AMINO_ACIDS = STANDARD_AMINO_ACIDS + "BZXUO"
