"""Protein causal language modelling (the Performer paper's unidirectional
TrEMBL task).

Launch (from the repository root):
  performer-train --config=configs/protein_lm.py:cpu --workdir=/tmp/plm
  performer-train --config=configs/protein_lm.py:cpu,softmax --workdir=/tmp/plm_sm

Argument: `<variant>[,<attention>]` as configs/protein_mlm.py. Each sequence
is `[BOS, residues, EOS]`; rows are windows of L+1 tokens, predicting every
next token (padding excluded from the loss).

Expected results: see README "Results". paper (TPU scale, test set):
Transformer 30.80% accuracy / perplexity 9.37, Performer-ReLU 31.58% / 9.17;
the empirical (unigram) baseline 9.92% / 17.80.
"""

from configs import options


def get_config(arg: str = ""):
  # The paper's protein architecture, as configs/protein_mlm.py.
  return options.build(
      "protein_lm", arg,
      paper_model=dict(num_layers=36, num_heads=8, emb_dim=512, mlp_dim=1024,
                       num_features=256),
      paper_steps=500_000, paper_warmup=10_000)
