"""Checks FAVOR+ against exact softmax attention and prints error and speed.

  python scripts/demo_attention.py [--length 2048] [--features 256]

Prints the relative error of FAVOR+ (bidirectional and causal) against exact
attention for growing numbers of random features, and the forward time of
each at one sequence length.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

from performer_jax.attention import favor_attention
from performer_jax.attention import gaussian_orthogonal_random_matrix
from performer_jax.attention import softmax_attention


def _time(fn, *args, repeats=5):
  fn(*args).block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn(*args).block_until_ready()
    times.append(time.perf_counter() - start)
  return sorted(times)[len(times) // 2]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--length", type=int, default=2048)
  parser.add_argument("--features", type=int, default=256)
  parser.add_argument("--head-dim", type=int, default=64)
  args = parser.parse_args()
  rng = jax.random.split(jax.random.PRNGKey(0), 4)
  shape = (1, args.length, 4, args.head_dim)
  # Rows of norm ~ d^(1/4): after FAVOR+'s d^(-1/4) normalizer |x| ~ 1, the
  # regime of the paper's experiments (the estimator's variance grows like
  # exp(|x + y|^2)).
  q, k = (jax.random.normal(r, shape) * args.head_dim ** -0.25
          for r in rng[:2])
  v = jax.random.normal(rng[2], shape)

  exact = jax.jit(softmax_attention, static_argnames="causal")
  favor = jax.jit(favor_attention, static_argnames=("causal",))
  print(f"FAVOR+ vs exact softmax attention: L={args.length}, 4 heads, "
        f"head_dim={args.head_dim}")
  print(f"{'features':>9} {'rel.err bidir':>14} {'rel.err causal':>15}")
  ref = {c: exact(q, k, v, causal=c) for c in (False, True)}
  for m in (16, 64, 256, 1024):
    proj = gaussian_orthogonal_random_matrix(rng[3], m, args.head_dim)
    errs = [float(jnp.linalg.norm(favor(q, k, v, proj, causal=c) - ref[c]) /
                  jnp.linalg.norm(ref[c])) for c in (False, True)]
    print(f"{m:>9} {errs[0]:>14.4f} {errs[1]:>15.4f}")

  proj = gaussian_orthogonal_random_matrix(rng[3], args.features,
                                           args.head_dim)
  print(f"\nforward time at L={args.length}, {args.features} features:")
  for causal in (False, True):
    t_exact = _time(lambda *a: exact(*a, causal=causal), q, k, v)
    t_favor = _time(lambda *a: favor(*a, proj, causal=causal), q, k, v)
    mode = "causal" if causal else "bidirectional"
    print(f"  {mode:>13}: exact {t_exact * 1e3:8.1f} ms   FAVOR+ "
          f"{t_favor * 1e3:8.1f} ms   speed-up {t_exact / t_favor:5.2f}x")


if __name__ == "__main__":
  main()
