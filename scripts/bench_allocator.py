"""What the allocator costs XLA:CPU in a process that has already started.

FAVOR+ fwd+bwd (bidirectional and causal, "auto" implementation) at
B2 H4 D64 m256, each mode in a fresh subprocess:

  system     glibc malloc as it comes
  threshold  mallopt(M_MMAP_THRESHOLD, 32 MiB) + M_TRIM_THRESHOLD (the
             partial fix: the threshold cannot rise above 32 MiB)
  keep       performer_jax.allocator.keep_freed_memory() (M_MMAP_MAX 0 +
             M_TRIM_THRESHOLD INT_MAX), called after JAX has started, as
             `performer_jax.use_fast_allocator()` does in a notebook
  tcmalloc   LD_PRELOAD (what the command-line tools re-execute under)

  python scripts/bench_allocator.py                 # L=4096, ~1 min
  python scripts/bench_allocator.py --lengths 1024,4096 --repeats 20
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

MODES = ("system", "threshold", "keep", "tcmalloc")


def measure(mode: str, lengths: list[int], repeats: int) -> dict[str, float]:
  """ms per fwd+bwd, median of `repeats`, in this process."""
  # pylint: disable=g-import-not-at-top
  import jax
  import jax.numpy as jnp
  from performer_jax import allocator
  from performer_jax.attention import favor_attention
  from performer_jax.attention import gaussian_orthogonal_random_matrix
  # pylint: enable=g-import-not-at-top
  jax.devices()  # the runtime and its threads start first, as in a notebook
  if mode == "threshold":
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(allocator.M_MMAP_THRESHOLD, 32 << 20)
    libc.mallopt(allocator.M_TRIM_THRESHOLD, 2 ** 31 - 1)
  elif mode == "keep":
    assert allocator.keep_freed_memory()
  assert allocator.tcmalloc_active() == (mode == "tcmalloc"), mode
  proj = gaussian_orthogonal_random_matrix(jax.random.PRNGKey(0), 256, 64)
  out = {}
  for length in lengths:
    q, k, v = jax.random.normal(jax.random.PRNGKey(1),
                                (3, 2, length, 4, 64), jnp.float32)
    for causal in (False, True):
      loss = lambda q, k, v, c=causal: jnp.sum(
          favor_attention(q, k, v, proj, causal=c) ** 2)
      step = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
      jax.block_until_ready(step(q, k, v))
      times = []
      for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(step(q, k, v))
        times.append(1e3 * (time.perf_counter() - start))
      out[f"L{length}_{'causal' if causal else 'bi'}"] = statistics.median(
          times)
  return out


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--lengths", default="4096")
  p.add_argument("--repeats", type=int, default=10)
  p.add_argument("--modes", default=",".join(MODES))
  p.add_argument("--child", default=None, help=argparse.SUPPRESS)
  args = p.parse_args()
  lengths = [int(x) for x in args.lengths.split(",")]
  if args.child:
    print(json.dumps(measure(args.child, lengths, args.repeats)))
    return
  from performer_jax import allocator  # pylint: disable=g-import-not-at-top
  rows = {}
  for mode in args.modes.split(","):
    env = dict(os.environ, PERFORMER_JAX_ALLOCATOR_HINT="0",
               JAX_PLATFORMS="cpu")
    env.pop("LD_PRELOAD", None)
    if mode == "tcmalloc":
      library = allocator.find_tcmalloc()
      if library is None:
        print("tcmalloc: not installed (apt-get install "
              "libtcmalloc-minimal4)")
        continue
      env["LD_PRELOAD"] = library
    result = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--child", mode,
         "--lengths", args.lengths, "--repeats", str(args.repeats)],
        env=env, capture_output=True, text=True, check=True)
    rows[mode] = json.loads(result.stdout.strip().splitlines()[-1])
  keys = list(next(iter(rows.values())))
  print("mode       " + "".join(f"{k:>16}" for k in keys) + "   (ms fwd+bwd)")
  for mode, row in rows.items():
    print(f"{mode:<11}" + "".join(f"{row[k]:>16.1f}" for k in keys))


if __name__ == "__main__":
  main()
