"""Causal FAVOR+ through the compiled XLA:CPU kernel ("kernel" implementation).

XLA computes the features and their gradients; the C++ kernel
(kernels/causal_favor_cpu.cc) computes the causal product, its normalizer
and their backward chunk by chunk, storing chunk-entry states and in-chunk
scores. Keys are stabilized by the running max over j <= i and padded keys
are zeroed before the kernel (chunked.py). Non-negative feature maps only:
"softmax_trig" stays on SLiM. CPU only; build it first with
`python -m performer_jax.kernels.build`. No batch-partitioning rule yet: on a
multi-device mesh every device computes the whole batch.
"""

from __future__ import annotations

import ctypes
import functools

import jax
import jax.numpy as jnp
import numpy as np

from performer_jax.attention import chunked
from performer_jax.attention import feature_maps
from performer_jax.attention import fused
from performer_jax.attention import vma
from performer_jax.kernels import build

_FWD = "performer_causal_favor_fwd"
_FWD_RES = "performer_causal_favor_fwd_res"
_FWD_STATE = "performer_causal_favor_fwd_state"
_BWD = "performer_causal_favor_bwd"
UNSUPPORTED_KERNELS = ("softmax_trig",)


def built() -> bool:
  """True if the kernel library for this source, jaxlib and CPU exists."""
  try:
    return build.library_path().exists()
  except OSError:
    return False


def supports(kernel) -> bool:
  return callable(kernel) or kernel not in UNSUPPORTED_KERNELS


def load_library() -> ctypes.CDLL:
  """Loads the built kernel library; a clear error says how to build it."""
  path = build.library_path()
  if not path.exists():
    raise RuntimeError(
        f"favor_attention(implementation='kernel'): the CPU kernel is not "
        f"built (expected {path}). Build it with `python -m "
        "performer_jax.kernels.build` (needs g++ and libeigen3-dev; "
        "scripts/setup.sh installs both), or use implementation='slim'.")
  return ctypes.cdll.LoadLibrary(str(path))


@functools.cache
def _register() -> None:
  lib = load_library()
  for name, symbol in ((_FWD, lib.PerformerCausalFavorFwd),
                       (_FWD_RES, lib.PerformerCausalFavorFwdRes),
                       (_FWD_STATE, lib.PerformerCausalFavorFwdState),
                       (_BWD, lib.PerformerCausalFavorBwd)):
    jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(symbol),
                                platform="cpu")


def _call(name, results, *args, chunk):
  outs = jax.ffi.ffi_call(name, results, vmap_method="broadcast_all")(
      *args, chunk=np.int64(chunk))
  # Inside shard_map an FFI call's results are typed invariant whatever its
  # inputs: give them the inputs' varying axes (vma.py).
  return tuple(vma.like(x, *args) for x in outs)


def _f32(shape):
  return jax.ShapeDtypeStruct(shape, jnp.float32)


def _forward(qf, kf, run, v, chunk):
  """Normalized output `[..., L, E]` and raw normalizer `[..., L]`."""
  return _call(_FWD, (_f32(v.shape), _f32(run.shape)), qf, kf, run, v,
               chunk=chunk)


def _forward_with_residuals(qf, kf, run, v, chunk):
  """The forward pass of a VJP: also keeps the state entering each chunk
  (`[..., L/C, F, E]` and `[..., L/C, F]`, the SLiM memory trade-off) and
  the weighted intra-chunk scores (`[..., L, C]`, a quarter of the features'
  size at C=64), which the backward pass would otherwise recompute."""
  *lead, length, f = qf.shape
  c = min(chunk, max(length, 1))
  n = -(-length // c)
  out, den, states, zstates, scores = _call(
      _FWD_RES, (_f32(v.shape), _f32(run.shape),
                 _f32((*lead, n, f, v.shape[-1])), _f32((*lead, n, f)),
                 _f32((*lead, length, c))),
      qf, kf, run, v, chunk=chunk)
  return out, (qf, kf, run, v, out, den, states, zstates, scores)


def _backward(chunk, res, g):
  """Cotangents of qf, kf and v."""
  qf, kf, _, v = res[:4]
  return _call(_BWD, tuple(_f32(x.shape) for x in (qf, kf, v)), *res, g,
               chunk=chunk)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _core(qf, kf, run, v, chunk):
  return _forward(qf, kf, run, v, chunk)[0]


def _core_fwd(qf, kf, run, v, chunk):
  return _forward_with_residuals(qf, kf, run, v, chunk)


def _core_bwd(chunk, res, g):
  dq, dk, dv = _backward(chunk, res, g)
  return dq, dk, jnp.zeros_like(res[2]), dv


_core.defvjp(_core_fwd, _core_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _fused(x_q, x_k, v, mask, w_FD, chunk):
  qf = fused.query_features(x_q, w_FD)
  kf, run = fused.key_features(x_k, w_FD, mask, causal=True)
  return _forward(qf, kf, run, v, chunk)[0]


def _fused_fwd(x_q, x_k, v, mask, w_FD, chunk):
  qf = fused.query_features(x_q, w_FD)
  kf, run = fused.key_features(x_k, w_FD, mask, causal=True)
  out, res = _forward_with_residuals(qf, kf, run, v, chunk)
  return out, (x_k, w_FD, res)


def _fused_bwd(chunk, saved, g):
  x_k, w_FD, res = saved
  qf, kf = res[:2]
  dq, dk, dv = _backward(chunk, res, g)
  g_xq, g_xk = fused.feature_input_grads(x_k, w_FD, dq * qf, dk * kf)
  return g_xq, g_xk, dv, None, jnp.zeros_like(w_FD)


_fused.defvjp(_fused_fwd, _fused_bwd)


def _check_and_register(kernel) -> None:
  if not supports(kernel):
    raise ValueError(f"implementation='kernel' does not support kernel "
                     f"{kernel!r} (signed features); use implementation="
                     "'slim'.")
  _register()


@functools.partial(jax.named_call, name="favor_causal_kernel")
def causal(x_q_BHLD: jax.Array, x_k_BHLD: jax.Array, v_BHLE: jax.Array,
           key_mask_BL: jax.Array | None, projection: jax.Array | None, *,
           kernel, chunk_size: int) -> jax.Array:
  """Causal FAVOR+ on prepared inputs, normalized.

  Args:
    x_q_BHLD, x_k_BHLD: float32, heads-major, already multiplied by the data
      normalizer `D^(-1/4)` (as `favor_attention` prepares them).
    v_BHLE: float32 values, heads-major.
    key_mask_BL: bool `[B, L]` or None; padded keys must hold finite values.
    projection: float32 `[M, D]` or None (as the kernel needs).
    kernel: a feature map name or function with non-negative features.
    chunk_size: C, tokens per chunk inside the kernel.

  Returns:
    float32 `[B, H, L, E]`.
  """
  _check_and_register(kernel)
  if kernel in fused.FUSED_KERNELS and projection is not None:
    # Features and feature gradients written by hand (fused.py): one fused
    # exp each way instead of autodiff's passes over the [G, L, F] features,
    # which cost more than the kernel itself.
    w_FD = fused.fused_projection(kernel, projection)
    # [B, H] stay separate leading axes (the kernel flattens them): under a
    # mesh, batch and head shardings then pass through the kernel as they are.
    mask_B1L = None if key_mask_BL is None else key_mask_BL[:, None]
    # One varying-axes type for every input (vma.py), so that the custom
    # VJP's cotangents have its inputs' types inside shard_map.
    return _fused(*vma.align(x_q_BHLD, x_k_BHLD, v_BHLE, mask_B1L, w_FD),
                  int(chunk_size))
  mask_B1L = None if key_mask_BL is None else key_mask_BL[:, None, :]
  qf_BHLF, kf_BHLF, _, run_BHL = _features(x_q_BHLD, x_k_BHLD, mask_B1L,
                                           projection, kernel)
  return _core(*vma.align(qf_BHLF, kf_BHLF, run_BHL, v_BHLE), int(chunk_size))


def _features(x_q_BHLD, x_k_BHLD, mask_B1L, projection, kernel):
  """The kernel's inputs: query features, key features relative to the
  running max (zero at padded keys), whether keys have amplitudes, and the
  running max `[B, H, L]` (zeros without amplitudes)."""
  feature_fn = feature_maps.resolve(kernel, projection)
  qf_BHLF, _ = feature_fn(x_q_BHLD)
  kf_BHLF, amp_BHL = feature_fn(x_k_BHLD)
  if amp_BHL is None:
    run_BHL = jnp.zeros(kf_BHLF.shape[:-1], jnp.float32)
  else:
    weight_BHL, run_BHL = chunked.running_max(amp_BHL, mask_B1L)
    kf_BHLF = kf_BHLF * weight_BHL[..., None]
  if mask_B1L is not None:
    kf_BHLF = jnp.where(mask_B1L[..., None], kf_BHLF, 0.0)
  return qf_BHLF, kf_BHLF, amp_BHL is not None, run_BHL


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _with_final_state(qf, kf, run, v, chunk):
  """Normalized output `[..., L, E]` and the final state `[..., F, E]`,
  `[..., F]`."""
  lead, f, e = kf.shape[:-2], kf.shape[-1], v.shape[-1]
  out, _, s, z = _call(_FWD_STATE, (_f32(v.shape), _f32(run.shape),
                                    _f32((*lead, f, e)), _f32((*lead, f))),
                       qf, kf, run, v, chunk=chunk)
  return out, s, z


def _with_final_state_fwd(qf, kf, run, v, chunk):
  del qf, kf, run, v, chunk
  raise NotImplementedError(
      "the compiled CPU kernel's prefill (favor_extend or models.prefill "
      "from an empty state) is forward-only; to differentiate, pass "
      "implementation='slim' (or differentiate the decode=False model).")


def _with_final_state_bwd(chunk, res, g):  # never reached: fwd raises
  raise AssertionError((chunk, res, g))


_with_final_state.defvjp(_with_final_state_fwd, _with_final_state_bwd)


def causal_from_empty(x_q_BHLD: jax.Array, x_k_BHLD: jax.Array,
                      v_BHLD: jax.Array, projection: jax.Array | None, *,
                      kernel, chunk_size: int
                      ) -> tuple[jax.Array, jax.Array | None, jax.Array]:
  """`causal` without a mask, plus the decoding state after the last token
  (a prompt's prefill): the kernel returns the state it ends with.

  Forward only: a prefill is not differentiated (use `causal` to train).

  Returns:
    (float32 `[B, H, L, Dv]` outputs, the max key log-amplitude `[B, H]` (or
    None for kernels without amplitudes), the sums `[B, H, F, Dv+1]`
    relative to it: `summary.summarize` of all keys).
  """
  _check_and_register(kernel)
  if kernel in fused.FUSED_KERNELS and projection is not None:
    # The same features as `_features`, in one fused exp each (fused.py).
    w_FD = fused.fused_projection(kernel, projection)
    qf_BHLF = fused.query_features(x_q_BHLD, w_FD)
    kf_BHLF, run_BHL = fused.key_features(x_k_BHLD, w_FD, None, causal=True)
    has_amp = True
  else:
    qf_BHLF, kf_BHLF, has_amp, run_BHL = _features(x_q_BHLD, x_k_BHLD, None,
                                                    projection, kernel)
  out_BHLD, s_BHFE, z_BHF = _with_final_state(
      *vma.align(qf_BHLF, kf_BHLF, run_BHL, v_BHLD), int(chunk_size))
  # The kernel's state is relative to M at the last key: the running max
  # only grows, so that is the max over all keys.
  m_BH = run_BHL[..., -1] if has_amp else None
  return out_BHLD, m_BH, jnp.concatenate([s_BHFE, z_BHF[..., None]], -1)
