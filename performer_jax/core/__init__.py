"""What the Linen and the NNX modules share: the attention layer's math
(attention.py), the Transformer's structure (transformer.py), the embeddings'
math (embeddings.py) and logical-axis sharding (sharding.py)."""
