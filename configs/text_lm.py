"""Byte-level causal language modelling (enwik8-style), reporting bits/byte.

Launch (from the repository root):
  performer-train --config=configs/text_lm.py:cpu --workdir=/tmp/text
  performer-train --config=configs/text_lm.py:paper \
      --config.data.path=/data/enwik8 --workdir=/tmp/enwik8

Argument: `<variant>[,<attention>]` as configs/protein_mlm.py. Default data:
6.09 MB of Wikipedia XML (from the gensim wheel, starting at "Anarchism" like
enwik8), split 90/5/5; `paper` reads enwik8 itself with the 90M/5M/5M split.

Expected results: see README "Results" (cpu: 2 layers, width 128, L=256,
1000 steps). The unigram baseline is 5.19 bits/byte; published enwik8
Transformers reach ~1.0-1.1 bits/byte at TPU scale.
"""

from configs import options


def get_config(arg: str = ""):
  return options.build(
      "text_lm", arg,
      paper_model=dict(num_layers=12, num_heads=8, emb_dim=512, mlp_dim=2048,
                       num_features=256),
      paper_steps=400_000, paper_warmup=10_000)
