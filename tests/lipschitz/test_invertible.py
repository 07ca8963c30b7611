"""Tests for lipschitz.contractive, lipschitz.invertible and lipschitz.model."""

import functools

import flax.core.meta
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from performer_jax import linen as pnn
from performer_jax.lipschitz import bounds
from performer_jax.lipschitz import contractive
from performer_jax.lipschitz import invertible
from performer_jax.lipschitz import jacobian
from performer_jax.lipschitz import maps
from performer_jax.lipschitz import model as model_lib


@pytest.mark.parametrize("norm,causal", [("inf", True), ("2", False)])
def test_contractive_attention_is_contractive(norm, causal):
  c = 0.8
  module = contractive.ContractiveL2Attention(num_heads=2, c=c, norm=norm,
                                              causal=causal)
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 4, 4))
  variables = flax.core.meta.unbox(
      jax.jit(module.init)(jax.random.PRNGKey(1), x))
  # Large weights: the divisor must follow them.
  variables = jax.tree_util.tree_map(lambda w: 5.0 * w, variables)
  params = variables["params"]["attention"]
  y = jax.jit(module.apply)(variables, x)[0]
  want = maps.l2_mha(params, x[0], causal=causal) * c / (
      bounds.l2_mha_bound_from_variables(params, num_tokens=4, norm=norm,
                                         causal=causal, exact_spectral=False))
  # Module and reference compute the same map in another float32 order.
  np.testing.assert_allclose(y, want, atol=1e-5)
  f = lambda x_ND: module.apply(variables, x_ND[None])[0]
  scales = jnp.array([0.03, 0.1, 0.3, 1.0, 3.0, 10.0])[:, None, None]
  xs = jax.random.normal(jax.random.PRNGKey(2), (6, 4, 4)) * scales
  measured = jax.jit(jax.vmap(lambda x: jacobian.jacobian_norm(f, x, norm)))(
      xs)
  assert 0.0 < float(jnp.max(measured)) <= c


def test_contractive_attention_gradient_sees_the_bound():
  module = contractive.ContractiveL2Attention(num_heads=1, c=0.5)
  sg_module = contractive.ContractiveL2Attention(num_heads=1, c=0.5,
                                                 stop_gradient_bound=True)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 3))
  variables = module.init(jax.random.PRNGKey(1), x)
  loss = lambda m, v: jnp.sum(m.apply(v, x) ** 2)
  # Same forward map, different gradients.
  value, g = jax.jit(jax.value_and_grad(functools.partial(loss, module)))(
      variables)
  value_sg, g_sg = jax.jit(jax.value_and_grad(
      functools.partial(loss, sg_module)))(variables)
  np.testing.assert_allclose(value, value_sg, rtol=1e-5)
  diff = jax.tree_util.tree_map(lambda a, b: float(jnp.abs(a - b).max()),
                                flax.core.meta.unbox(g),
                                flax.core.meta.unbox(g_sg))
  assert max(jax.tree_util.tree_leaves(diff)) > 1e-6


@pytest.mark.parametrize("norm", ["inf", "2"])
def test_contractive_mlp_lipschitz(norm):
  module = contractive.ContractiveMlp(hidden_dim=6, c=0.7, norm=norm)
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 3, 4))
  variables = module.init(jax.random.PRNGKey(1), x)
  kernels = flax.core.meta.unbox(variables)["params"]
  # The normalizers bound the operator norms (exactly for "inf", within
  # rank^(1/128) for "2"), so the map is c times 1-Lipschitz pieces.
  for name in ("wi", "wo"):
    w = np.asarray(kernels[name]["kernel"])
    got = float(contractive.dense_operator_norm(jnp.asarray(w), norm))
    if norm == "inf":
      np.testing.assert_allclose(got, np.abs(w).sum(0).max(), rtol=1e-5)
    else:
      exact = np.linalg.svd(w, compute_uv=False)[0]
      assert exact * (1 - 1e-5) <= got <= exact * 4 ** (1 / 128) * (1 + 1e-5)
  f = lambda x_ND: module.apply(variables, x_ND[None])[0]
  xs = jax.random.normal(jax.random.PRNGKey(2), (8, 3, 4)) * 3
  measured = jax.jit(jax.vmap(lambda x: jacobian.jacobian_norm(f, x, norm)))(
      xs)
  assert 0.0 < float(jnp.max(measured)) <= 0.7


def test_contractive_rejects_bad_c():
  x = jnp.ones((1, 3, 2))
  with pytest.raises(ValueError, match="c must be in"):
    contractive.ContractiveL2Attention(num_heads=1, c=1.0).init(
        jax.random.PRNGKey(0), x)
  with pytest.raises(ValueError, match="norm"):
    contractive.ContractiveMlp(hidden_dim=2, norm="1").init(
        jax.random.PRNGKey(0), x)


def test_fixed_point_inverse_linear_contraction():
  # g(x) = -c x has inverse y / (1 - c); the error shrinks exactly by c.
  c = 0.5
  y = jnp.linspace(-2.0, 3.0, 7)
  # atol 1e-5 is above the float32 floor (16 eps * 3 = 5.7e-6): used as is.
  x, info = invertible.fixed_point_inverse(lambda x: -c * x, y,
                                           max_iters=200, atol=1e-5, rtol=0)
  np.testing.assert_allclose(float(info.tolerance), 1e-5, rtol=1e-6)
  # ||x_k - x*|| <= c / (1 - c) * step_k = step_k <= 1e-5.
  np.testing.assert_allclose(x, y / (1 - c), atol=2e-5)
  assert bool(info.converged) and float(info.residual) < 1e-5
  # Step k is 1.5 * 0.5^(k-1) (from max|y| * c = 1.5): <= 1e-5 at k = 19.
  assert 18 <= int(info.num_iters) <= 20
  x, info = invertible.fixed_point_inverse(lambda x: -c * x, y, max_iters=2)
  assert not bool(info.converged) and int(info.num_iters) == 2
  assert float(info.residual) > 1e-2
  with pytest.raises(ValueError, match="max_iters"):
    invertible.fixed_point_inverse(lambda x: x, y, max_iters=0)


def _lm_config(num_layers=1):
  cfg = pnn.ModelConfig.defaults()
  cfg.attention.kind = "l2"
  cfg.num_layers = num_layers
  cfg.num_heads = 2
  cfg.emb_dim = 16
  cfg.mlp_dim = 32
  cfg.max_len = 16
  cfg.dropout_rate = 0.0
  return cfg


def test_invertible_model_signature_and_inverse():
  causal = True
  model = model_lib.make_invertible_model(_lm_config(), vocab_size=11,
                                          causal=causal, c=0.9)
  inputs = jax.random.randint(jax.random.PRNGKey(0), (2, 12), 0, 11)
  key_mask = jnp.arange(12)[None, :] < jnp.array([[12], [9]])
  variables = jax.jit(model.init)({"params": jax.random.PRNGKey(1)}, inputs)
  apply = jax.jit(functools.partial(model.apply, variables))
  logits = apply(inputs, key_mask_BL=key_mask)
  assert logits.shape == (2, 12, 11) and logits.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(logits)))
  # A later token cannot change earlier logits.
  changed = inputs.at[:, 8].set((inputs[:, 8] + 1) % 11)
  np.testing.assert_allclose(apply(changed)[:, :8], apply(inputs)[:, :8],
                             atol=1e-5)
  # The bidirectional model lets it.
  bidir = model_lib.make_invertible_model(_lm_config(), vocab_size=11,
                                          causal=False, c=0.9)
  bidir_apply = jax.jit(functools.partial(bidir.apply, variables))
  assert float(jnp.abs(bidir_apply(changed)[:, :8]
                       - bidir_apply(inputs)[:, :8]).max()) > 1e-6

  @jax.jit
  def round_trip(inputs, key_mask):
    x = model.apply(variables, inputs,
                    method=model_lib.InvertibleL2Transformer.embed)
    h = model.apply(variables, x, key_mask_BL=key_mask,
                    method=model_lib.InvertibleL2Transformer.hidden)
    x_rec, infos = model_lib.invert_hidden(model, variables, h,
                                           key_mask_BL=key_mask)
    _, infos_1 = model_lib.invert_hidden(model, variables, h, max_iters=1)
    return x, h, x_rec, infos, infos_1

  x, h, x_rec, infos, infos_1 = round_trip(inputs, key_mask)
  assert float(jnp.abs(h - x).max()) > 1e-3  # the blocks do something
  assert all(bool(i.converged) for i in infos) and len(infos) == 2
  # What the stopping rule guarantees, block by block from the last: the
  # iteration error c / (1 - c) * tol_i, plus the error already in the
  # block's target, amplified by the inverse's Lipschitz constant 1 / (1 - c)
  # (c = 0.9 in the inf-norm, which covers masks). Margin 2 for rounding.
  c, bound = 0.9, 0.0
  for info in reversed(infos):
    bound = bound / (1 - c) + c / (1 - c) * float(info.tolerance)
  assert float(jnp.abs(x_rec - x).max()) <= 2 * bound < 1e-2
  assert not all(bool(i.converged) for i in infos_1)


def _inverse_case():
  c = 0.95
  block = invertible.InvertibleResidual(
      contractive.ContractiveMlp(hidden_dim=8, c=c))  # Lip_inf <= c
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 4)) * 2
  variables = block.init(jax.random.PRNGKey(1), x)
  return c, block, variables, x, block.apply(variables, x)


def test_invertible_residual_module_inverse():
  c, block, variables, x, y = _inverse_case()
  x_rec, info = block.apply(variables, y, atol=1e-5, rtol=0.0,
                            method=invertible.InvertibleResidual.inverse)
  assert bool(info.converged)
  np.testing.assert_allclose(float(info.tolerance), 1e-5, rtol=1e-6)
  # Banach: ||x_k - x*||_inf <= c / (1 - c) * ||x_k - x_{k-1}||_inf.
  assert float(jnp.abs(x_rec - x).max()) <= c / (1 - c) * 1e-5
  assert float(info.residual) <= 1e-5


@pytest.mark.parametrize("atol", [0.0, 1e-7, 1e-12])
def test_tolerance_below_the_dtype_resolution_is_floored(atol):
  # |y| ~ 4 in float32: steps of one ulp (4.8e-7) can persist forever, so a
  # request below the floor is raised to it and still converges.
  c, block, variables, x, y = _inverse_case()
  floor = float(invertible.resolution_floor(y))
  expected = (invertible.RESOLUTION_ULPS * np.finfo(np.float32).eps
              * float(jnp.abs(y).max()))
  np.testing.assert_allclose(floor, expected, rtol=1e-6)
  assert 1e-7 < floor < 1e-4
  x_rec, info = block.apply(variables, y, atol=atol, rtol=0.0,
                            method=invertible.InvertibleResidual.inverse)
  assert bool(info.converged) and int(info.num_iters) < 100
  np.testing.assert_allclose(float(info.tolerance), floor, rtol=1e-6)
  assert float(jnp.abs(x_rec - x).max()) <= c / (1 - c) * floor


def test_tolerance_floor_scales_with_dtype_and_magnitude():
  y32 = jnp.full((3,), 8.0, jnp.float32)
  y16 = y32.astype(jnp.bfloat16)
  assert float(invertible.resolution_floor(y16)) > 1e3 * float(
      invertible.resolution_floor(y32))
  np.testing.assert_allclose(float(invertible.resolution_floor(2 * y32)),
                             2 * float(invertible.resolution_floor(y32)),
                             rtol=1e-6)
  # All-zero y: the floor is the smallest normal number's multiple, not 0.
  assert float(invertible.resolution_floor(jnp.zeros(3))) > 0.0
  # A requested tolerance above the floor is used unchanged.
  _, info = invertible.fixed_point_inverse(lambda x: -0.5 * x, y32,
                                           atol=1e-3, rtol=1e-3)
  np.testing.assert_allclose(float(info.tolerance), 1e-3 + 8e-3, rtol=1e-6)


def test_make_invertible_model_errors():
  cfg = _lm_config()
  cfg.attention.kind = "softmax"
  with pytest.raises(ValueError,
                     match="needs config.model.attention.kind='l2'"):
    model_lib.make_invertible_model(cfg, vocab_size=5, causal=True)
  with pytest.raises(ValueError, match="c must be"):
    model_lib.make_invertible_model(_lm_config(), vocab_size=5, causal=True,
                                    c=1.5)
  cfg = _lm_config()
  cfg.unknown = 1
  with pytest.raises(ValueError, match="unknown"):
    model_lib.make_invertible_model(cfg, vocab_size=5, causal=True)
