"""User feature functions: the `(x, projection) -> features` signature is
checked before anything is traced, with a message that shows the fix."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from performer_jax.attention import favor_attention
from performer_jax.attention import feature_maps


def test_a_one_argument_kernel_fails_with_the_signature_to_use():
  x = jnp.ones((1, 8, 2, 4))
  with pytest.raises(TypeError, match=r"\(x, projection\) -> features"):
    favor_attention(x, x, x, None, kernel=lambda x: jax.nn.relu(x))
  with pytest.raises(TypeError, match="signature"):
    feature_maps.check_feature_fn(lambda x, p, q: x)
  feature_maps.check_feature_fn(lambda x, p, q=0: x)  # defaults are fine
  feature_maps.check_feature_fn(lambda *args: args[0])


def test_a_two_argument_kernel_is_the_generalized_attention_it_names():
  """elu(x)+1 features through the user path equal the brute-force
  normalized attention with those features (float64 reference)."""
  rng = np.random.default_rng(0)
  q, k, v = (rng.normal(size=(1, 6, 1, 4)).astype(np.float32)
             for _ in range(3))
  out = favor_attention(q, k, v, None,
                        kernel=lambda x, projection: jax.nn.elu(x) + 1)
  scale = 4 ** -0.25
  phi = lambda x: np.where(x > 0, x, np.expm1(x)) + 1
  fq, fk = phi(q[0, :, 0].astype(np.float64) * scale), phi(
      k[0, :, 0].astype(np.float64) * scale)
  weights = fq @ fk.T
  want = weights @ v[0, :, 0] / weights.sum(1, keepdims=True)
  np.testing.assert_allclose(np.asarray(out)[0, :, 0], want, rtol=1e-5,
                             atol=1e-6)
