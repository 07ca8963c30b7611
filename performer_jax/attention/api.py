"""The public attention functions: argument checks and dispatch.

`favor_attention` (Choromanski et al. 2021; its docstring describes the
implementations), `softmax_attention` and `l2_attention` (Kim et al. 2021)
check Flax-layout tensors, prepare them once (layout.py) and dispatch to:
  exact.py         softmax and L2 attention, O(L^2) memory
  autodiff.py      FAVOR+ in plain JAX, every kernel (the reference)
  fused.py         bidirectional FAVOR+ with a hand-written VJP
  slim.py          causal FAVOR+ with a recomputing (SLiM) backward
  parallel.py      causal FAVOR+ as a prefix over chunk summaries
  pallas_favor.py  FAVOR+ as Pallas kernels (pallas_calls.py, pallas_tpu.py;
                   pallas_segments.py: in stretches, to fill a GPU)
  cpu_kernel.py    causal FAVOR+ through a compiled XLA:CPU kernel
  sequence.py      any of them with the length sharded over a mesh axis
All of them run and differentiate inside `jax.shard_map` (vma.py).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from performer_jax import allocator
from performer_jax.attention import autodiff
from performer_jax.attention import chunked
from performer_jax.attention import cpu_kernel
from performer_jax.attention import exact
from performer_jax.attention import feature_maps
from performer_jax.attention import fused
from performer_jax.attention import layout
from performer_jax.attention import pallas_favor
from performer_jax.attention import pallas_segments
from performer_jax.attention import parallel
from performer_jax.attention import sequence
from performer_jax.attention import slim

AxisName = sequence.AxisName

DEFAULT_CHUNK_SIZE = 64
IMPLEMENTATIONS = ("auto", "slim", "autodiff", "kernel", "parallel",
                   "pallas")
# The attention kinds a module or config can choose: exact softmax, FAVOR+,
# exact L2 (Lipschitz with tied weights).
ATTENTION_KINDS = ("softmax", "favor", "l2")


def check_qkv(query: jax.Array, key: jax.Array, value: jax.Array,
              key_mask: jax.Array | None, *, name: str,
              query_mask: jax.Array | None = None) -> None:
  """Raises ValueError when the shapes or dtypes of a call are unusable."""
  for arg_name, arr in (("query", query), ("key", key), ("value", value)):
    if arr.ndim < 3:
      raise ValueError(
          f"{name}: {arg_name} must have shape [batch..., length, heads, "
          f"head_dim], got shape {arr.shape}.")
    if not jnp.issubdtype(arr.dtype, jnp.floating):
      raise TypeError(
          f"{name}: {arg_name} must be a floating-point array, got dtype "
          f"{arr.dtype}. Attention on integer or bool inputs would be "
          f"truncated back to that dtype; cast first, e.g. "
          f"`{arg_name}.astype(jnp.float32)`.")
  if query.ndim != key.ndim or key.ndim != value.ndim:
    raise ValueError(
        f"{name}: query, key and value must have the same rank, got shapes "
        f"{query.shape}, {key.shape}, {value.shape}.")
  if key.shape[:-1] != value.shape[:-1]:
    raise ValueError(
        f"{name}: key and value must agree on [batch..., kv_len, heads], got "
        f"key {key.shape} and value {value.shape}.")
  if query.shape[:-3] != key.shape[:-3] or query.shape[-2] != key.shape[-2]:
    raise ValueError(
        f"{name}: query and key must agree on batch dims and heads, got query "
        f"{query.shape} and key {key.shape}.")
  if query.shape[-1] != key.shape[-1]:
    raise ValueError(
        f"{name}: query and key head_dim differ: {query.shape[-1]} vs "
        f"{key.shape[-1]}.")
  if key_mask is not None:
    expected = key.shape[:-2]
    if tuple(key_mask.shape) != tuple(expected):
      raise ValueError(
          f"{name}: key_mask must have shape [batch..., kv_len] = {expected} "
          f"(True = attend), got {tuple(key_mask.shape)}. For a Flax-style "
          "[batch, heads, q_len, kv_len] mask use "
          "performer_jax.linen.make_favor_attention_fn.")
    if key_mask.dtype != jnp.bool_:
      raise ValueError(
          f"{name}: key_mask must be boolean (True = attend), got dtype "
          f"{key_mask.dtype}. Convert with `mask.astype(bool)`.")
  if query_mask is not None:
    expected = query.shape[:-2]
    if (tuple(query_mask.shape) != tuple(expected)
        or query_mask.dtype != jnp.bool_):
      raise ValueError(
          f"{name}: query_mask must be boolean [batch..., q_len] = "
          f"{expected} (True = a real query), got {query_mask.dtype} "
          f"{tuple(query_mask.shape)}.")


def resolve_implementation(implementation: str, kernel, causal: bool,
                           sequence_axis: AxisName | None = None) -> str:
  """Maps "auto" to the implementation that runs (the rules:
  `favor_attention`'s docstring); "kernel" with a sharded sequence is
  refused."""
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got "
                     f"{implementation!r}.")
  on_cpu = jax.default_backend() == "cpu"
  if implementation == "auto":
    if pallas_favor.preferred(kernel):
      return "pallas"
    if not causal:
      return "slim"
    use_kernel = (sequence_axis is None and cpu_kernel.supports(kernel) and
                  on_cpu and cpu_kernel.built())
    return "kernel" if use_kernel else ("slim" if on_cpu else "parallel")
  if implementation == "kernel" and causal and sequence_axis is not None:
    raise ValueError(
        "favor_attention: implementation='kernel' cannot start from the state "
        "of earlier sequence shards; with sequence_axis use 'parallel', "
        "'slim', 'autodiff' or 'auto'.")
  return implementation


@functools.partial(jax.named_call, name="favor_attention")
def favor_attention(query: jax.Array, key: jax.Array, value: jax.Array,
                    projection: jax.Array | None, *,
                    kernel: str | feature_maps.FeatureFn = "softmax",
                    causal: bool = False,
                    key_mask: jax.Array | None = None,
                    query_mask: jax.Array | None = None,
                    chunk_size: int = DEFAULT_CHUNK_SIZE,
                    implementation: str = "auto",
                    sequence_axis: AxisName | None = None) -> jax.Array:
  """FAVOR+ approximation of `softmax_attention(query, key, value)`.

  Args:
    query: `[batch..., L, H, D]`, floating point.
    key: `[batch..., S, H, D]` (S == L when causal).
    value: `[batch..., S, H, Dv]`.
    projection: `[M, D]` random features from
      `gaussian_orthogonal_random_matrix`, shared by all heads; None only for
      kernel "relu" (the deterministic `relu(x) + eps` features) or a user
      function that needs none.
    kernel: "softmax" (positive features, default), "softmax_hyperbolic",
      "softmax_trig", "relu", or a function `(x [..., D], projection) ->
      features [..., F] >= 0`. x is pre-scaled by `D^(-1/4)`. Features must
      be non-negative except for "softmax_trig".
    causal: query i sees keys j <= i only.
    key_mask: bool `[batch..., S]`, True = attend. Padded keys are removed from
      the numerator and the normalizer whatever they contain.
    query_mask: bool `[batch..., L]` or None, False at padded queries
      (self-attention passes its key mask): padded query rows are zeroed on
      the way in and their outputs are 0, so whatever they hold (even NaN)
      cannot reach the gradients of real positions.
    chunk_size: C, tokens per chunk in causal mode. Work per token grows with
      C (the intra-chunk product), per-chunk overhead shrinks with it.
    implementation: which code runs; all give the same values and
      gradients, at different speed and memory (docs/long_context.md). This
      is the one description of them; the rest of the package links here.
      "auto" (default): "pallas" on a TPU and on a GPU of compute
        capability 9.0 (Hopper) or newer, for the kernels it serves
        (`pallas_favor.preferred`; a shape it cannot tile takes the rest of
        this rule). Otherwise causal on the CPU backend, "kernel" when it
        is built, serves `kernel` and the sequence is unsharded, else
        "slim"; causal on another GPU, "parallel"; bidirectional, "slim".
      "slim": causal, a scan over chunks that stores each chunk's entry
        state and recomputes features backward (the SLiM trade-off);
        bidirectional, `fused.bidirectional`'s hand-written VJP for the
        softmax kernels, which stores only the features.
      "parallel": causal, all chunks at once and a loop-free prefix over
        their summaries (parallel.py), SLiM's memory.
      "kernel": the compiled XLA:CPU causal kernel (cpu_kernel.py).
      "pallas": Pallas kernels (pallas_favor.py), features computed on chip
        and never stored, matmuls in the input dtype with float32
        accumulation; kernels "softmax", "softmax_hyperbolic" and "relu"
        (others, and shapes a backend cannot tile, run "auto"'s choice;
        on a GPU: bf16 or f16 inputs, tiles of at most 8192 / F of the
        `chunk_size` rows, `pallas_favor.supports`); interpret mode on the
        CPU, for tests.
      "autodiff": plain autodiff of the reference (every kernel), storing
        every feature tensor.
      Bidirectional "kernel" and "parallel" run as "slim".
    sequence_axis: None, or the name (or tuple of names) of a manual mesh
      axis of the enclosing `jax.shard_map` over which the length axis of
      query, key, value and the masks is sharded: device p holds the p-th
      contiguous block of positions (`jax.lax.axis_index` order; causal
      needs equal q and kv blocks). The result on each device is its block
      of the unsharded call's result, values and gradients, masks and
      padding included. Communication per call (sequence.py): one
      all-gather of the per-device key summaries, `P x B x H x (F + 1) x
      (Dv + 1)` float32 received per device for P devices and F features,
      and backward one reduce-scatter of the same size: independent of L.
      Causal mode supports "parallel", "slim" and "autodiff" (and "auto");
      bidirectional mode has one sequence-parallel path whatever
      `implementation` says.
      `shard_sequence` wraps the `shard_map` for callers under `jax.jit`.

  Returns:
    `[batch..., L, H, Dv]` in the inputs' dtype. Features, exp, normalizer and
    all accumulation are float32.

  Raises:
    ValueError, TypeError: naming the argument and the fix.
  """
  check_qkv(query, key, value, key_mask, name="favor_attention",
            query_mask=query_mask)
  if causal and query.shape[-3] != key.shape[-3]:
    raise ValueError(
        "favor_attention: causal mode needs q_len == kv_len (self-attention), "
        f"got query {query.shape} and key {key.shape}. For token-by-token "
        "decoding use performer_jax.linen.MultiHeadAttention(decode=True).")
  if projection is not None and (projection.ndim != 2 or
                                 projection.shape[-1] != query.shape[-1] or
                                 projection.shape[0] < 1):
    raise ValueError(
        f"favor_attention: projection must be [num_features >= 1, head_dim="
        f"{query.shape[-1]}], got {projection.shape}. Draw one with "
        "gaussian_orthogonal_random_matrix(rng, num_features, head_dim).")
  if int(chunk_size) <= 0:
    raise ValueError(f"chunk_size must be positive, got {chunk_size}.")
  if sequence_axis is not None:
    sequence.axis_size(sequence_axis, "favor_attention")
  implementation = resolve_implementation(implementation, kernel, causal,
                                          sequence_axis)
  proj = None if projection is None else jax.lax.stop_gradient(
      projection.astype(jnp.float32))
  feature_maps.resolve(kernel, proj)  # Checks kernel and projection.
  allocator.hint_once()  # the CPU's fast path, once per process
  flat = layout.flatten(query, key, value, key_mask, query_mask)
  x_q_BHLD, x_k_BHSD, v_BHSD = layout.favor_inputs(flat)
  args = (x_q_BHLD, x_k_BHSD, v_BHSD, flat.key_mask_BS, proj)
  pallas_fn = None
  if implementation == "pallas":
    pallas_fn = pallas_function(kernel, proj, x_q_BHLD.shape,
                                x_k_BHSD.shape[2], v_BHSD.shape[-1],
                                int(chunk_size), causal, flat.dtype)
    if pallas_fn is None:  # Not served: what "auto" chose before "pallas".
      implementation = "parallel" if causal else "slim"
  if causal:
    causal_impl = {"kernel": cpu_kernel.causal, "slim": slim.causal,
                   "autodiff": autodiff.causal, "parallel": parallel.causal,
                   "pallas": pallas_fn}[implementation]
    if sequence_axis is not None:
      out_BHLD = sequence.causal(*args, kernel=kernel,
                                 chunk_size=int(chunk_size),
                                 axis=sequence_axis, core=causal_impl)
    else:
      out_BHLD = causal_impl(*args, kernel=kernel, chunk_size=int(chunk_size))
  elif sequence_axis is not None:
    out_BHLD = sequence.bidirectional(*args, kernel=kernel,
                                      axis=sequence_axis)
  elif pallas_fn is not None:
    out_BHLD = pallas_fn(*args, kernel=kernel, chunk_size=int(chunk_size))
  elif implementation != "autodiff" and kernel in fused.FUSED_KERNELS:
    out_BHLD = fused.bidirectional(*args, kernel=kernel)
  else:
    out_BHLD = autodiff.bidirectional(*args, kernel=kernel)
  return layout.restore(jnp.swapaxes(out_BHLD, 1, 2), flat)


def pallas_function(kernel, proj, shape_BHLD, kv_len, value_dim, chunk_size,
                    causal, dtype):
  """The Pallas causal or bidirectional function (pallas_segments.py) with
  its matmul dtype (`pallas_favor.matmul_dtype` of the inputs' dtype) and
  stretches (`pallas_segments.segments_for`, counted in the tiles it runs,
  `pallas_favor.tile_rows`) bound, or None where it does not serve the
  call; it takes `chunk_size` as the other implementations do."""
  feature_dim = chunked.feature_dim(kernel, proj, shape_BHLD[-1])
  length = min(shape_BHLD[2], kv_len)
  tile = pallas_favor.tile_rows(chunk_size, feature_dim)
  if not pallas_favor.supports(kernel, length, shape_BHLD[-1], value_dim,
                               feature_dim, tile, dtype=dtype):
    return None
  segments = pallas_segments.segments_for(
      shape_BHLD[0] * shape_BHLD[1], chunked.num_chunks(length, tile)[1])
  fn = pallas_segments.causal if causal else pallas_segments.bidirectional
  return functools.partial(fn, segments=segments,
                           dtype=pallas_favor.matmul_dtype(dtype))


def slim_favor_attention(query: jax.Array, key: jax.Array, value: jax.Array,
                         projection: jax.Array | None, *,
                         kernel: str | feature_maps.FeatureFn = "softmax",
                         causal: bool = True,
                         key_mask: jax.Array | None = None,
                         query_mask: jax.Array | None = None,
                         chunk_size: int = DEFAULT_CHUNK_SIZE,
                         sequence_axis: AxisName | None = None) -> jax.Array:
  """`favor_attention(..., implementation="slim")`, causal by default.

  Backward memory beyond q, k, v is about
  `(L / C) * H * M * (Dv + 1) + H * C^2` floats per batch element.
  """
  return favor_attention(query, key, value, projection, kernel=kernel,
                         causal=causal, key_mask=key_mask,
                         query_mask=query_mask, chunk_size=chunk_size,
                         implementation="slim", sequence_axis=sequence_axis)


def softmax_attention(query: jax.Array, key: jax.Array, value: jax.Array, *,
                      causal: bool = False,
                      key_mask: jax.Array | None = None,
                      query_mask: jax.Array | None = None,
                      sequence_axis: AxisName | None = None) -> jax.Array:
  """Exact softmax attention with logits `q.k / sqrt(head_dim)`.

  Args:
    query: `[batch..., Lq, H, D]`, floating point.
    key: `[batch..., Lk, H, D]`.
    value: `[batch..., Lk, H, Dv]`.
    causal: query i attends to keys j <= i + (Lk - Lq).
    key_mask: bool `[batch..., Lk]`, True = attend. Padded keys are removed
      whatever they contain; a query with no visible key outputs zeros.
    query_mask: bool `[batch..., Lq]` or None, False at padded queries
      (self-attention passes its key mask): padded query rows are zeroed on
      the way in and their outputs are 0, so whatever they hold (even NaN)
      cannot reach the gradients of real positions.
    sequence_axis: None, or a manual mesh axis of the enclosing `shard_map`
      sharding the length axes (as `favor_attention`). The result equals the
      unsharded call, but each device gathers all keys, values and the key
      mask: correct, not memory-efficient (O(L) per device, `[L/P, L]`
      logits; sequence.py).

  Returns:
    `[batch..., Lq, H, Dv]` in the inputs' dtype (float32 inside).
  """
  check_qkv(query, key, value, key_mask, name="softmax_attention",
            query_mask=query_mask)
  flat = layout.flatten(query, key, value, key_mask, query_mask)
  offset = None
  if sequence_axis is not None:
    sequence.axis_size(sequence_axis, "softmax_attention")
    flat, offset = sequence.gather_keys(flat, sequence_axis)
  return layout.restore(exact.softmax(flat, causal=causal, q_offset=offset),
                        flat)


def l2_attention(query: jax.Array, key: jax.Array, value: jax.Array, *,
                 causal: bool = False,
                 key_mask: jax.Array | None = None,
                 query_mask: jax.Array | None = None,
                 keep_self: bool = True,
                 sequence_axis: AxisName | None = None) -> jax.Array:
  """Exact L2 attention (Kim et al. 2021): logits `-||q_i - k_j||^2 / sqrt(D)`.

  A query's attention to its own position (key position i + Lk - Lq) is never
  masked out, neither by `causal` nor by `key_mask`, as in the paper; this also
  means no query is ever left with an empty set of keys.

  Args and returns as `softmax_attention` (`sequence_axis` included: keys and
  values are gathered), plus `keep_self`: set it False only when the
  caller's key_mask already covers the query's own position (token-by-token
  decoding against a key cache does this).
  """
  check_qkv(query, key, value, key_mask, name="l2_attention",
            query_mask=query_mask)
  flat = layout.flatten(query, key, value, key_mask, query_mask)
  offset = None
  if sequence_axis is not None:
    sequence.axis_size(sequence_axis, "l2_attention")
    flat, offset = sequence.gather_keys(flat, sequence_axis)
  return layout.restore(exact.l2(flat, causal=causal, keep_self=keep_self,
                                 q_offset=offset), flat)
