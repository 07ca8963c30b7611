"""What attention's backward pass keeps: the residuals of fwd+bwd.

For `--preset accelerator`'s shape (B4 H8 D64 m256, bf16 inputs, chunk 64)
prints, per implementation, mode and length, the bytes `jax.vjp` keeps
from the forward pass for the backward one and the largest of them,
traced for a target platform (`--platform cuda` or `tpu`) on this machine,
without the device (`jax.eval_shape`: nothing runs). It is a floor of
the temp memory a device reports: the backward adds the output's
cotangent and the gradients. `--segments P` sets the stretches a GPU's
"pallas" walks (`pallas_segments.segments_for`: P up to the SMs).

  python scripts/bench_residuals.py --lengths 4096,16384,65536 --segments 1,4
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import jax.numpy as jnp

from performer_jax import attention
from performer_jax.attention import pallas_favor
from performer_jax.attention import pallas_segments
# pylint: enable=g-import-not-at-top,wrong-import-position

BATCH, HEADS, HEAD_DIM, FEATURES, CHUNK = 4, 8, 64, 256, 64
GIB = 2.0 ** 30


def residuals(length: int, causal: bool, implementation: str) -> list:
  """The residuals of `grad(sum(favor_attention))`, as ShapeDtypeStructs."""
  x = jax.ShapeDtypeStruct((BATCH, length, HEADS, HEAD_DIM), jnp.bfloat16)
  proj = jax.ShapeDtypeStruct((FEATURES, HEAD_DIM), jnp.float32)

  def loss(q, k, v, p):
    return jnp.sum(attention.favor_attention(
        q, k, v, p, causal=causal, chunk_size=CHUNK,
        implementation=implementation).astype(jnp.float32))
  return jax.tree.leaves(jax.eval_shape(
      lambda *a: jax.vjp(loss, *a)[1], x, x, x, proj))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--lengths", default="4096,16384,65536")
  parser.add_argument("--platform", default="cuda", choices=["cuda", "tpu"])
  parser.add_argument("--segments", default="1",
                      help="comma-separated P for causal pallas on cuda")
  args = parser.parse_args()
  # "pallas" traces the target's kernels, not the CPU's interpret mode.
  target = {"cuda": "gpu", "tpu": "tpu"}[args.platform]
  pallas_favor.platform = lambda: target
  stretches = [int(p) for p in args.segments.split(",")]
  if args.platform == "tpu":
    stretches = [1]
  pallas = lambda causal: [(f"pallas P={p}", causal, "pallas", p)
                           for p in stretches]
  cases = pallas(True) + [("parallel", True, "parallel", 1),
                          ("slim", True, "slim", 1)]
  cases += pallas(False) + [("slim", False, "slim", 1)]
  print("| L | implementation | mode | residuals GiB | largest |")
  print("|---|---|---|---|---|")
  for length in (int(x) for x in args.lengths.split(",")):
    for name, causal, implementation, segments in cases:
      pallas_segments.segments_for = lambda *_, p=segments: p
      res = residuals(length, causal, implementation)
      total = sum(r.size * r.dtype.itemsize for r in res) / GIB
      big = max(res, key=lambda r: r.size * r.dtype.itemsize)
      print(f"| {length:,} | {name} | {'causal' if causal else 'bidir'} | "
            f"{total:.2f} | {big.dtype} {list(big.shape)} |", flush=True)


if __name__ == "__main__":
  main()
