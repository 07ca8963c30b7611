"""Protein causal language modelling (the Performer paper's unidirectional
TrEMBL task).

Launch (from any directory):
  performer-train --config=protein_lm:cpu --workdir=/tmp/plm
  performer-train --config=protein_lm:cpu,softmax --workdir=/tmp/plm_sm

Argument: `<variant>[,<attention>]` as protein_mlm. Each sequence
is `[BOS, residues, EOS]`; rows are windows of L+1 tokens, predicting every
next token (padding excluded from the loss).

Expected results: see README "Results". paper (TPU scale, test set):
Transformer 30.80% accuracy / perplexity 9.37, Performer-ReLU 31.58% / 9.17;
the empirical (unigram) baseline 9.92% / 17.80.
"""

from performer_jax.configs import options


def get_config(arg: str = ""):
  return options.build(
      "protein_lm", arg,
      paper={"model.num_layers": 36, "model.num_heads": 8,
             "model.emb_dim": 512, "model.mlp_dim": 1024,
             "model.attention.num_features": 256,
             "optimizer.warmup_steps": 10_000, "trainer.steps": 500_000})
