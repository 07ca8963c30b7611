"""Tests for performer_jax.attention.pallas_favor (the "pallas" FAVOR+).

On the CPU the kernels run in Pallas interpret mode: the same kernel
source, tiny shapes (interpret mode is slow to compile). Values and
gradients are compared with "autodiff" (float32: the same math summed in
another order, 1e-5 relative; bf16 inputs: the kernels multiply in bf16,
the reference in float32, so a few bf16 ulps). The GPU and TPU programs are
lowered with `jax.export` on the CPU, forward and backward, to check that
the kernels (not XLA fallbacks) are what those backends get.
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export
from jax.sharding import Mesh

from performer_jax import attention
from performer_jax.attention import api
from performer_jax.attention import feature_maps
from performer_jax.attention import incremental
from performer_jax.attention import layout
from performer_jax.attention import pallas_favor
from performer_jax.attention import pallas_segments
from performer_jax.attention import pallas_tiles
from performer_jax.attention import parallel
from performer_jax.attention import summary
from tests.helpers import inputs

# L is not a multiple of the tile C: the last tile is padded. C, D and M
# are powers of two of at least 16, which every backend tiles (on a GPU
# the tests run the Triton kernels).
B, L, H, D, M, C = 1, 40, 2, 16, 16, 16

CASES = {  # name: (causal, kernel, dtype, masked)
    "causal_softmax_f32_masked": (True, "softmax", jnp.float32, True),
    "causal_relu_bf16_masked": (True, "relu", jnp.bfloat16, True),
    "bidir_hyperbolic_f32_masked": (False, "softmax_hyperbolic",
                                    jnp.float32, True),
    "bidir_softmax_bf16": (False, "softmax", jnp.bfloat16, False),
}


def _out_and_grads(impl, causal, kernel, mask, proj):
  """Jitted `(q, k, v, g) -> (out, (dq, dk, dv))` in float32."""
  def both(q, k, v, g):
    fn = lambda q, k, v: attention.favor_attention(
        q, k, v, proj, kernel=kernel, causal=causal, key_mask=mask,
        chunk_size=C, implementation=impl)
    out, vjp = jax.vjp(fn, q, k, v)
    grads = vjp(g.astype(out.dtype))
    return out.astype(jnp.float32), [x.astype(jnp.float32) for x in grads]
  return jax.jit(both)


@pytest.mark.parametrize("case", sorted(CASES))
def test_values_and_gradients_match_autodiff(case):
  causal, kernel, dtype, masked = CASES[case]
  q, k, v, mask, proj = inputs.qkv(b=B, length=L, h=H, d=D, m=M, scale=1.5)
  q, k, v = (x.astype(dtype) for x in (q, k, v))
  mask = mask if masked else None
  proj = None if kernel == "relu" else proj
  g = jax.random.normal(jax.random.PRNGKey(5), v.shape)
  want_out, want = _out_and_grads("autodiff", causal, kernel, mask, proj)(
      q, k, v, g)
  got_out, got = _out_and_grads("pallas", causal, kernel, mask, proj)(
      q, k, v, g)
  # bf16: outputs are bf16 (~1 ulp at |out| ~ 2 is 0.016); the gradients
  # come from bf16 products of bf16 operands.
  tol = 1e-5 if dtype == jnp.float32 else 3e-2
  scale = float(jnp.max(jnp.abs(want_out)))
  np.testing.assert_allclose(got_out, want_out, rtol=0, atol=tol * scale)
  for w, gt, name in zip(want, got, "qkv"):
    assert np.all(np.isfinite(gt)), name
    scale = float(jnp.max(jnp.abs(w)))
    assert scale > 0, name
    np.testing.assert_allclose(gt, w, rtol=0, atol=tol * scale,
                               err_msg=f"d{name}")
  if mask is not None:
    # Padded keys get exactly zero gradient.
    pad = ~np.asarray(mask)
    assert np.all(np.asarray(got[1])[pad] == 0)
    assert np.all(np.asarray(got[2])[pad] == 0)


@pytest.mark.parametrize("on,segments", [("interpret", 1),
                                         ("tpu_interpret", 1),
                                         ("interpret", 2)])
def test_seeded_causal_matches_parallel_and_no_future_leak(on, segments):
  # The seed is what sequence.py (sequence_axis) and decoding.favor_extend
  # (prefill) start a causal pass from; its cotangent must come back too.
  # "tpu_interpret": the TPU's chunk-grid kernels (pallas_tpu.py); two
  # segments: stretches of 2 and 1 chunks (and a padded one) side by side.
  q, k, v, mask, proj = inputs.qkv(b=B, length=L, h=H, d=D, m=M, scale=1.5)
  flat = layout.flatten(q, k, v, mask)
  x_q, x_k, x_v = layout.favor_inputs(flat)
  r = jax.random.split(jax.random.PRNGKey(9), 2)
  s0 = jax.random.uniform(r[0], (B, H, M, D + 1))
  m0 = jax.random.normal(r[1], (B, H))

  def run(core):
    def loss(x_q, x_k, x_v, s0):
      out = core(x_q, x_k, x_v, flat.key_mask_BS, proj, kernel="softmax",
                 chunk_size=C, seed=(m0, s0))
      return jnp.sum(jnp.sin(3.0 * out)), out
    return jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3), has_aux=True))

  kernels = functools.partial(pallas_segments.causal, on=on,
                              segments=segments)
  want, want_out = run(parallel.causal)(x_q, x_k, x_v, s0)
  got, got_out = run(kernels)(x_q, x_k, x_v, s0)
  np.testing.assert_allclose(got_out, want_out, rtol=0, atol=1e-5)
  for w, gt, name in zip(want, got, ("q", "k", "v", "seed")):
    np.testing.assert_allclose(gt, w, rtol=0,
                               atol=1e-5 * float(jnp.max(jnp.abs(w))),
                               err_msg=f"d{name}")
  # A huge last key moves no earlier output (the causal-safe stabilizer).
  moved = run(kernels)(
      x_q, x_k.at[:, :, -1].multiply(10.0), x_v.at[:, :, -1].add(100.0),
      s0)[1]
  np.testing.assert_allclose(moved[:, :, :-1], got_out[:, :, :-1], rtol=0,
                             atol=1e-6)


@pytest.mark.parametrize("on,kept", [("interpret", 3), ("tpu_interpret", 5)])
def test_bf16_pass_stores_bf16_states(monkeypatch, on, kept):
  # The backward reads the stored entry states only as bf16 matmul
  # operands, so a bf16 pass stores them in bf16 (half the largest
  # residual). The TPU's kernels store every chunk's: gradients
  # bit-identical to storing float32. The whole-sequence kernels (GPU)
  # store every other chunk's and recompute the odd ones from it, which
  # now starts from the rounded state: within 4 bf16 ulps of the largest
  # gradient (measured: 1.3 ulps). 72 tokens: 5 chunks of 16.
  q, k, v, mask, proj = inputs.qkv(b=B, length=72, h=H, d=D, m=M, scale=1.5)
  x = layout.favor_inputs(layout.flatten(q, k, v, mask))

  def grads():
    loss = lambda *x: jnp.sum(jnp.sin(pallas_favor.causal(
        *x, mask, proj, kernel="softmax", chunk_size=C, dtype=jnp.bfloat16,
        on=on)))
    vjp = jax.jit(lambda *x: jax.vjp(loss, *x))
    residuals = jax.tree.leaves(jax.eval_shape(vjp, *x)[1])
    states = [r.dtype for r in residuals if r.shape[-3:] == (kept, M, D)]
    return states, jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(*x)
  states, got = grads()
  assert states == [jnp.bfloat16]
  monkeypatch.setattr(pallas_tiles, "state_dtype", lambda cfg: jnp.float32)
  states, want = grads()
  assert states == [jnp.float32]
  for w, g in zip(want, got):
    if on == "tpu_interpret":
      np.testing.assert_array_equal(g, w)
    else:
      np.testing.assert_allclose(g, w, rtol=0,
                                 atol=4 * 2.0 ** -8 * np.max(np.abs(w)))


@pytest.mark.parametrize("causal,kernel,masked,length", [
    (True, "relu", False, L), (False, "softmax", True, L),
    (False, "relu", False, L), (True, "softmax", True, 72)])
def test_stretches_equal_one_walk(causal, kernel, masked, length):
  # Three stretches (the last one padded): of one chunk each at L = 40, of
  # two at 72 (5 chunks: 4 asked for, 3 as even as they come). Values and
  # gradients of the one-walk kernels. Causal softmax with a seed:
  # test_seeded_causal_matches_parallel_and_no_future_leak.
  q, k, v, mask, proj = inputs.qkv(b=B, length=length, h=H, d=D, m=M,
                                   scale=1.5)
  mask = mask if masked else None
  proj = None if kernel == "relu" else proj
  x = layout.favor_inputs(layout.flatten(q, k, v, mask))
  fn = pallas_segments.causal if causal else pallas_segments.bidirectional

  def run(segments):
    def loss(*x):
      out = fn(*x, mask, proj, kernel=kernel, chunk_size=C,
               segments=segments)
      return jnp.sum(jnp.sin(3.0 * out)), out
    return jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True))(*x)
  (want, want_out), (got, got_out) = run(1), run(3 if length == L else 4)
  np.testing.assert_allclose(got_out, want_out, rtol=0, atol=1e-5)
  for w, gt, name in zip(want, got, "qkv"):
    np.testing.assert_allclose(gt, w, rtol=0,
                               atol=1e-5 * float(jnp.max(jnp.abs(w))),
                               err_msg=f"d{name}")


@pytest.mark.parametrize("causal", [True, False])
def test_favor_attention_walks_the_stretches_the_rule_gives(monkeypatch,
                                                            causal):
  # What a GPU with many idle SMs gets (the rule faked to 2 stretches): the
  # stretches' key summaries (one walk needs none, causal, or folds none,
  # bidirectional), and values and gradients still equal "autodiff".
  rule, summaries = [], []
  monkeypatch.setattr(pallas_segments, "segments_for",
                      lambda *a: rule.append(a) or 2)
  summarize = pallas_favor.summarize
  monkeypatch.setattr(pallas_favor, "summarize",
                      lambda *a, **k: summaries.append(a) or summarize(*a, **k))
  q, k, v, mask, proj = inputs.qkv(b=B, length=L, h=H, d=D, m=M, scale=1.5)
  g = jax.random.normal(jax.random.PRNGKey(5), v.shape)
  got_out, got = _out_and_grads("pallas", causal, "softmax", mask, proj)(
      q, k, v, g)
  assert rule == [(B * H, 3)]  # B*H walks of 3 chunks (40 tokens, C 16)
  assert [a[0].shape for a in summaries] == [(B * 2, H, 2 * C, D)]
  want_out, want = _out_and_grads("autodiff", causal, "softmax", mask, proj)(
      q, k, v, g)
  np.testing.assert_allclose(got_out, want_out, rtol=0, atol=1e-5)
  for w, gt, name in zip(want, got, "qkv"):
    np.testing.assert_allclose(gt, w, rtol=0,
                               atol=1e-5 * float(jnp.max(jnp.abs(w))),
                               err_msg=f"d{name}")


def test_gpu_tiles_keep_a_tiles_features_in_registers():
  # C * F <= 8192 on a GPU (scripts/triton_check.py: at C = 64, F = 256
  # ptxas could not allocate the causal backward); elsewhere C as asked.
  assert pallas_favor.tile_rows(64, 256, "gpu") == 32
  assert pallas_favor.tile_rows(64, 128, "gpu") == 64
  assert pallas_favor.tile_rows(64, 512, "gpu") == 16
  assert pallas_favor.tile_rows(16, 2048, "gpu") == 16
  assert pallas_favor.tile_rows(64, 256, "tpu") == 64
  assert pallas_favor.tile_rows(64, 256, "interpret") == 64
  # The GPU's causal pass at chunk_size 64 and F = 256 walks 32-row chunks,
  # 4 for 128 tokens, and stores every other one's entry state.
  x = jax.ShapeDtypeStruct((1, 1, 128, 16), jnp.bfloat16)
  proj = jnp.ones((256, 16), jnp.float32)
  # The kernels' own entry points apply the rule too (a prefill's calls).
  for fn in (pallas_segments.causal, pallas_favor.causal):
    states = jax.eval_shape(lambda q, k, v, fn=fn: jax.vjp(
        lambda *a: fn(*a, None, proj, kernel="softmax", chunk_size=64,
                      dtype=jnp.bfloat16, on="gpu"), q, k, v)[1], x, x, x)
    kept = [r.shape for r in jax.tree.leaves(states) if r.ndim == 4]
    assert (1, 2, 256, 16) in kept, (fn, kept)


@pytest.mark.parametrize("on,groups,chunks,want", [
    ("gpu", 32, 64, 5), ("gpu", 32, 16, 2), ("gpu", 32, 7, 1),
    ("gpu", 256, 64, 1), ("tpu", 1, 1024, 1), ("interpret", 1, 1024, 1)])
def test_segments_fill_the_gpu(monkeypatch, on, groups, chunks, want):
  # An H200 has 132 SMs: 32 (batch, head) walks leave 100 idle, 5 stretches
  # of at least MIN_SEGMENT_CHUNKS chunks each fill them.
  monkeypatch.setattr(jax, "devices",
                      lambda *_: [type("Device", (), {"core_count": 132})()])
  assert pallas_segments.sm_count() == 132
  assert pallas_segments.segments_for(groups, chunks, on) == want


@pytest.mark.parametrize("kernel,on", [("softmax_hyperbolic", "interpret"),
                                       ("relu", "interpret"),
                                       ("softmax", "tpu_interpret")])
def test_summary_matches_the_features_summary(kernel, on):
  # The prefill's new state: the keys' summary without stored features,
  # padded keys and a partial last tile included, values and gradients.
  q, k, v, mask, proj = inputs.qkv(b=B, length=L, h=H, d=D, m=M, scale=1.5)
  proj = None if kernel == "relu" else proj
  _, x_k, x_v = layout.favor_inputs(layout.flatten(q, k, v, mask))
  feature_fn = feature_maps.resolve(kernel, proj)

  def want_fn(x_k, x_v):
    kf, amp = feature_fn(x_k)
    return summary.summarize(kf, amp, layout.append_ones(x_v),
                             mask[:, None])

  def got_fn(x_k, x_v):
    return pallas_favor.summarize(x_k, x_v, mask, proj, kernel=kernel,
                                  chunk_size=C, on=on)

  g = jax.random.normal(jax.random.PRNGKey(3), (B, H, 2 * M, D + 1))
  results = []
  for fn in (want_fn, got_fn):
    m_BH, s = fn(x_k, x_v)
    grads = jax.grad(lambda a, b: jnp.sum(
        fn(a, b)[1] * g[:, :, :s.shape[2]]), argnums=(0, 1))(x_k, x_v)
    results.append((m_BH, s, grads))
  (want_m, want_s, want_g), (got_m, got_s, got_g) = results
  assert (got_m is None) == (kernel == "relu")
  if got_m is not None:
    np.testing.assert_allclose(got_m, want_m, rtol=1e-6)
  np.testing.assert_allclose(got_s, want_s, rtol=1e-5,
                             atol=1e-5 * float(jnp.max(want_s)))
  for w, gt in zip(want_g, got_g):
    np.testing.assert_allclose(gt, w, rtol=0,
                               atol=1e-5 * float(jnp.max(jnp.abs(w))))


@pytest.mark.parametrize("kernel", ["softmax", "relu"])
def test_tpu_grid_kernels_equal_the_whole_sequence_ones(kernel):
  # pallas_tpu.py's chunk-grid walks against pallas_calls.py's loops:
  # bidirectional (a key length twice the query length, masked, partial
  # tiles) and causal, bf16 operands, values and gradients.
  q, k, v, mask, proj = inputs.qkv(b=B, length=L, h=H, d=D, m=M, scale=1.5)
  proj = None if kernel == "relu" else proj
  x_q, x_k, x_v = (x.astype(jnp.bfloat16) for x in layout.favor_inputs(
      layout.flatten(q, k, v, mask)))
  long_k, long_v = (jnp.concatenate([x, x[:, :, ::-1]], 2)
                    for x in (x_k, x_v))
  long_mask = jnp.concatenate([mask, mask], 1)
  g = jax.random.normal(jax.random.PRNGKey(6), x_v.shape)

  def grads(on):
    def loss(x_q, x_k, x_v, causal):
      if causal:
        out = pallas_favor.causal(x_q, x_k, x_v, mask, proj, kernel=kernel,
                                  chunk_size=C, dtype=jnp.bfloat16, on=on)
      else:
        out = pallas_favor.bidirectional(
            x_q, x_k, x_v, long_mask, proj, kernel=kernel, chunk_size=C,
            dtype=jnp.bfloat16, on=on)
      return jnp.sum(out * g)
    return [jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)),
                    static_argnums=3)(x_q, *kv, causal)
            for kv, causal in (((x_k, x_v), True), ((long_k, long_v), False))]

  for (want, want_g), (got, got_g) in zip(grads("interpret"),
                                          grads("tpu_interpret")):
    np.testing.assert_allclose(got, want, rtol=1e-5)
    for w, gt in zip(want_g, got_g):
      w, gt = np.asarray(w, np.float32), np.asarray(gt, np.float32)
      # The same bf16 products summed in another order: a bf16 ulp.
      np.testing.assert_allclose(gt, w, rtol=0,
                                 atol=1e-2 * float(np.max(np.abs(w))))


@pytest.mark.parametrize("segments", [1, 2])
def test_prefill_runs_the_kernels_and_differentiates(monkeypatch, segments):
  # favor_extend's "pallas": a causal kernel for the outputs and a summary
  # kernel for the new state, from a continued state; gradients through
  # both equal "slim"'s. Two stretches, as a GPU's prefill: two kernels
  # more (the stretches' summaries, and backward their key-tile grid).
  monkeypatch.setattr(pallas_segments, "segments_for", lambda *_: segments)
  q, k, v, _, proj = inputs.qkv(b=B, length=L, h=H, d=D, m=M, scale=1.5)
  r = jax.random.split(jax.random.PRNGKey(4), 2)
  state = {"sums": jax.random.uniform(r[0], (B, H, M, D + 1)),
           "max_amp": jax.random.normal(r[1], (B, H))}

  def loss(impl):
    def f(q, k, v, sums):
      out, new = incremental.favor_extend(
          q, k, v, {**state, "sums": sums}, proj, chunk_size=C,
          implementation=impl)
      return jnp.sum(jnp.sin(3.0 * out)) + jnp.sum(jnp.cos(new["sums"]))
    return f

  program = str(jax.make_jaxpr(jax.grad(loss("pallas"), argnums=(0, 1, 2,
                                                                3)))(
      q, k, v, state["sums"]))
  assert program.count("pallas_call") == 4 + 2 * (segments > 1), (
      "fwd and bwd of both kernels")
  want = jax.jit(jax.value_and_grad(loss("slim"), argnums=(0, 1, 2, 3)))(
      q, k, v, state["sums"])
  got = jax.jit(jax.value_and_grad(loss("pallas"), argnums=(0, 1, 2, 3)))(
      q, k, v, state["sums"])
  np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
  for w, gt, name in zip(want[1], got[1], ("q", "k", "v", "state")):
    np.testing.assert_allclose(gt, w, rtol=0,
                               atol=1e-5 * float(jnp.max(jnp.abs(w))),
                               err_msg=f"d{name}")


def test_runs_inside_shard_map_with_sequence_axis():
  # One device: the seed of the sequence path is the (empty) fold of no
  # earlier device; this checks the varying-axes types of the custom VJP.
  q, k, v, mask, proj = inputs.qkv(b=B, length=L, h=H, d=D, m=M, scale=1.5)
  mesh = Mesh(np.array(jax.devices()[:1]), ("seq",))
  call = attention.shard_sequence(attention.favor_attention, mesh=mesh)

  def loss(impl):
    def f(q, k, v):
      out = call(q, k, v, proj, key_mask=mask, causal=True, chunk_size=C,
                 implementation=impl)
      return jnp.sum(jnp.sin(3.0 * out))
    return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))

  want, want_g = loss("parallel")(q, k, v)
  got, got_g = loss("pallas")(q, k, v)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  for w, gt in zip(want_g, got_g):
    np.testing.assert_allclose(gt, w, rtol=0,
                               atol=1e-5 * float(jnp.max(jnp.abs(w))))


try:  # deprecated in JAX 0.11, to be removed
  from jax.experimental.pallas import triton as pltriton  # pylint: disable=g-import-not-at-top
except ImportError:
  pltriton = None
_NO_TRITON = pytest.mark.skipif(
    pltriton is None, reason="this JAX has no Pallas Triton backend: the "
    "GPU runs \"parallel\" (pallas_favor.supports)")
# Pallas Triton's custom call (named by the module from JAX 0.11 on).
_TRITON_CALL = getattr(pltriton, "CUSTOM_CALL_TARGET_NAME",
                       "__gpu$xla.gpu.triton")
_TRITON = export.DisabledSafetyCheck.custom_call(_TRITON_CALL)
_CALLS = {"cuda": _TRITON_CALL, "tpu": "tpu_custom_call"}


@pytest.mark.parametrize("platform", [pytest.param("cuda", marks=_NO_TRITON),
                                      "tpu"])
def test_lowers_to_the_kernels_for_accelerators(platform):
  # Power-of-two shapes the GPU backend tiles; bf16 in, fwd+bwd.
  shape = (1, 2, 48, 16)
  spec = jax.ShapeDtypeStruct(shape, jnp.float32)
  mask = jax.ShapeDtypeStruct(shape[:2 - 1] + (shape[2],), jnp.bool_)
  proj = jnp.ones((16, 16), jnp.float32)
  on = "gpu" if platform == "cuda" else "tpu"
  for causal, kernels in ((True, 2), (False, 4)):
    def loss(q, k, v, km):
      fn = pallas_favor.causal if causal else pallas_favor.bidirectional
      out = fn(q, k, v, km, proj, kernel="softmax", chunk_size=16,
               dtype=jnp.bfloat16, on=on)
      return jnp.sum(out * out)
    exported = export.export(
        jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2))),
        platforms=(platform,), disabled_checks=[_TRITON])(
            spec, spec, spec, mask)
    text = exported.mlir_module()
    calls = re.findall(r"custom_call @([\w$.]+)", text)
    # Forward and backward kernels; no matmul or exp left to XLA (the
    # features exist only inside the kernels).
    assert calls.count(_CALLS[platform]) == kernels, (causal, calls)
    assert "stablehlo.dot_general" not in text
    assert "stablehlo.exponential" not in text


@_NO_TRITON
@pytest.mark.parametrize("causal", [True, False])
def test_stretches_lower_to_kernels_and_small_sums(causal):
  # GPU form with 4 stretches of 2 chunks: the key-summary kernel and the
  # causal (or query) kernel, forward and backward; XLA keeps only the
  # prefix (or fold) of the [B, P, H, M, Dv+1] summaries, no tensor with a
  # length axis (L = 128 or a stretch of 32; M = 64 features).
  length, per = 128, 32
  spec = jax.ShapeDtypeStruct((1, 2, length, 16), jnp.float32)
  proj = jnp.ones((64, 16), jnp.float32)
  fn = pallas_segments.causal if causal else pallas_segments.bidirectional

  def loss(q, k, v):
    out = fn(q, k, v, None, proj, kernel="softmax", chunk_size=16,
             dtype=jnp.bfloat16, on="gpu", segments=4)
    return jnp.sum(out * out)
  text = export.export(jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2))),
                       platforms=("cuda",), disabled_checks=[_TRITON])(
                           spec, spec, spec).mlir_module()
  assert re.findall(r"custom_call @([\w$.]+)", text).count(
      _CALLS["cuda"]) == 4
  math = [line for line in text.splitlines()
          if "stablehlo.dot_general" in line or
          "stablehlo.exponential" in line]
  assert math  # the prefix's (or fold's) weights and weighted sums
  for line in math:
    dims = {int(n) for n in re.findall(r"(\d+)x", line)}
    assert not dims & {length, per}, line


@pytest.mark.parametrize("backend,capability,chosen", [
    ("cpu", None, False), ("gpu", "8.0", False), ("gpu", "9.0", True),
    ("gpu", "10.0", True), ("tpu", None, True)])
def test_auto_rule(monkeypatch, backend, capability, chosen):
  """"auto" runs the kernels on TPU and on Hopper or newer, for the kernels
  they serve; elsewhere it keeps "parallel" (causal) and "slim"."""
  monkeypatch.setattr(jax, "default_backend", lambda: backend)
  devices = [type("Device", (), {"compute_capability": capability})()]
  monkeypatch.setattr(jax, "devices", lambda *_: devices)
  for kernel in ("softmax", "softmax_hyperbolic", "relu"):
    for causal in (True, False):
      assert (api.resolve_implementation("auto", kernel, causal) ==
              "pallas") == chosen, (kernel, causal)
  assert pallas_favor.preferred("softmax") == chosen
  # Kernels the Pallas code does not serve keep the old rule everywhere.
  assert api.resolve_implementation("auto", "softmax_trig", True) in (
      "parallel", "kernel", "slim")
  assert not pallas_favor.preferred(lambda x, p: x)
  if backend == "gpu":  # without the Triton backend, nothing to run
    with monkeypatch.context() as patch:
      patch.setattr(pallas_favor, "_triton", lambda: False)
      assert api.resolve_implementation("auto", "softmax", True) == (
          "parallel")
  assert api.resolve_implementation("pallas", "softmax", True) == "pallas"
  # Power-of-two tiles of at least 16 only (and the Triton backend).
  gpu = functools.partial(pallas_favor.supports, on="gpu",
                          dtype=jnp.bfloat16)
  assert gpu("softmax", 4096, 64, 64, 256, 64) == (pltriton is not None)
  # float32 takes no tensor cores (and spills): "parallel" runs instead.
  assert not pallas_favor.supports("softmax", 4096, 64, 64, 256, 64, "gpu")
  # F (D + Dv) past 32768 needs more shared memory than a block has.
  assert not gpu("softmax", 4096, 128, 128, 256, 64)
  assert gpu("softmax", 4096, 128, 128, 128, 64) == (pltriton is not None)
  assert not gpu("softmax", 4096, 8, 64, 256, 64)
  assert not gpu("softmax_trig", 4096, 64, 64, 256, 64)
  # TPU: chunk blocks on a grid (any L), rows in multiples of 8.
  assert pallas_favor.supports("softmax", 65536, 64, 64, 256, 64, "tpu")
  assert not pallas_favor.supports("softmax", 65536, 64, 64, 256, 12, "tpu")
  assert pallas_favor.supports("softmax", 65536, 64, 64, 256, 8, "tpu")
  assert not pallas_favor.supports("softmax", 65536, 64, 64, 256, 8, "tpu",
                                   dtype=jnp.bfloat16)
  assert pallas_favor.supports("softmax", 65536, 64, 64, 256, 16, "tpu",
                               dtype=jnp.bfloat16)


def test_unserved_kernel_falls_back():
  q, k, v, mask, proj = inputs.qkv(b=B, length=L, h=H, d=D, m=M)
  def program(kernel, impl):
    return str(jax.make_jaxpr(lambda q, k, v: attention.favor_attention(
        q, k, v, proj, kernel=kernel, causal=True, key_mask=mask,
        chunk_size=C, implementation=impl))(q, k, v))
  assert "pallas_call" in program("softmax", "pallas")
  # softmax_trig has no kernel: "pallas" runs "parallel", the same program.
  assert program("softmax_trig", "pallas") == program("softmax_trig",
                                                      "parallel")
