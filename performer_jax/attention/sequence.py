"""Sequence parallelism: attention with the length axis sharded over devices.

Contract and communication: `sequence_axis` in `favor_attention` (api.py);
design: docs/long_context.md. FAVOR+ (after LASP-2): each device summarizes
its keys as `(m_p, S_p)` (summary.py; rematerialized backward), one
`all_gather` gives every device all P summaries, and device p folds those of
devices q < p (all of them, bidirectional) into its seed. Queries are still
measured against the running max of the keys they see, so no later key can
change an earlier output. Softmax and L2 gather all keys, values and the key
mask (exact, but O(L) per device).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from performer_jax.attention import feature_maps
from performer_jax.attention import layout
from performer_jax.attention import summary

AxisName = str | tuple[str, ...]


def axis_size(axis: AxisName, name: str) -> int:
  """The number of devices along `axis`; a ValueError naming the fix when it
  is not a manual mesh axis of the enclosing `shard_map`."""
  try:
    return jax.lax.axis_size(axis)
  except NameError as err:
    raise ValueError(
        f"{name}: sequence_axis={axis!r} is not a manual mesh axis here. "
        "Call it inside jax.shard_map over a mesh with that axis and the "
        "length axis sharded over it (or wrap the call with "
        "performer_jax.attention.shard_sequence); see "
        "docs/long_context.md.") from err


@functools.partial(jax.checkpoint, static_argnums=(0,))
def _local_summary(kernel, x_k_BHSD, v_BHSE, keep_B1S, proj):
  """`(m [B, H] or None, S [B, H, F, Dv+1])` of this device's keys.
  Rematerialized in the backward pass: it keeps no features alive."""
  kf_BHSF, amp_BHS = feature_maps.resolve(kernel, proj)(x_k_BHSD)
  return summary.summarize(kf_BHSF, amp_BHS, layout.append_ones(v_BHSE),
                           keep_B1S)


def gather_summaries(m_BH: jax.Array | None, s_BHFE: jax.Array,
                     axis: AxisName) -> tuple:
  """Every device's summary: `(m [P, B, H] or None, S [P, B, H, F, E])`,
  from one all-gather (the maxima travel as an extra row of S)."""
  if m_BH is None:
    return None, jax.lax.all_gather(s_BHFE, axis)
  m_row = jnp.broadcast_to(m_BH[..., None, None],
                           m_BH.shape + (1, s_BHFE.shape[-1]))
  packed_PBHFE = jax.lax.all_gather(
      jnp.concatenate([s_BHFE, jax.lax.stop_gradient(m_row)], axis=-2), axis)
  return (jax.lax.stop_gradient(packed_PBHFE[..., -1, 0]),
          packed_PBHFE[..., :-1, :])


def _device_summaries(x_k_BHSD, v_BHSE, key_mask_BS, proj, kernel, axis):
  keep_B1S = None if key_mask_BS is None else key_mask_BS[:, None]
  m_BH, s_BHFE = _local_summary(kernel, x_k_BHSD, v_BHSE, keep_B1S, proj)
  return gather_summaries(m_BH, s_BHFE, axis)


def causal(x_q_BHLD: jax.Array, x_k_BHLD: jax.Array, v_BHLE: jax.Array,
           key_mask_BL: jax.Array | None, projection: jax.Array | None, *,
           kernel, chunk_size: int, axis: AxisName,
           core: Callable) -> jax.Array:
  """Causal FAVOR+ on this device's block of prepared inputs: float32
  `[B, H, L/P, Dv]`. `core` is a causal implementation taking `seed=`
  (parallel.causal, slim.causal or autodiff.causal)."""
  m_PBH, s_PBHFE = _device_summaries(x_k_BHLD, v_BHLE, key_mask_BL,
                                     projection, kernel, axis)
  devices = jnp.arange(s_PBHFE.shape[0])
  seed = summary.fold(m_PBH, s_PBHFE, devices < jax.lax.axis_index(axis))
  return core(x_q_BHLD, x_k_BHLD, v_BHLE, key_mask_BL, projection,
              kernel=kernel, chunk_size=chunk_size, seed=seed)


def bidirectional(x_q_BHLD: jax.Array, x_k_BHSD: jax.Array,
                  v_BHSE: jax.Array, key_mask_BS: jax.Array | None,
                  projection: jax.Array | None, *, kernel,
                  axis: AxisName) -> jax.Array:
  """Bidirectional FAVOR+ of this device's queries against the keys of all
  devices: float32 `[B, H, L/P, Dv]`."""
  m_PBH, s_PBHFE = _device_summaries(x_k_BHSD, v_BHSE, key_mask_BS,
                                     projection, kernel, axis)
  _, s_BHFE = summary.fold(m_PBH, s_PBHFE,
                           jnp.ones(s_PBHFE.shape[0], bool))
  qf_BHLF, _ = feature_maps.resolve(kernel, projection)(x_q_BHLD)
  num_BHLE = jnp.einsum("bhlf,bhfe->bhle", qf_BHLF, s_BHFE)
  return feature_maps.normalize(num_BHLE[..., :-1], num_BHLE[..., -1:],
                                signed_features=kernel == "softmax_trig")


def gather_keys(flat: layout.Flat, axis: AxisName
                ) -> tuple[layout.Flat, jax.Array]:
  """The exact-attention fallback: `flat` with the keys, values and key mask
  of all devices (gathered along the length), and the global position of
  this device's first query, for causal masking (queries end-aligned with
  the keys, as in the unsharded call)."""
  gather = lambda x: None if x is None else jax.lax.all_gather(
      x, axis, axis=1, tiled=True)
  q_len, kv_len = flat.q_BLHD.shape[1], flat.k_BSHD.shape[1]
  devices = axis_size(axis, "attention")
  offset = (jax.lax.axis_index(axis) * q_len + devices * (kv_len - q_len))
  return flat._replace(k_BSHD=gather(flat.k_BSHD), v_BSHD=gather(flat.v_BSHD),
                       key_mask_BS=gather(flat.key_mask_BS)), offset


def shard_sequence(attention_fn: Callable, *, mesh=None,
                   sequence_axis: AxisName | None = "seq",
                   batch_axes: AxisName | None = None,
                   head_axis: AxisName | None = None) -> Callable:
  """Wraps an attention function for global arrays under `jax.jit`.

  Returns `call(query, key, value, *replicated, key_mask=None,
  query_mask=None, **options)` taking `[B, L, H, D]` arrays (and `[B, L]`
  masks) sharded as `P(batch_axes, sequence_axis, head_axis, None)`; it runs
  `attention_fn(q, k, v, *replicated, key_mask=..., query_mask=...,
  sequence_axis=sequence_axis, **options)` per device in `jax.shard_map`
  and returns the output with the same sharding. `replicated` (e.g. the
  FAVOR+ projection, or None) is passed whole to every device.

  Args:
    attention_fn: `favor_attention`, `softmax_attention` or `l2_attention`
      (or a function with their signature).
    mesh: a `jax.sharding.Mesh`, or None for the mesh set by
      `jax.set_mesh` (the context mesh).
    sequence_axis: the mesh axis (or axes) sharding the length, or None
      (each device holds whole sequences).
    batch_axes: the mesh axis (or axes) sharding the batch, or None.
    head_axis: the mesh axis sharding the heads, or None.
  """
  spec = PartitionSpec(batch_axes, sequence_axis, head_axis, None)
  mask_spec = PartitionSpec(batch_axes, sequence_axis)
  named = [a for a in (batch_axes, sequence_axis, head_axis) if a is not None]
  manual = frozenset(n for a in named for n in (
      a if isinstance(a, tuple) else (a,)))
  # Whole sequences (sequence_axis None) need no collective, so no
  # varying-axes types either: unchecked, as a kernel's own loops (Pallas
  # interpret mode on the CPU) do not carry them.
  check_vma = sequence_axis is not None

  def call(query, key, value, *replicated: jax.Array | None,
           key_mask=None, query_mask=None, **options):
    def local(q, k, v, rep, km, qm):
      return attention_fn(q, k, v, *rep, key_mask=km, query_mask=qm,
                          sequence_axis=sequence_axis, **options)
    mapped = jax.shard_map(
        local, mesh=mesh, axis_names=manual, check_vma=check_vma,
        in_specs=(spec, spec, spec, PartitionSpec(), mask_spec, mask_spec),
        out_specs=spec)
    return mapped(query, key, value, tuple(replicated), key_mask, query_mask)
  return call


@dataclasses.dataclass(frozen=True)
class SequenceSharding:
  """How the attention layers shard sequences: the mesh, its axis over the
  length, and the axes over batch and heads (see `shard_sequence`)."""
  mesh: Any
  sequence_axis: AxisName | None = "seq"
  batch_axes: AxisName | None = None
  head_axis: AxisName | None = None

  def wrap(self, attention_fn: Callable) -> Callable:
    return shard_sequence(attention_fn, mesh=self.mesh,
                          sequence_axis=self.sequence_axis,
                          batch_axes=self.batch_axes,
                          head_axis=self.head_axis)


_CURRENT: contextvars.ContextVar[SequenceSharding | None] = (
    contextvars.ContextVar("performer_jax_sequence_sharding", default=None))


@contextlib.contextmanager
def sequence_sharding(mesh, *, sequence_axis: AxisName | None = "seq",
                      batch_axes: AxisName | None = None,
                      head_axis: AxisName | None = None) -> Iterator[None]:
  """Makes the attention layers traced inside it sequence-parallel.

  The self-attention of `performer_jax.linen.MultiHeadAttention` and
  `performer_jax.nnx.MultiHeadAttention` (not decoding) then runs in
  `shard_sequence(...)` with these axes: on global `[B, L, ...]` arrays
  under `jax.jit`, with L split over `sequence_axis`. The rest of a model
  (embeddings, MLPs, the loss) is partitioned by XLA from the inputs'
  sharding, as any jitted code. Like `nn.logical_axis_rules` it acts at
  trace time: enter it around the `jit`-compiled call (or its first call).
  The trainer enters it when `config.mesh.seq > 1`.
  """
  token = _CURRENT.set(SequenceSharding(mesh, sequence_axis, batch_axes,
                                        head_axis))
  try:
    yield
  finally:
    _CURRENT.reset(token)


def current_sequence_sharding() -> SequenceSharding | None:
  """The innermost active `sequence_sharding`, or None."""
  return _CURRENT.get()
