"""Byte-level causal language modelling (enwik8-style), reporting bits/byte.

Launch (from any directory):
  performer-train --config=text_lm:cpu --workdir=/tmp/text
  performer-train --config=text_lm:paper \
      --config.data.path=/data/enwik8 --workdir=/tmp/enwik8

Argument: `<variant>[,<attention>]` as protein_mlm. Default data:
6.09 MB of Wikipedia XML (from the gensim wheel, starting at "Anarchism" like
enwik8), split 90/5/5; `paper` reads enwik8 itself with the 90M/5M/5M split.

Expected results: see README "Results" (cpu: 2 layers, width 128, L=256,
1000 steps). The unigram baseline is 5.19 bits/byte; published enwik8
Transformers reach ~1.0-1.1 bits/byte at TPU scale.
"""

from performer_jax.configs import options


def get_config(arg: str = ""):
  return options.build(
      "text_lm", arg,
      paper={"model.num_layers": 12, "model.num_heads": 8,
             "model.emb_dim": 512, "model.mlp_dim": 2048,
             "model.attention.num_features": 256,
             "optimizer.warmup_steps": 10_000, "trainer.steps": 400_000})
