"""Multi-device checks, run by test_sharded.py in ONE subprocess with 8
forced CPU devices (the device count is fixed when JAX starts).

`python -m tests.helpers.sharded_checks` prints one JSON line: check name
-> a number (the largest error relative to the reference's scale, or a
count) or a string (an error message). test_sharded.py asserts on them.
Every check compares against a single-device call of the same function
inside the same jit (or against "autodiff"), forward and backward.
"""

import functools
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from performer_jax import attention
from performer_jax.attention import cpu_kernel
from performer_jax.attention import pallas_segments
from tests.helpers import multidevice

jax.config.update("jax_default_matmul_precision", "highest")

record = multidevice.Recorder()
rel_error = multidevice.rel_error


def out_and_grads(fn):
  """`(q, k, v) -> (out, (dq, dk, dv))` of a loss with a non-uniform
  cotangent (every output element matters)."""
  def loss(q, k, v):
    out = fn(q, k, v)
    return jnp.sum(jnp.exp(jnp.sin(3.0 * out))), out
  def both(q, k, v):
    grads, out = jax.grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v)
    return out, grads
  return both


def square_features(x, projection):
  del projection
  return jnp.square(x)


def qkv(b, length, seed):
  """tests.helpers.inputs.qkv's recipe (h=2, d=8, m=16, scale 1.5, keep 0.7)
  without importing it: it loads the Flax models, seconds of this
  subprocess's start."""
  r = jax.random.split(jax.random.PRNGKey(seed), 5)
  q, k = (1.5 * jax.random.normal(x, (b, length, 2, 8)) for x in r[:2])
  v = jax.random.normal(r[2], (b, length, 2, 8))
  mask = jax.random.bernoulli(r[3], 0.7, (b, length)).at[:, 0].set(True)
  proj = attention.gaussian_orthogonal_random_matrix(r[4], 16, 8)
  return q, k, v, mask, proj


DEVICES = np.array(jax.devices())
assert DEVICES.size == 8, DEVICES

# The bug: batch-sharded shard_map around every implementation.
DATA = Mesh(DEVICES, ("data",))
Q, K, V, MASK, PROJ = qkv(b=8, length=13, seed=0)
BATCH = NamedSharding(DATA, P("data"))
IMPLEMENTATION_CASES = [
    (True, "kernel"), (True, "slim"), (True, "autodiff"), (True, "parallel"),
    (True, "pallas"), (False, "slim"), (False, "autodiff"),
    (False, "pallas")]
REFERENCE = {}


def favor_fn(causal, implementation, **kw):
  return functools.partial(attention.favor_attention, projection=PROJ,
                           causal=causal, chunk_size=4,
                           implementation=implementation, **kw)


for causal, impl in IMPLEMENTATION_CASES:
  if impl == "kernel" and not cpu_kernel.built():
    continue  # test_sharded.py skips (or fails) that case itself.

  @record(f"batch_shard_map/{'causal' if causal else 'bidir'}/{impl}")
  def _(causal=causal, impl=impl):
    if causal not in REFERENCE:
      ref = favor_fn(causal, "autodiff")
      REFERENCE[causal] = jax.jit(out_and_grads(
          lambda q, k, v: ref(q, k, v, key_mask=MASK, query_mask=MASK)))(
          Q, K, V)
    fn = favor_fn(causal, impl)
    mapped = jax.shard_map(
        lambda q, k, v, m: fn(q, k, v, key_mask=m, query_mask=m),
        mesh=DATA, in_specs=P("data"), out_specs=P("data"))
    plain = out_and_grads(lambda q, k, v: fn(q, k, v, key_mask=MASK,
                                             query_mask=MASK))
    sharded = out_and_grads(lambda q, k, v: mapped(q, k, v, MASK))
    both = jax.jit(lambda q, k, v: (plain(q, k, v), sharded(q, k, v)))
    # Batch-sharded inputs: "plain" is the implementation under jit with
    # shardings (XLA partitions it), "sharded" runs it inside shard_map.
    got_plain, got_sharded = both(*(jax.device_put(x, BATCH)
                                    for x in (Q, K, V)))
    return max(rel_error(got_plain, REFERENCE[causal]),
               rel_error(got_sharded, REFERENCE[causal]))


# Sequence parallelism: (data=2, seq=4) and (seq=8).
MESHES = {"data2_seq4": Mesh(DEVICES.reshape(2, 4), ("data", "seq")),
          "seq8": Mesh(DEVICES, ("seq",))}
BATCH_AXES = {"data2_seq4": "data", "seq8": None}
SQ, SK, SV, SMASK, SPROJ = qkv(b=2, length=32, seed=1)
# Row 1: the first 12 keys padded, so whole devices hold no key.
SMASK = SMASK.at[1, :12].set(False).at[1, 12].set(True)


def _in_stretches(fn, segments):
  """`fn` tracing "pallas" in `segments` stretches (a GPU's form,
  pallas_segments.py), whatever this platform's rule says."""
  def traced(*args, **kw):
    rule = pallas_segments.segments_for
    pallas_segments.segments_for = lambda *_: segments
    try:
      return fn(*args, **kw)
    finally:
      pallas_segments.segments_for = rule
  return traced


def sequence_case(kind, causal, mesh_name, *, impl="auto", kernel="softmax",
                  masked=True, kv_len=None, segments=None):
  """Jitted `(q, k, v) -> ((out, grads) unsharded, (out, grads) with the
  length sharded over "seq")`."""
  mask = SMASK if masked else None
  if kv_len is not None:
    mask = None if mask is None else jnp.tile(mask, (1, kv_len // 32))
  if kind == "favor":
    proj = None if kernel in ("relu", square_features) else SPROJ
    fn = functools.partial(attention.favor_attention, projection=proj,
                           kernel=kernel, causal=causal, chunk_size=3,
                           implementation=impl)
    if segments:
      fn = _in_stretches(fn, segments)
  else:
    fn = functools.partial({"softmax": attention.softmax_attention,
                            "l2": attention.l2_attention}[kind],
                           causal=causal)
  qmask = mask if kv_len is None else None
  attend = attention.shard_sequence(fn, mesh=MESHES[mesh_name],
                                    batch_axes=BATCH_AXES[mesh_name])
  plain = out_and_grads(lambda q, k, v: fn(q, k, v, key_mask=mask,
                                           query_mask=qmask))
  sharded = out_and_grads(lambda q, k, v: attend(q, k, v, key_mask=mask,
                                                 query_mask=qmask))
  return jax.jit(lambda q, k, v: (plain(q, k, v), sharded(q, k, v)))


SEQUENCE_CASES = {
    "favor/causal/parallel/data2_seq4": dict(
        kind="favor", causal=True, mesh_name="data2_seq4", impl="parallel"),
    "favor/causal/pallas/seq8": dict(
        kind="favor", causal=True, mesh_name="seq8", impl="pallas"),
    "favor/causal/pallas_stretches/data2_seq4": dict(
        kind="favor", causal=True, mesh_name="data2_seq4", impl="pallas",
        segments=2),
    "favor/causal/slim_hyperbolic/seq8": dict(
        kind="favor", causal=True, mesh_name="seq8", impl="slim",
        kernel="softmax_hyperbolic"),
    "favor/causal/autodiff_user_fn_unmasked/data2_seq4": dict(
        kind="favor", causal=True, mesh_name="data2_seq4", impl="autodiff",
        kernel=square_features, masked=False),
    "favor/bidir/softmax/seq8": dict(
        kind="favor", causal=False, mesh_name="seq8"),
    "favor/bidir/relu_cross_length/data2_seq4": dict(
        kind="favor", causal=False, mesh_name="data2_seq4", kernel="relu",
        kv_len=64),
    "softmax/causal/data2_seq4": dict(
        kind="softmax", causal=True, mesh_name="data2_seq4"),
    "l2/causal/seq8": dict(kind="l2", causal=True, mesh_name="seq8"),
}
COMPILED = {}

for name, case in SEQUENCE_CASES.items():
  @record("sequence/" + name)
  def _(name=name, case=case):
    fn = COMPILED[name] = sequence_case(**case)
    k_len = case.get("kv_len") or 32
    tile = lambda x: jnp.tile(x, (1, k_len // 32, 1, 1))
    want, got = fn(SQ, tile(SK), tile(SV))
    return rel_error(got, want)


@record("sequence/causal_across_devices")
def _():
  """Changing the last key and value moves no earlier output, on any device
  (an error of 0 up to float32 rounding), and does move the last one."""
  fn = COMPILED["favor/causal/parallel/data2_seq4"]
  (_, _), (base, _) = fn(SQ, SK, SV)
  (_, _), (moved, _) = fn(SQ, SK.at[:, -1].multiply(30.0),
                          SV.at[:, -1].add(100.0))
  earlier = rel_error(moved[:, :-1], base[:, :-1])
  last = float(jnp.max(jnp.abs(moved[:, -1] - base[:, -1])))
  return {"earlier": earlier, "last": last}


@record("sequence/padded_keys_cannot_leak")
def _():
  """NaN and inf in padded keys and values change no output and no gradient
  of a real position."""
  fn = COMPILED["favor/causal/parallel/data2_seq4"]
  pad = ~SMASK[:, :, None, None]
  (_, _), base = fn(SQ, SK, SV)
  worst = 0.0
  for junk in (jnp.nan, jnp.inf):
    (_, _), got = fn(SQ, jnp.where(pad, junk, SK), jnp.where(pad, junk, SV))
    worst = max(worst, rel_error(got, base))
  return worst


def collectives(mesh_name, length):
  """(op, shape) of every collective in the compiled gradient of the
  sequence-parallel causal pass at `length`."""
  fn = functools.partial(attention.favor_attention, projection=SPROJ,
                         causal=True, chunk_size=4, implementation="parallel")
  attend = attention.shard_sequence(fn, mesh=MESHES[mesh_name],
                                    batch_axes=BATCH_AXES[mesh_name])
  x = jnp.ones((2, length, 2, 8))
  grad = jax.jit(jax.grad(lambda q, k, v: jnp.sum(jnp.sin(attend(q, k, v))),
                          argnums=(0, 1, 2)))
  text = grad.lower(x, x, x).compile().as_text()
  found = re.findall(r"= (\S+) (all-gather|reduce-scatter|all-reduce|"
                     r"all-to-all|collective-permute)(?:-start)?\(", text)
  return sorted((op, re.sub(r"\{.*", "", shape)) for shape, op in found)


@record("sequence/collectives")
def _():
  at_32, at_128 = (collectives("data2_seq4", n) for n in (32, 128))
  return {"at_32": at_32, "at_128": at_128}


@record("sequence/shard_sequence_context_mesh")
def _():
  """shard_sequence(mesh=None) under jax.jit with jax.set_mesh: the way a
  module calls it; inputs placed with a NamedSharding over (data, seq)."""
  mesh = jax.make_mesh((2, 4), ("data", "seq"),
                       axis_types=(jax.sharding.AxisType.Explicit,) * 2)
  attend = attention.shard_sequence(attention.favor_attention,
                                    batch_axes="data")
  want = attention.favor_attention(SQ, SK, SV, SPROJ, causal=True)
  with jax.set_mesh(mesh):
    placed = [jax.device_put(x, NamedSharding(mesh, P("data", "seq")))
              for x in (SQ, SK, SV)]
    got = jax.jit(lambda q, k, v: attend(q, k, v, SPROJ, causal=True))(
        *placed)
  return rel_error(got, want)


@record("sequence/tuple_axes")
def _():
  """The length sharded over two mesh axes, ("s1", "s2"): forward."""
  mesh = Mesh(DEVICES.reshape(2, 2, 2), ("data", "s1", "s2"))
  attend = attention.shard_sequence(attention.favor_attention, mesh=mesh,
                                    sequence_axis=("s1", "s2"),
                                    batch_axes="data")
  got = jax.jit(lambda q, k, v: attend(q, k, v, SPROJ, key_mask=SMASK,
                                       causal=True, chunk_size=3))(SQ, SK, SV)
  want = attention.favor_attention(SQ, SK, SV, SPROJ, key_mask=SMASK,
                                   causal=True, chunk_size=3)
  return rel_error(got, want)


record.print()
sys.stdout.flush()
