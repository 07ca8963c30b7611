"""Tests for performer_jax.attention.incremental: the FAVOR+ recurrence, several
tokens at once (`favor_extend`, a prompt's prefill) from the empty state and
from an earlier one, against the full causal pass and token-by-token steps."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from performer_jax.attention import favor_attention
from performer_jax.attention import feature_maps
from performer_jax.attention import incremental
from tests.helpers import inputs

IMPLEMENTATIONS = ["slim", "parallel", "autodiff", "auto", "pallas",
                   pytest.param("kernel", marks=pytest.mark.needs_kernel)]


@functools.lru_cache(maxsize=None)
def reference(kernel):
  """Inputs, the empty state, and the outputs and final state of feeding
  the tokens one `favor_decode_step` at a time (shared by the tests)."""
  q, k, v, _, proj = inputs.qkv(length=23, scale=1.5)
  b, _, h, d = q.shape
  # The state is as wide as the features (2M for softmax_hyperbolic).
  width = feature_maps.resolve(kernel, proj)(q[:1, :1])[0].shape[-1]
  empty = incremental.init_favor_state(b, h, width, d)

  def step(state, qkv_t):
    out, state = incremental.favor_decode_step(*qkv_t, state, proj,
                                            kernel=kernel)
    return state, out

  state, outs = jax.jit(lambda: jax.lax.scan(
      step, empty, tuple(jnp.swapaxes(x, 0, 1) for x in (q, k, v))))()
  return (q, k, v, proj), empty, jnp.swapaxes(outs, 0, 1), state


def close(got, want):
  # float32 sums over <= 23 keys, normalized: relative to the output scale.
  scale = max(1.0, float(np.abs(want).max()))
  np.testing.assert_allclose(got, want, atol=2e-5 * scale, rtol=2e-5)


@pytest.mark.parametrize("kernel",
                         ["softmax", "softmax_hyperbolic", "relu"])
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_extend_from_empty_and_continued_equals_steps(implementation, kernel):
  (q, k, v, proj), empty, want, want_state = reference(kernel)
  extend = jax.jit(lambda q, k, v, s: incremental.favor_extend(
      q, k, v, s, proj, kernel=kernel, chunk_size=4,
      implementation=implementation))
  full = favor_attention(q, k, v, proj, causal=True, kernel=kernel,
                         implementation="autodiff")
  close(want, full)
  # One pass from the empty state (a prompt's prefill).
  got, state = extend(q, k, v, empty)
  close(got, want)
  jax.tree.map(close, state, want_state)
  # 9 tokens, then 14 more continuing from the state the first 9 left.
  first, mid = extend(q[:, :9], k[:, :9], v[:, :9], empty)
  rest, state = extend(q[:, 9:], k[:, 9:], v[:, 9:], mid)
  close(jnp.concatenate([first, rest], axis=1), want)
  jax.tree.map(close, state, want_state)


def test_kernel_serves_the_empty_state_only():
  """On the CPU the compiled kernel runs a prefill from the empty state;
  a continued one takes the seeded pass (both branches are in the program,
  one runs)."""
  inputs.require_kernel()
  q, k, v, _, proj = inputs.qkv(length=8)
  empty = incremental.init_favor_state(q.shape[0], q.shape[2], proj.shape[0],
                                    q.shape[3])
  jaxpr = str(jax.make_jaxpr(lambda s: incremental.favor_extend(
      q, k, v, s, proj, implementation="kernel"))(empty))
  assert "cond" in jaxpr and "ffi" in jaxpr.lower(), jaxpr[:2000]


def test_kernel_prefill_is_forward_only_and_says_so():
  """Differentiating the kernel's prefill names the way out; the seeded
  implementations differentiate."""
  inputs.require_kernel()
  q, k, v, _, proj = inputs.qkv(length=8)
  empty = incremental.init_favor_state(q.shape[0], q.shape[2], proj.shape[0],
                                    q.shape[3])
  loss = lambda q, impl: incremental.favor_extend(
      q, k, v, empty, proj, implementation=impl)[0].sum()
  assert np.all(np.isfinite(jax.grad(loss)(q, "slim")))
  with pytest.raises(NotImplementedError, match="implementation='slim'"):
    jax.grad(loss)(q, "kernel")
