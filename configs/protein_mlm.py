"""Protein masked language modelling (the Performer paper's TrEMBL task).

Launch (from any directory):
  performer-train --config=protein_mlm:cpu --workdir=/tmp/pmlm
  performer-train --config=protein_mlm:cpu,favor_relu \
      --workdir=/tmp/pmlm_relu
  performer-train --config=protein_mlm:paper \
      --config.data.train_path=/data/uniprot_trembl.fasta.gz \
      --config.data.eval_path=/data/heldout.fasta.gz --workdir=gs://...

Argument: `<variant>[,<attention>]`, variant smoke | cpu (default) | paper,
attention softmax | favor (default) | favor_relu | l2 | l2_invertible
(see configs/options.py).

Data: 15% of residues are selected (80% -> [MASK], 10% -> a random amino
acid, 10% unchanged); loss and accuracy are on the selected residues only.
Sequences are randomly cropped (eval: the first L residues) or padded; padding
is masked out of attention and loss. Default data: the 20,000 UniProt
sequences of Debian's mmseqs2-examples for training and its 500 query
sequences for evaluation (`bash scripts/setup_data.sh` installs them).

Expected results (eval on the 500 held-out sequences; see README "Results"
for the full table measured on a 2-core CPU with this file):
  cpu:   2 layers, width 128, L=256, batch 16, 1000 steps (~2.5 min on a
         2-core CPU), measured: softmax 18.34% / perplexity 14.66, favor
         18.39% / 14.69, favor_relu 18.44% / 14.65, l2 18.12% / 15.15,
         against the unigram baseline's 9.57% / 18.13 (4.18 bits/residue).
  paper: TrEMBL at L=1024: Transformer 33.32% / perplexity 9.22,
         Performer-ReLU 36.09% / 8.36, Performer-softmax 33.00% / 9.24
         (Table 2 of Choromanski et al. 2021, TPU scale). paper here: L=1024, 36
         layers, 8 heads, d_model 512, d_ff 1024, 256 features, bf16.
"""

from performer_jax.configs import options


def get_config(arg: str = ""):
  return options.build(
      "protein_mlm", arg,
      paper={"model.num_layers": 36, "model.num_heads": 8,
             "model.emb_dim": 512, "model.mlp_dim": 1024,
             "model.attention.num_features": 256,
             "optimizer.warmup_steps": 10_000, "trainer.steps": 500_000})
