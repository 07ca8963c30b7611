"""Tests for performer_jax.attention.slim (SLiM causal FAVOR+)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from performer_jax import attention
from performer_jax.attention import slim_favor_attention

B, L, H, D, M = 2, 37, 2, 8, 16
CHUNK = 8  # L is not a multiple: exercises the padded last chunk.


def _inputs(seed=0, scale=1.5):
  ks = jax.random.split(jax.random.PRNGKey(seed), 5)
  q, k, v = (scale * jax.random.normal(r, (B, L, H, D)) for r in ks[:3])
  proj = attention.gaussian_orthogonal_random_matrix(ks[3], M, D)
  g = jax.random.normal(ks[4], (B, L, H, D))
  return q, k, v, proj, g


# Second sequence padded after 25 tokens, plus a hole at position 3.
KEY_MASK = (jnp.arange(L)[None, :] < jnp.array([[L], [25]])) & (
    jnp.arange(L)[None, :] != 3)

CASES = {
    "softmax": ("softmax", True, None),
    "softmax_masked": ("softmax", True, KEY_MASK),
    "relu_masked": ("relu", True, KEY_MASK),
    "relu_deterministic": ("relu", False, None),
}


def _out_and_grads(fn):
  """Jitted `(q, k, v, p, g) -> (out, (dq, dk, dv))` for cotangent g."""
  def both(q, k, v, p, g):
    out, vjp = jax.vjp(lambda q, k, v: fn(q, k, v, p), q, k, v)
    return out, vjp(g)
  return jax.jit(both)


@pytest.mark.parametrize("case", sorted(CASES))
def test_outputs_and_gradients_match_chunked_favor(case):
  kernel, use_proj, mask = CASES[case]
  q, k, v, proj, g = _inputs()
  proj = proj if use_proj else None
  ref = lambda q, k, v, p: attention.favor_attention(
      q, k, v, p, kernel=kernel, causal=True, key_mask=mask, chunk_size=CHUNK,
      implementation="autodiff")
  slim = lambda q, k, v, p: slim_favor_attention(
      q, k, v, p, kernel=kernel, key_mask=mask, chunk_size=CHUNK)
  (out_want, want), (out_got, got) = (_out_and_grads(f)(q, k, v, proj, g)
                                      for f in (ref, slim))
  np.testing.assert_allclose(out_got, out_want, rtol=1e-5, atol=1e-5)
  for w, gt, name in zip(want, got, "qkv"):
    assert np.all(np.isfinite(gt)), name
    scale = float(jnp.max(jnp.abs(w)))
    assert scale > 0, name
    np.testing.assert_allclose(gt, w, rtol=0, atol=1e-5 * scale,
                               err_msg=f"d{name}")
  if mask is not None:
    # Padded keys/values receive exactly zero gradient.
    pad = ~np.asarray(mask)
    assert np.all(np.asarray(got[1])[pad] == 0)
    assert np.all(np.asarray(got[2])[pad] == 0)


def test_matches_exact_softmax_with_many_features():
  # Independent reference: with many orthogonal features FAVOR+ approximates
  # exact causal softmax attention on small-norm inputs.
  q, k, v, _, _ = _inputs(scale=0.5)
  proj = attention.gaussian_orthogonal_random_matrix(
      jax.random.PRNGKey(7), 4096, D)
  got = slim_favor_attention(q, k, v, proj, chunk_size=CHUNK)
  want = attention.softmax_attention(q, k, v, causal=True)
  np.testing.assert_allclose(got, want, atol=0.05)


def test_matches_bruteforce_prefix_sums_relu():
  # out_i = phi(q_i).S_i / phi(q_i).z_i with S_i, z_i explicit prefix sums.
  q, k, v, _, _ = _inputs(seed=3)
  s = D ** -0.25
  qf = np.maximum(np.asarray(q) * s, 0) + 1e-3
  kf = np.maximum(np.asarray(k) * s, 0) + 1e-3
  vv = np.asarray(v, np.float64)
  want = np.zeros_like(vv)
  for i in range(L):
    scores = np.einsum("bhf,bjhf->bjh", qf[:, i], kf[:, :i + 1])
    want[:, i] = (np.einsum("bjh,bjhe->bhe", scores, vv[:, :i + 1]) /
                  scores.sum(1)[..., None])
  got = slim_favor_attention(q, k, v, None, kernel="relu", chunk_size=CHUNK)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_no_future_leak():
  q, k, v, proj, _ = _inputs(seed=1)
  fn = jax.jit(lambda q, k, v: slim_favor_attention(q, k, v, proj,
                                                    chunk_size=CHUNK))
  base = fn(q, k, v)
  # A huge last key would, with a whole-sequence max stabilizer, push every
  # earlier key's features to underflow and change the earlier outputs.
  k2 = k.at[:, -1].multiply(10.0)
  v2 = v.at[:, -1].add(100.0)
  moved = fn(q, k2, v2)
  np.testing.assert_allclose(moved[:, :-1], base[:, :-1], rtol=1e-6,
                             atol=1e-6)
  assert float(jnp.max(jnp.abs(moved[:, -1] - base[:, -1]))) > 1e-2
  # Gradient view: output i (middle of a chunk) depends on no key j > i.
  i = 12
  dk = jax.jit(jax.grad(lambda k: jnp.sum(slim_favor_attention(
      q, k, v, proj, chunk_size=CHUNK)[:, :i + 1])))(k)
  assert np.all(np.asarray(dk)[:, i + 1:] == 0)
  assert np.any(np.asarray(dk)[:, :i + 1] != 0)


def test_bidirectional_delegates_to_favor():
  q, k, v, proj, _ = _inputs()
  got = slim_favor_attention(q, k, v, proj, causal=False, key_mask=KEY_MASK)
  want = attention.favor_attention(q, k, v, proj, key_mask=KEY_MASK)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_batch_dims_and_dtype():
  q, k, v, proj, _ = _inputs()
  reshape = lambda x: x.reshape((1, B) + x.shape[1:]).astype(jnp.bfloat16)
  got = slim_favor_attention(reshape(q), reshape(k), reshape(v), proj,
                             chunk_size=CHUNK)
  assert got.shape == (1, B, L, H, D) and got.dtype == jnp.bfloat16
  want = attention.favor_attention(reshape(q), reshape(k), reshape(v), proj,
                                   causal=True, chunk_size=CHUNK)
  np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32),
                             atol=2e-2)


def test_bad_inputs_raise():
  q, k, v, proj, _ = _inputs()
  with pytest.raises(ValueError, match="chunk_size"):
    slim_favor_attention(q, k, v, proj, chunk_size=0)
  with pytest.raises(ValueError, match="needs a projection"):
    slim_favor_attention(q, k, v, None, kernel="softmax")
  with pytest.raises(ValueError, match="projection must be"):
    slim_favor_attention(q, k, v, proj[:, :3])
  with pytest.raises(ValueError, match="q_len == kv_len"):
    slim_favor_attention(q[:, :5], k, v, proj)
  with pytest.raises(ValueError, match="unknown kernel"):
    slim_favor_attention(q, k, v, proj, kernel="cosine")
  with pytest.raises(ValueError, match="key_mask"):
    slim_favor_attention(q, k, v, proj, key_mask=KEY_MASK.astype(jnp.int32))
