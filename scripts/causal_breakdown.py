"""Where causal FAVOR+ spends its time relative to bidirectional FAVOR+.

Times fwd+bwd (`value_and_grad` of the summed output w.r.t. q, k, v) of the
shipped functions next to stripped-down pieces of the chunked causal
algorithm, all at batch 2, 4 heads, head_dim 64, 256 features, and prints
each as a ratio to the shipped bidirectional pass (target T1 of
`scripts/bench_attention.py` asks for causal <= 1.5x). The pieces drop the
stabilizer and the normalizer, so they are lower bounds on what any chunked
causal pass with the same features costs on XLA:CPU:

  bidir_plain       Q' (K'^T V) under autodiff: the bidirectional matmuls
  inter_no_prefix   the same matmuls done per chunk (K'_n^T V_n, Q'_n S_n),
                    with S_n = K'_n^T V_n: no prefix over chunks
  inter_prefix      ... with S_n the exclusive prefix over chunks (a scan)
  intra             the masked in-chunk product tril(Q'_n K'_n^T) V_n
  inter_plus_intra  both: the unstabilized, unnormalized causal pass

All calls are interleaved and each row keeps its best time, so a slow moment
of the machine does not favour one row.

  python scripts/causal_breakdown.py --length 4096 --rounds 6
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import jax.numpy as jnp

from experiments.scaling import timing
from performer_jax import allocator
from performer_jax import attention


def _features(q_BLHD, k_BLHD, w_FD, chunk):
  """Chunked positive features `[G, N, C, F]` (G = B*H), no stabilizer."""
  b, length, h, d = q_BLHD.shape

  def heads_major(x_BLHD):
    return jnp.swapaxes(x_BLHD, 1, 2).reshape(b * h, length, d) * d ** -0.25

  x_q, x_k = heads_major(q_BLHD), heads_major(k_BLHD)
  qf_GLF = jnp.exp(jnp.einsum("gld,fd->glf", x_q, w_FD))
  kf_GLF = jnp.exp(jnp.einsum("gld,fd->glf", x_k, w_FD) -
                   0.5 * jnp.sum(x_k * x_k, -1, keepdims=True))
  shape = (b * h, length // chunk, chunk, -1)
  return qf_GLF.reshape(shape), kf_GLF.reshape(shape)


def _values(v_BLHD, chunk):
  b, length, h, e = v_BLHD.shape
  return jnp.swapaxes(v_BLHD, 1, 2).reshape(b * h, length // chunk, chunk, e)


def _exclusive_prefix(s_GNFE):
  def step(carry_GFE, s_GFE):
    return carry_GFE + s_GFE, carry_GFE
  _, prefix_NGFE = jax.lax.scan(step, jnp.zeros_like(s_GNFE[:, 0]),
                                jnp.moveaxis(s_GNFE, 1, 0))
  return jnp.moveaxis(prefix_NGFE, 0, 1)


def _inter(q, k, v, w_FD, chunk, prefix):
  qf, kf = _features(q, k, w_FD, chunk)
  s_GNFE = jnp.einsum("gncf,gnce->gnfe", kf, _values(v, chunk))
  if prefix:
    s_GNFE = _exclusive_prefix(s_GNFE)
  return jnp.einsum("gncf,gnfe->gnce", qf, s_GNFE)


def _intra(q, k, v, w_FD, chunk):
  qf, kf = _features(q, k, w_FD, chunk)
  a_GNCC = jnp.einsum("gnif,gnjf->gnij", qf, kf)
  a_GNCC = a_GNCC * jnp.tril(jnp.ones((chunk, chunk), a_GNCC.dtype))
  return jnp.einsum("gnij,gnje->gnie", a_GNCC, _values(v, chunk))


def _bidir_plain(q, k, v, w_FD, chunk):
  qf, kf = _features(q, k, w_FD, chunk)
  s_GFE = jnp.einsum("gncf,gnce->gfe", kf, _values(v, chunk))
  return jnp.einsum("gncf,gfe->gnce", qf, s_GFE)


PIECES = {
    "bidir (shipped)": lambda q, k, v, w, c: attention.favor_attention(q, k, v, w),
    "bidir_plain": _bidir_plain,
    "inter_no_prefix": lambda q, k, v, w, c: _inter(q, k, v, w, c, False),
    "inter_prefix": lambda q, k, v, w, c: _inter(q, k, v, w, c, True),
    "intra": _intra,
    "inter_plus_intra": lambda q, k, v, w, c: (_inter(q, k, v, w, c, True) +
                                               _intra(q, k, v, w, c)),
    "causal (shipped)": lambda q, k, v, w, c: attention.favor_attention(
        q, k, v, w, causal=True, chunk_size=c),
    "causal (autodiff)": lambda q, k, v, w, c: attention.favor_attention(
        q, k, v, w, causal=True, chunk_size=c, implementation="autodiff"),
}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--length", type=int, default=4096)
  p.add_argument("--chunk-size", type=int, default=attention.DEFAULT_CHUNK_SIZE)
  p.add_argument("--rounds", type=int, default=6)
  p.add_argument("--no-tcmalloc", action="store_true",
                 help="keep the system malloc (see performer_jax/allocator.py)")
  args = p.parse_args(argv)
  if args.length <= 0 or args.chunk_size <= 0:
    p.error("--length and --chunk-size must be positive.")
  if args.length % args.chunk_size:
    p.error(f"--length {args.length} must be a multiple of --chunk-size "
            f"{args.chunk_size}.")
  q, k, v, w_FD = timing.make_inputs(timing.Shape(), args.length)
  steps = {}
  for name, fn in PIECES.items():
    loss = lambda q, k, v, fn=fn: jnp.sum(fn(q, k, v, w_FD, args.chunk_size))
    steps[name] = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
    jax.block_until_ready(steps[name](q, k, v))
  best = dict.fromkeys(steps, float("inf"))
  for _ in range(args.rounds):
    for name, step in steps.items():
      t0 = time.perf_counter()
      jax.block_until_ready(step(q, k, v))
      best[name] = min(best[name], time.perf_counter() - t0)
  base = best["bidir (shipped)"]
  print(f"L={args.length}, chunk {args.chunk_size}, best of {args.rounds}, "
        f"{'tcmalloc' if allocator.tcmalloc_active() else 'system malloc'}")
  for name, secs in best.items():
    print(f"  {name:20s} {secs * 1e3:8.1f} ms  {secs / base:5.2f}x")


if __name__ == "__main__":
  if "--no-tcmalloc" not in sys.argv:
    allocator.reexec_under_tcmalloc([os.path.abspath(__file__),
                                     *sys.argv[1:]])
  main()
