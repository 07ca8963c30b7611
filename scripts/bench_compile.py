"""Where a train step's compile time goes: the size of its program.

Lowers the gradient of the language-model loss of `scripts/bench_train.py`'s
model (4 layers, width 256, 4 heads, MLP 1024, batch 8, causal) for each
attention and implementation, for a target platform (`--platform cuda` or
`tpu` lowers on this machine, without the device), and prints the number of
StableHLO operations, the most frequent ones, and the lowering time; on the
local platform also the XLA compile time.

  python scripts/bench_compile.py --lengths 1024,4096,16384 --platform cuda
"""

import argparse
import collections
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from performer_jax import linen as pnn
from performer_jax.attention import pallas_favor
from performer_jax.attention import pallas_segments
from performer_jax.schemas import AttentionConfig
from performer_jax.schemas import ModelConfig
# pylint: enable=g-import-not-at-top,wrong-import-position

CASES = (("softmax", "auto"), ("favor", "parallel"), ("favor", "slim"),
         ("favor", "autodiff"), ("favor", "pallas"),
         ("softmax", "auto", "bfloat16"), ("favor", "pallas", "bfloat16"))
BATCH, VOCAB = 8, 256


def lower(kind: str, implementation: str, length: int, platform: str,
          dtype: str = "float32"):
  """The lowered `grad(loss)` of the benchmark model at `length`, computing
  in `dtype` (a GPU's "pallas" serves bf16 only: float32 runs
  "parallel")."""
  attention = AttentionConfig(kind=kind, num_features=256, chunk_size=64,
                              implementation=implementation)
  config = ModelConfig(num_layers=4, num_heads=4, emb_dim=256, mlp_dim=1024,
                       max_len=length, dropout_rate=0.1, attention=attention,
                       dtype=dtype)
  model = pnn.make_model(config, vocab_size=VOCAB, causal=True)
  tokens = jax.ShapeDtypeStruct((BATCH, length), jnp.int32)
  rngs = {"params": jax.random.PRNGKey(0),
          "random_features": jax.random.PRNGKey(1)}
  variables = nn.meta.unbox(jax.eval_shape(
      lambda t: model.init(rngs, t), tokens))
  params = variables.pop("params")

  def loss(params, rest, tokens_BL, rng):
    logits = model.apply({"params": params, **rest}, tokens_BL,
                         deterministic=False, rngs={"dropout": rng})
    return optax.softmax_cross_entropy_with_integer_labels(
        logits[:, :-1], tokens_BL[:, 1:]).mean()

  traced = jax.jit(jax.grad(loss)).trace(
      params, variables, tokens, jax.ShapeDtypeStruct((2,), jnp.uint32))
  return traced.lower(lowering_platforms=(platform,))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--lengths", default="1024,4096,16384")
  parser.add_argument("--platform", default="cuda",
                      help="cuda, tpu or cpu (compiled only if local)")
  parser.add_argument("--sms", type=int, default=132,
                      help="the GPU's SMs for --platform cuda (H200: 132), "
                      "which set the stretches of causal \"pallas\"")
  args = parser.parse_args()
  local = {"cuda": "gpu"}.get(args.platform,
                              args.platform) == jax.default_backend()
  if not local:
    # "pallas" lowers the target's kernels (Triton or Mosaic TPU custom
    # calls), not the CPU's interpret mode.
    pallas_favor.platform = lambda: {"cuda": "gpu"}.get(args.platform,
                                                       args.platform)
    pallas_segments.sm_count = lambda: args.sms
  print(f"| L | attention | StableHLO ops | most frequent | lower s |"
        f"{' compile s |' if local else ''}")
  print(f"|---|---|---|---|---|{'---|' if local else ''}")
  for length in (int(x) for x in args.lengths.split(",")):
    for kind, implementation, *dtype in CASES:
      start = time.perf_counter()
      lowered = lower(kind, implementation, length, args.platform, *dtype)
      lower_s = time.perf_counter() - start
      ops = collections.Counter(re.findall(r"= \"?([a-z_]+\.[a-z_]+)",
                                           lowered.as_text()))
      top = ", ".join(f"{name.split('.')[1]} {n}"
                      for name, n in ops.most_common(3))
      row = (f"| {length:,} | {kind} {implementation} "
             f"{''.join(dtype) or 'float32'} | "
             f"{sum(ops.values()):,} | {top} | {lower_s:.1f} |")
      if local:
        start = time.perf_counter()
        lowered.compile()
        row += f" {time.perf_counter() - start:.1f} |"
      print(row, flush=True)


if __name__ == "__main__":
  main()
