"""Timing and peak-memory measurement of attention fwd+bwd passes.

Shared by `scripts/bench_attention.py` and `experiments/scaling/run.py`. It
runs on whatever backend JAX picks (CPU, GPU or TPU): the budget follows the
host's memory on the CPU and the device's memory elsewhere.

Time: one jitted `value_and_grad` of `sum(attention(q, k, v))` w.r.t. q, k, v;
compile once, warm up, then the median wall time of `repeats` calls, each
ended with `block_until_ready`.

Peak memory: XLA's compiled memory analysis (`temp + argument + output`
bytes of the executable). On CPU it is exact for what XLA allocates, it is
deterministic (unlike process RSS, which includes the JAX runtime, the
allocator's caching and other configurations run in the same process) and,
crucially, it is known *before* running: a configuration whose executable
needs more than the memory budget is reported as skipped and never allocated.
`peak_rss_subprocess` measures the process RSS high-water mark of one
configuration in a fresh interpreter as a cross-check (slower: one JAX start
per configuration).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics
import subprocess
import sys
import time
from typing import Callable

import jax
import jax.numpy as jnp

from performer_jax import attention

GIB = 2.0 ** 30
# Hard cap: never allocate more than this whatever memory looks available.
MAX_BUDGET_BYTES = 16 * GIB

# Methods measured; "exact" is softmax attention. Each maps to
# (function(q, k, v, projection, chunk_size), causal?).
METHODS: dict[str, tuple[Callable, bool]] = {
    "exact": (lambda q, k, v, p, c: attention.softmax_attention(q, k, v),
              False),
    "exact_causal": (
        lambda q, k, v, p, c: attention.softmax_attention(q, k, v,
                                                          causal=True),
        True),
    "favor": (lambda q, k, v, p, c: attention.favor_attention(q, k, v, p),
              False),
    # Bidirectional FAVOR+ under plain autodiff (the default is the fused
    # hand-written VJP of attention/bidirectional.py).
    "favor_autodiff": (lambda q, k, v, p, c: attention.favor_attention(
        q, k, v, p, implementation="autodiff"), False),
    # Causal FAVOR+ as shipped (implementation="auto"): the compiled CPU
    # kernel when it is built, else the recomputing (SLiM) XLA path.
    "favor_causal": (
        lambda q, k, v, p, c: attention.favor_attention(
            q, k, v, p, causal=True, chunk_size=c),
        True),
    # The XLA path with the SLiM backward, whatever "auto" picks.
    "favor_causal_slim": (
        lambda q, k, v, p, c: attention.favor_attention(
            q, k, v, p, causal=True, chunk_size=c, implementation="slim"),
        True),
    "l2": (lambda q, k, v, p, c: attention.l2_attention(q, k, v), False),
    # The same function differentiated by plain autodiff (stores every
    # chunk's features and scores).
    "favor_causal_autodiff": (
        lambda q, k, v, p, c: attention.favor_attention(
            q, k, v, p, causal=True, chunk_size=c, implementation="autodiff"),
        True),
}


def _cudnn_attention(q, k, v, causal):
  return jax.nn.dot_product_attention(q, k, v, is_causal=causal,
                                      implementation="cudnn")


def dot_product_attention(q, k, v, causal: bool):
  """`jax.nn.dot_product_attention` with cuDNN flash attention on a GPU when
  cuDNN serves the call (bfloat16 or float16 inputs, `--dtype bfloat16`),
  else XLA's dense version (its default, `implementation=None`)."""
  if jax.default_backend() == "gpu":
    try:
      return _cudnn_attention(q, k, v, causal)
    except Exception:  # pylint: disable=broad-except
      pass  # cuDNN rejects this dtype or shape: XLA's version below.
  return jax.nn.dot_product_attention(q, k, v, is_causal=causal)


def dot_product_attention_backend(shape, dtype) -> str:
  """"cudnn" or "xla": what `dot_product_attention` runs for inputs of
  `shape` (a Shape) and `dtype`."""
  if jax.default_backend() != "gpu":
    return "xla"
  x = jax.ShapeDtypeStruct((shape.batch, 128, shape.heads, shape.head_dim),
                           dtype)
  try:
    jax.eval_shape(lambda q: _cudnn_attention(q, q, q, True), x)
  except Exception:  # pylint: disable=broad-except
    return "xla"
  return "cudnn"


# Methods beyond the paper's set (experiments/scaling/run.py measures only
# METHODS by default); scripts/bench_attention.py measures them all.
EXTRA_METHODS: dict[str, tuple[Callable, bool]] = {
    # Causal FAVOR+ without a sequential loop (attention/parallel.py), the
    # "auto" choice off the CPU.
    "favor_causal_parallel": (
        lambda q, k, v, p, c: attention.favor_attention(
            q, k, v, p, causal=True, chunk_size=c,
            implementation="parallel"),
        True),
    # Exact attention as JAX ships it (`dot_product_attention` below):
    # cuDNN's flash attention on NVIDIA GPUs where it applies, XLA's dense
    # version elsewhere.
    "dpa": (lambda q, k, v, p, c: dot_product_attention(q, k, v, False),
            False),
    "dpa_causal": (lambda q, k, v, p, c: dot_product_attention(q, k, v, True),
                   True),
}
ALL_METHODS = {**METHODS, **EXTRA_METHODS}
CHUNKED = ("favor_causal", "favor_causal_slim", "favor_causal_autodiff",
           "favor_causal_parallel")
QUADRATIC = ("exact", "exact_causal", "l2")
# Quadratic in memory unless a fused (flash) kernel runs them: only on GPU.
FLASH = ("dpa", "dpa_causal")


def is_quadratic(method: str) -> bool:
  """Whether the method's memory is O(L^2) on this backend."""
  return method in QUADRATIC or (method in FLASH and
                                 jax.default_backend() != "gpu")


@dataclasses.dataclass(frozen=True)
class Shape:
  batch: int = 2
  heads: int = 4
  head_dim: int = 64
  num_features: int = 256


def available_bytes() -> float:
  """Free memory of the first device off the CPU (its allocator's limit
  minus what is in use); on the CPU, MemAvailable from /proc/meminfo
  (Linux), else the hard cap."""
  if jax.default_backend() != "cpu":
    stats = jax.devices()[0].memory_stats() or {}
    if "bytes_limit" in stats:
      return float(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return float(line.split()[1]) * 1024
  except OSError:
    pass
  return MAX_BUDGET_BYTES


def default_budget_bytes() -> float:
  """Memory a configuration may use: on the CPU 60% of what is free, at
  most 16 GiB (other processes share the machine, so the budget follows
  MemAvailable); on an accelerator 90% of the device's free memory."""
  if jax.default_backend() != "cpu":
    return 0.9 * available_bytes()
  return min(MAX_BUDGET_BYTES, 0.6 * available_bytes())


def estimate_quadratic_bytes(shape: Shape, length: int) -> float:
  """Rough fwd+bwd bytes of exact attention: ~4 float32 [B, H, L, L] buffers
  (logits, probabilities, their cotangents). Used to skip a configuration
  before even compiling it."""
  return 4.0 * 4 * shape.batch * shape.heads * float(length) ** 2


def favor_flops(shape: Shape, length: int) -> float:
  """Nominal fwd+bwd FLOPs of FAVOR+: 8 L m d per head forward, x3."""
  return 3 * 8.0 * length * shape.num_features * shape.head_dim * (
      shape.batch * shape.heads)


def exact_flops(shape: Shape, length: int, causal: bool = False) -> float:
  """Nominal fwd+bwd FLOPs of exact attention: 4 L^2 d per head forward, x3
  (the causal mask saves nothing in a dense implementation)."""
  del causal
  return 3 * 4.0 * float(length) ** 2 * shape.head_dim * (
      shape.batch * shape.heads)


def make_inputs(shape: Shape, length: int, seed: int = 0,
                dtype=jnp.float32):
  """q, k, v `[B, L, H, D]` ~ N(0, 1) in `dtype` and a float32 `[M, D]`
  projection. (FAVOR+ and the exact functions of this package compute in
  float32 whatever the inputs' dtype.)"""
  rq, rk, rv, rp = jax.random.split(jax.random.PRNGKey(seed), 4)
  dims = (shape.batch, length, shape.heads, shape.head_dim)
  q, k, v = (jax.random.normal(r, dims, jnp.float32).astype(dtype)
             for r in (rq, rk, rv))
  proj = attention.gaussian_orthogonal_random_matrix(
      rp, shape.num_features, shape.head_dim)
  return q, k, v, proj


def fwd_bwd(method: str, chunk_size: int) -> Callable:
  """Jitted `(q, k, v, projection) -> (loss, (dq, dk, dv))`."""
  if method not in ALL_METHODS:
    raise ValueError(f"unknown method {method!r}; choose from "
                     f"{sorted(ALL_METHODS)}.")
  fn, _ = ALL_METHODS[method]

  def loss(q, k, v, proj):
    return jnp.sum(fn(q, k, v, proj, chunk_size).astype(jnp.float32))
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))


def compiled_bytes(compiled) -> dict[str, float]:
  """temp/argument/output/total bytes from `compiled.memory_analysis()`."""
  stats = compiled.memory_analysis()
  out = {
      "temp": float(stats.temp_size_in_bytes),
      "argument": float(stats.argument_size_in_bytes),
      "output": float(stats.output_size_in_bytes),
  }
  out["total"] = out["temp"] + out["argument"] + out["output"]
  return out


def median_time(call: Callable[[], object], repeats: int, warmup: int = 1,
                max_seconds: float = 60.0) -> tuple[float, int]:
  """Median seconds of `call()` (results blocked on) and the repeat count.

  Stops early once `max_seconds` have been spent so long configurations get
  fewer (but at least one) timed calls; a warm-up call longer than
  `max_seconds / 2` is returned as the only sample.
  """
  for _ in range(warmup):
    t0 = time.perf_counter()
    jax.block_until_ready(call())
    first = time.perf_counter() - t0
    if first > max_seconds / 2:
      # Too slow to repeat: the warm-up call (already compiled) is the sample.
      return first, 1
  times = []
  start = time.perf_counter()
  for _ in range(max(1, repeats)):
    t0 = time.perf_counter()
    jax.block_until_ready(call())
    times.append(time.perf_counter() - t0)
    if time.perf_counter() - start > max_seconds:
      break
  return statistics.median(times), len(times)


def matmul_gflops(n: int = 1024, repeats: int = 10, rounds: int = 3) -> float:
  """GFLOP/s of a plain float32 `[n, n] @ [n, n]`, the CPU's reference rate:
  the best of `rounds` medians of `repeats` calls. The best, not the median:
  on a shared machine a slow reading would inflate every fraction of it."""
  a = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.PRNGKey(2), (n, n), jnp.float32)
  mm = jax.jit(jnp.matmul)
  secs = min(median_time(lambda: mm(a, b), repeats, warmup=2)[0]
             for _ in range(rounds))
  return 2.0 * n ** 3 / secs / 1e9


def measure(method: str, length: int, shape: Shape = Shape(),
            chunk_size: int = 64, repeats: int = 3,
            budget_bytes: float | None = None,
            max_seconds: float = 60.0, dtype=jnp.float32) -> dict:
  """Times one configuration; skips it (no allocation) if over budget.

  Returns a row: method, length, chunk_size, seconds (nan if skipped),
  repeats, peak_bytes (compiled temp+args+outputs; estimated if skipped
  before compiling), gflops (nominal FLOPs / seconds), status.
  """
  budget = default_budget_bytes() if budget_bytes is None else budget_bytes
  causal = ALL_METHODS[method][1]
  row = {"method": method, "length": length,
         "chunk_size": chunk_size if method in CHUNKED else 0,
         "seconds": math.nan, "repeats": 0, "peak_bytes": math.nan,
         "gflops": math.nan, "status": "ok"}
  if method in QUADRATIC or method in FLASH:
    flops = exact_flops(shape, length, causal)
  else:
    flops = favor_flops(shape, length)
  if is_quadratic(method):
    estimate = estimate_quadratic_bytes(shape, length)
    if estimate > budget:
      row.update(peak_bytes=estimate, status="skipped: estimated "
                 f"{estimate / GIB:.1f} GiB > budget {budget / GIB:.1f} GiB")
      return row
  q, k, v, proj = make_inputs(shape, length, dtype=dtype)
  compiled = fwd_bwd(method, chunk_size).lower(q, k, v, proj).compile()
  mem = compiled_bytes(compiled)
  row["peak_bytes"] = mem["total"]
  if mem["total"] > budget:
    row["status"] = (f"skipped: needs {mem['total'] / GIB:.1f} GiB > budget "
                     f"{budget / GIB:.1f} GiB")
    return row
  secs, n = median_time(lambda: compiled(q, k, v, proj), repeats,
                        max_seconds=max_seconds)
  row.update(seconds=secs, repeats=n, gflops=flops / secs / 1e9)
  return row


def peak_rss_subprocess(method: str, length: int, shape: Shape = Shape(),
                        chunk_size: int = 64) -> float:
  """Peak RSS bytes of a fresh process that runs one fwd+bwd (over budget
  configurations must be filtered out by the caller with `measure`)."""
  config = json.dumps({"method": method, "length": length,
                       "chunk_size": chunk_size,
                       "shape": dataclasses.asdict(shape)})
  env = dict(os.environ)
  root = os.path.dirname(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))))
  env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
  out = subprocess.run(
      [sys.executable, "-m", "experiments.scaling.timing", config],
      capture_output=True, text=True, env=env, check=True)
  return float(out.stdout.strip().splitlines()[-1])


def _rss_child(config_json: str) -> None:
  import resource  # pylint: disable=g-import-not-at-top
  config = json.loads(config_json)
  shape = Shape(**config["shape"])
  q, k, v, proj = make_inputs(shape, config["length"])
  jax.block_until_ready(
      fwd_bwd(config["method"], config["chunk_size"])(q, k, v, proj))
  # ru_maxrss is in KiB on Linux.
  print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0)


if __name__ == "__main__":
  _rss_child(sys.argv[1])
