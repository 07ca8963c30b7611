"""FAVOR+ as Pallas kernels (`implementation="pallas"`, see api.py).

One program per (batch, head) computes the features of C-token tiles on chip
(pallas_tiles.py, in pallas_calls.py's kernels) and writes only outputs,
states and cotangents: no `[B, H, L, F]` tensor reaches HBM. Causal stores
chunks' entry states and recomputes the features backward (on a GPU
pallas_segments.py walks several stretches side by side); `summarize` gives
a prefill its new decoding state the same way. "auto" picks these kernels
where `preferred` says so. Backends: Mosaic TPU
(on a chunk grid, pallas_tpu.py: any L); Triton on GPU
(power-of-two C, F, D, Dv >= 16, bf16 or f16, F (D + Dv) <= 32768, tiles
of `tile_rows`: what compiles, scripts/triton_check.py; deprecated as of
JAX 0.11, but Mosaic GPU's `pallas_call` has no `dot_general` in JAX 0.10);
interpret mode on the CPU, for tests ("tpu_interpret": the TPU's kernels).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from performer_jax.attention import chunked
from performer_jax.attention import fused
from performer_jax.attention import pallas_calls as calls
from performer_jax.attention import pallas_launch as launch
from performer_jax.attention import pallas_tiles as tiles
from performer_jax.attention import vma

KERNELS = ("softmax", "softmax_hyperbolic", "relu")


def platform() -> str:
  """"interpret" (CPU), "gpu" or "tpu": how `pallas_call` runs here."""
  backend = jax.default_backend()
  return {"cpu": "interpret"}.get(backend, backend)


def _triton() -> bool:
  """Whether this JAX still has Pallas's Triton backend (deprecated in 0.11)."""
  try:
    from jax.experimental.pallas import triton  # noqa: F401
  except ImportError:
    return False
  return True


def gpu_capability() -> tuple[int, int]:
  """The first GPU's compute capability, `(9, 0)` on Hopper; `(0, 0)` when
  there is none or it does not say."""
  try:
    text = str(jax.devices("gpu")[0].compute_capability)
    major, minor = (int(x) for x in text.split(".")[:2])
  except (RuntimeError, AttributeError, ValueError):
    return (0, 0)
  return major, minor


def preferred(kernel, on: str | None = None) -> bool:
  """Whether "auto" runs the kernels for `kernel` on platform `on`: on TPU,
  and on a GPU of compute capability 9.0 (Hopper) or newer with the Triton
  backend; elsewhere "parallel" stays the GPU default. Shapes the backend
  cannot tile fall back per call (`supports`; api.favor_attention)."""
  on = on or platform()
  if not isinstance(kernel, str) or kernel not in KERNELS:
    return False
  if on == "gpu":
    return _triton() and gpu_capability() >= (9, 0)
  return on == "tpu"


def _pow2(n: int) -> bool:
  return n >= 16 and n & (n - 1) == 0


def supports(kernel, length: int, head_dim: int, value_dim: int,
             num_features: int, chunk_size: int,
             on: str | None = None, dtype=jnp.float32) -> bool:
  """Whether the kernel serves this call on platform `on` (default: here)
  for inputs of `dtype`."""
  on = on or platform()
  if not isinstance(kernel, str) or kernel not in KERNELS:
    return False
  c, n = chunked.num_chunks(length, chunk_size)[:2]
  if on == "gpu":  # bf16/f16 on tensor cores; float32 spills and overflows
    fits = (num_features * (head_dim + value_dim) <=
            launch.GPU_SUMMARY_ELEMENTS)
    return (_triton() and fits and
            jnp.dtype(matmul_dtype(dtype)).itemsize == 2 and
            all(_pow2(n) for n in (c, head_dim, value_dim, num_features)))
  if on == "tpu":  # chunk blocks (pallas_tpu.py): Mosaic tiles rows by 8
    # (32-bit) or 16 (bf16: two rows to a sublane)
    rows = 8 * 4 // jnp.dtype(matmul_dtype(dtype)).itemsize
    return c % rows == 0 or n == 1
  return on in ("interpret", "tpu_interpret")


def tile_rows(chunk_size: int, num_features: int,
              on: str | None = None) -> int:
  """The tile the kernels run for `chunk_size` on platform `on`: on a GPU
  at most `GPU_TILE_ELEMENTS / F` rows (and 16 at least), so that a tile's
  features fit in registers; elsewhere `chunk_size`. Values are the same
  for any tile (rounding aside)."""
  if (on or platform()) != "gpu":
    return chunk_size
  cap = max(16, launch.GPU_TILE_ELEMENTS // max(num_features, 1))
  return min(chunk_size, 1 << (cap.bit_length() - 1))


def _tile(length: int, chunk_size: int, num_features: int, on: str) -> int:
  """C: the rows of a call's tiles (`tile_rows`, at most the length)."""
  return chunked.num_chunks(length,
                            tile_rows(chunk_size, num_features, on))[0]


def matmul_dtype(dtype):
  """The matmul operand dtype for inputs of `dtype`: theirs when narrower
  than float32 (bf16 on tensor cores), else float32."""
  return dtype if jnp.dtype(dtype).itemsize < 4 else jnp.float32


def _prepare(kernel, projection, head_dim, dtype):
  """`(TileConfig, [F, D] float32 projection)` of a supported kernel."""
  if kernel == "relu":
    w = jnp.eye(head_dim, dtype=jnp.float32) if projection is None else (
        projection)
    return tiles.TileConfig("relu", dtype), w
  return (tiles.TileConfig("softmax", dtype),
          fused.fused_projection(kernel, projection))


def _grouped(x_BHLX, c, dtype=jnp.float32):
  """`[B, H, L, X]` -> `[B*H, N*C, X]` in `dtype`, zero-padded to whole
  tiles."""
  b, h, length = x_BHLX.shape[:3]
  pad = chunked.num_chunks(length, c)[2]
  return chunked.pad_axis(x_BHLX.astype(dtype), 2, pad).reshape(
      (b * h, length + pad) + x_BHLX.shape[3:])


def _keep(key_mask_BL, b, length, c):
  keep = (jnp.ones((b, length), jnp.float32) if key_mask_BL is None
          else key_mask_BL.astype(jnp.float32))
  return chunked.pad_axis(keep, 1, chunked.num_chunks(length, c)[2])[..., None]


@functools.partial(jax.named_call, name="favor_causal_pallas")
def causal(x_q_BHLD: jax.Array, x_k_BHLD: jax.Array, v_BHLE: jax.Array,
           key_mask_BL: jax.Array | None, projection: jax.Array | None, *,
           kernel: str, chunk_size: int, seed: tuple | None = None,
           dtype=jnp.float32, on: str | None = None) -> jax.Array:
  """Normalized causal FAVOR+ on prepared inputs (layout.favor_inputs), as
  parallel.causal (same arguments and `seed`): float32 `[B, H, L, Dv]`.
  `dtype`: the matmul operand dtype; `on`: the platform (default: here)."""
  b, h, length, d = x_q_BHLD.shape
  dv = v_BHLE.shape[-1]
  on = on or platform()
  cfg, w = _prepare(kernel, projection, d, dtype)
  f = w.shape[0]
  c = _tile(length, chunk_size, f, on)
  if seed is None:
    s0 = jnp.zeros((b, h, f, dv + 1), jnp.float32)
    m0 = jnp.full((b, h), -jnp.inf, jnp.float32)
  else:
    m0, s0 = seed
    if m0 is None:
      m0 = jnp.zeros((b, h), jnp.float32)
    # An empty seed (m0 = -inf) is ignored (summary.py).
    s0 = jnp.where(jnp.isfinite(m0)[..., None, None], s0, 0.0)
  xq, xk, v, keep, w, s_FE, z_1F, m_11 = vma.align(
      _grouped(x_q_BHLD, c, dtype), _grouped(x_k_BHLD, c, dtype),
      _grouped(v_BHLE, c, dtype),
      _keep(key_mask_BL, b, length, c), jax.lax.stop_gradient(w),
      s0[..., :-1].reshape(b * h, f, dv), s0[..., -1].reshape(b * h, 1, f),
      m0.reshape(b * h, 1, 1))
  out = calls.causal_core((cfg, c, h, on), xq, xk, v, keep, w, s_FE, z_1F,
                          jax.lax.stop_gradient(m_11))
  return out.reshape(b, h, -1, dv)[:, :, :length]


@functools.partial(jax.named_call, name="favor_bidirectional_pallas")
def bidirectional(x_q_BHLD: jax.Array, x_k_BHSD: jax.Array,
                  v_BHSE: jax.Array, key_mask_BS: jax.Array | None,
                  projection: jax.Array | None, *, kernel: str,
                  chunk_size: int, dtype=jnp.float32,
                  on: str | None = None) -> jax.Array:
  """Normalized bidirectional FAVOR+ on prepared inputs, as
  autodiff.bidirectional: float32 `[B, H, L, Dv]`. Tiles of
  `min(chunk_size, L)` queries and `min(chunk_size, S)` keys."""
  b, h, length, d = x_q_BHLD.shape
  s_len, dv = x_k_BHSD.shape[2], v_BHSE.shape[-1]
  on = on or platform()
  cfg, w = _prepare(kernel, projection, d, dtype)
  c = min(_tile(length, chunk_size, w.shape[0], on),
          _tile(s_len, chunk_size, w.shape[0], on))
  xq, xk, v, keep, w = vma.align(
      _grouped(x_q_BHLD, c, dtype), _grouped(x_k_BHSD, c, dtype),
      _grouped(v_BHSE, c, dtype),
      _keep(key_mask_BS, b, s_len, c), jax.lax.stop_gradient(w))
  static = (cfg, c, h, on)
  s_GFE, z_G1F, _ = calls.summary_core(static, xk, v, keep, w)
  out = calls.query_core(static, xq, w, s_GFE, z_G1F)
  return out.reshape(b, h, -1, dv)[:, :, :length]


def attend(x_q_BHLD: jax.Array, sums_BHFE: jax.Array,
           projection: jax.Array | None, *, kernel: str, chunk_size: int,
           dtype=jnp.float32, on: str | None = None) -> jax.Array:
  """Bidirectional FAVOR+ of the queries against a key summary's sums (as
  `summarize` returns them): float32 `[B, H, L, Dv]`, differentiable in
  both (the query-tile grid; backward, a walk over the query tiles)."""
  b, h, length, d = x_q_BHLD.shape
  f, dv = sums_BHFE.shape[-2], sums_BHFE.shape[-1] - 1
  on = on or platform()
  cfg, w = _prepare(kernel, projection, d, dtype)
  c = _tile(length, chunk_size, f, on)
  xq, w, s_GFE, z_G1F = vma.align(
      _grouped(x_q_BHLD, c, dtype), jax.lax.stop_gradient(w),
      sums_BHFE[..., :-1].reshape(b * h, f, dv),
      sums_BHFE[..., -1].reshape(b * h, 1, f))
  out = calls.query_core((cfg, c, h, on), xq, w, s_GFE, z_G1F)
  return out.reshape(b, h, -1, dv)[:, :, :length]


def summarize(x_k_BHLD: jax.Array, v_BHLE: jax.Array,
              key_mask_BL: jax.Array | None, projection: jax.Array | None, *,
              kernel: str, chunk_size: int, dtype=jnp.float32,
              on: str | None = None) -> tuple:
  """The keys' summary in summary.py's form, `(m [B, H] or None for relu,
  S [B, H, F, Dv+1])`, as `summary.summarize` of their features and
  `[v, 1]`, without storing the features; differentiable in x_k and v."""
  b, h, length, d = x_k_BHLD.shape
  dv = v_BHLE.shape[-1]
  on = on or platform()
  cfg, w = _prepare(kernel, projection, d, dtype)
  c = _tile(length, chunk_size, w.shape[0], on)
  xk, v, keep, w = vma.align(
      _grouped(x_k_BHLD, c, dtype), _grouped(v_BHLE, c, dtype),
      _keep(key_mask_BL, b, length, c), jax.lax.stop_gradient(w))
  s_GFE, z_G1F, m_G11 = calls.summary_core((cfg, c, h, on), xk,
                                           v, keep, w)
  f = w.shape[0]
  sums_BHFE = jnp.concatenate([s_GFE, jnp.swapaxes(z_G1F, 1, 2)],
                              -1).reshape(b, h, f, dv + 1)
  m_BH = jax.lax.stop_gradient(m_G11.reshape(b, h)) if cfg.has_amp else None
  return m_BH, sums_BHFE
