"""`scripts/bench_attention.py --preset accelerator`: FAVOR+ on a GPU or TPU.

FAVOR+ "pallas" (in its GPU stretches and in one walk per (batch, head)),
"parallel" and "slim" against cuDNN flash attention, bf16 inputs, B4 H8
D64 m256, causal and bidirectional: fwd+bwd ms, nominal TFLOP/s, XLA's
compiled temp memory, each program's compile seconds and FAVOR+'s gradient
error against float32 "autodiff"; then the train step's compile seconds,
softmax against FAVOR+ (`scripts/bench_train.py`). It runs unchanged on
the CPU (L = 512, "pallas" in interpret mode, the cuDNN rows fail).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp

from experiments.scaling import timing
from performer_jax import attention
from performer_jax.attention import pallas_segments

_TRAIN_SCRIPT = os.path.join(os.path.dirname(os.path.dirname(
    os.path.dirname(os.path.abspath(__file__)))), "scripts", "bench_train.py")


# The accelerator table: (name, causal, implementation or "cudnn").
# "pallas 1seg": the kernels with one walk per (batch, head), as
# against the GPU's default stretches (pallas_segments.segments_for).
PALLAS_TABLE = (("pallas", True, "pallas"), ("pallas 1seg", True, "pallas"),
                ("parallel", True, "parallel"), ("slim", True, "slim"),
                ("cudnn", True, "cudnn"), ("pallas", False, "pallas"),
                ("pallas 1seg", False, "pallas"), ("slim", False, "slim"),
                ("cudnn", False, "cudnn"))


@contextlib.contextmanager
def _one_segment(name):
  """For "pallas 1seg": `segments_for` says 1 while the call is traced."""
  saved = pallas_segments.segments_for
  if name.endswith("1seg"):
    pallas_segments.segments_for = lambda *_, **__: 1
  try:
    yield
  finally:
    pallas_segments.segments_for = saved


def _pallas_table_flops(shape, length, causal, chunk, impl) -> float:
  """Nominal fwd+bwd FLOPs (3x forward). FAVOR+ forward per token and head:
  projections 4 D F, state products 4 F Dv, causal intra-chunk 2 C (F + Dv);
  exact: 4 L D per token (causal: half)."""
  bh = shape.batch * shape.heads
  d, f = shape.head_dim, shape.num_features
  if impl == "cudnn":
    return 3 * 4.0 * length * length * d * bh * (0.5 if causal else 1.0)
  per_token = 4 * d * f + 4 * f * d + (2 * chunk * (f + d) if causal else 0)
  return 3.0 * per_token * length * bh


def _relative_error(grads, reference) -> float:
  """The largest `max |g - ref| / max |ref|` over dq, dk, dv."""
  return max(float(jnp.max(jnp.abs(g.astype(jnp.float32) - r)) /
                   jnp.max(jnp.abs(r))) for g, r in zip(grads, reference))


def run_table(lengths, repeats: int, chunk: int = 64) -> None:
  """fwd+bwd ms, compile s, temp memory (compiled.memory_analysis), TFLOP/s
  of FAVOR+ ("pallas", "parallel", "slim") and cuDNN flash attention, bf16
  inputs, B4 H8 D64 m256, causal and bidirectional; and for FAVOR+ the
  relative error of the gradients of sum(out) against float32 "autodiff"
  on the same inputs."""
  shape = timing.Shape(batch=4, heads=8, head_dim=64, num_features=256)
  print(f"backend {jax.default_backend()} ({jax.devices()[0].device_kind}); "
        f"bf16 inputs, B4 H8 D64 m256, chunk {chunk}")
  print(f"{'method':11s} {'mode':6s} {'L':>6s} {'ms':>9s} {'TFLOP/s':>8s} "
        f"{'temp GiB':>9s} {'compile s':>9s} {'rel err':>8s}")
  for length in lengths:
    q, k, v, proj = timing.make_inputs(shape, length, dtype=jnp.bfloat16)
    references = {}
    for name, causal, impl in PALLAS_TABLE:
      if impl == "cudnn":
        fn = lambda q, k, v, p, c=causal: jax.nn.dot_product_attention(
            q, k, v, is_causal=c, implementation="cudnn")
      else:
        fn = lambda q, k, v, p, c=causal, i=impl: attention.favor_attention(
            q, k, v, p, causal=c, chunk_size=chunk, implementation=i)
      loss = lambda q, k, v, p, fn=fn: jnp.sum(fn(q, k, v, p).astype(
          jnp.float32))
      step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
      mode = "causal" if causal else "bidir"
      try:
        t0 = time.perf_counter()
        with _one_segment(name):
          compiled = step.lower(q, k, v, proj).compile()
        compile_s = time.perf_counter() - t0
        temp = compiled.memory_analysis().temp_size_in_bytes / 2 ** 30
        secs, _ = timing.median_time(lambda: compiled(q, k, v, proj),
                                     repeats, max_seconds=10.0)
      except Exception as err:  # pylint: disable=broad-except
        print(f"{name:11s} {mode:6s} {length:6d} failed: "
              f"{str(err).splitlines()[0][:100]}", flush=True)
        continue
      error = "-"
      if impl != "cudnn":
        try:
          if causal not in references:
            f32 = [x.astype(jnp.float32) for x in (q, k, v)]
            references[causal] = jax.jit(jax.grad(
                lambda q, k, v, p, c=causal: jnp.sum(
                    attention.favor_attention(
                        q, k, v, p, causal=c, implementation="autodiff")),
                argnums=(0, 1, 2)))(*f32, proj)
          got = compiled(q, k, v, proj)[1]
          error = f"{_relative_error(got, references[causal]):.1e}"
        except Exception as err:  # pylint: disable=broad-except
          error = "n/a: " + str(err).splitlines()[0][:40]
      tflops = _pallas_table_flops(shape, length, causal, chunk,
                                   impl) / secs / 1e12
      print(f"{name:11s} {mode:6s} {length:6d} {secs * 1e3:9.3f} "
            f"{tflops:8.1f} {temp:9.2f} {compile_s:9.2f} {error:>8s}",
            flush=True)
  train_step_compile(min(lengths))


def train_step_compile(length: int) -> None:
  """Prints `scripts/bench_train.py`'s table (4 layers, d 256, batch 8,
  causal, bf16: a GPU's FAVOR+ "auto" runs the kernels) for softmax and
  FAVOR+ at `length`: its compile column is the train step's compile time.
  Each row runs in its own process, which must not take the device's memory
  up front."""
  env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")
  proc = subprocess.run(
      [sys.executable, _TRAIN_SCRIPT, "--lengths", str(length), "--kinds",
       "softmax,favor", "--steps", "2", "--dtype", "bfloat16",
       "--no-tcmalloc"],
      capture_output=True, text=True, env=env, check=False)
  print(f"\ntrain step, L={length} (scripts/bench_train.py):")
  print(proc.stdout.rstrip() or f"failed: {proc.stderr.strip()[-300:]}",
        flush=True)
