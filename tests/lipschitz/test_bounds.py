"""Tests for performer_jax.lipschitz.bounds and maps (Theorem 3.2 bounds)."""

import functools

import flax.core.meta
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from performer_jax.linen import MultiHeadAttention
from performer_jax.lipschitz import bounds
from performer_jax.lipschitz import jacobian
from performer_jax.lipschitz import maps
from performer_jax.schemas import AttentionConfig


def _numpy_bounds(params, n):
  """The Theorem 3.2 formulas written out head by head in numpy."""
  wq = np.asarray(params["query"]["kernel"], np.float64)
  wv = np.asarray(params["value"]["kernel"], np.float64)
  wo = np.asarray(params["out"]["kernel"], np.float64)
  _, h, k = wq.shape
  wo = wo.reshape(h * k, -1)
  inf = lambda m: np.abs(m).sum(axis=1).max()
  two = lambda m: np.linalg.svd(m, compute_uv=False)[0]
  import scipy.special
  phi_inv = scipy.special.lambertw((max(n, 3) - 1) / np.e).real
  lip_inf = ((4 * phi_inv + 1 / np.sqrt(k)) * inf(wo.T)
             * max(inf(wq[:, i]) * inf(wq[:, i].T) for i in range(h))
             * max(inf(wv[:, i].T) for i in range(h)))
  lip_2 = (np.sqrt(max(n, 3)) / np.sqrt(k) * (4 * phi_inv + 1)
           * np.sqrt(sum(two(wq[:, i]) ** 2 * two(wv[:, i]) ** 2
                         for i in range(h))) * two(wo))
  return lip_inf, lip_2


def test_unit_weights_match_paper():
  # Kim et al. (2021): D = H = 1, all weights 1 -> 2.85, 5.40, 8.15.
  params = maps.unit_l2_params()
  got = [float(bounds.l2_mha_bound_from_variables(params, num_tokens=n))
         for n in (3, 10, 30)]
  np.testing.assert_allclose(got, [2.85, 5.40, 8.15], atol=0.006)


@pytest.mark.parametrize("dim,heads,head_dim,out_dim", [(4, 2, 2, 4),
                                                        (3, 2, 5, 2)])
def test_matches_numpy_formula(dim, heads, head_dim, out_dim):
  params = maps.random_l2_params(jax.random.PRNGKey(dim), dim, heads,
                                 head_dim=head_dim, out_dim=out_dim)
  for n in (2, 3, 17):
    want_inf, want_2 = _numpy_bounds(params, n)
    got_inf = bounds.l2_mha_bound_from_variables(params, num_tokens=n)
    got_2 = bounds.l2_mha_bound_from_variables(params, num_tokens=n,
                                               norm="2")
    np.testing.assert_allclose([got_inf, got_2], [want_inf, want_2],
                               rtol=2e-5)


def test_causal_two_norm_bound():
  params = maps.random_l2_params(jax.random.PRNGKey(0), 4, 2)
  n = 6
  per_prefix = [_numpy_bounds(params, i)[1] for i in range(1, n + 1)]
  got = bounds.l2_mha_bound_from_variables(params, num_tokens=n, norm="2",
                                           causal=True)
  np.testing.assert_allclose(got, np.sqrt(np.sum(np.square(per_prefix))),
                             rtol=2e-5)


_CASES = [(3, 1, 1), (6, 4, 2)]


@functools.partial(jax.jit, static_argnames=("causal",))
def _jacobian_norms(params, xs_SND, causal):
  """(inf, 2) norms of the L2-MHA Jacobian at each input, [S] each."""
  f = functools.partial(maps.l2_mha, params, causal=causal)
  mats = jax.vmap(lambda x: jacobian.jacobian_matrix(f, x))(xs_SND)
  return (jax.vmap(lambda m: jacobian.operator_norm(m, "inf"))(mats),
          jax.vmap(lambda m: jacobian.operator_norm(m, "2"))(mats))


@pytest.mark.parametrize("n,dim,heads", _CASES)
@pytest.mark.parametrize("causal", [False, True])
def test_bound_dominates_jacobian(n, dim, heads, causal):
  """||J(X)|| <= bound for random weights and random inputs of many scales."""
  for seed in range(3):
    k_w, k_x = jax.random.split(jax.random.PRNGKey(seed))
    params = maps.random_l2_params(k_w, dim, heads, scale=2.0)
    scales = jnp.array([0.1, 1.0, 3.0, 10.0])[:, None, None]
    xs = jax.random.normal(k_x, (4, n, dim)) * scales
    norms = _jacobian_norms(params, xs, causal)
    for norm, measured in zip(("inf", "2"), norms):
      measured = float(jnp.max(measured))
      bound = float(bounds.l2_mha_bound_from_variables(
          params, num_tokens=n, norm=norm, causal=causal))
      assert measured <= bound, (norm, measured, bound)
      # Not vacuous: the measured value is a sizeable fraction of the bound.
      assert measured > 1e-3 * bound


def test_spectral_norm_upper_bound():
  m = jax.random.normal(jax.random.PRNGKey(0), (3, 7, 5))
  exact = np.linalg.svd(np.asarray(m), compute_uv=False)[:, 0]
  for j in (0, 3, 6):
    upper = np.asarray(bounds.spectral_norm_upper_bound(m, num_squarings=j))
    # sigma <= upper <= rank^(1 / 2^(j+1)) sigma.
    assert np.all(upper >= exact * (1 - 1e-5))
    assert np.all(upper <= exact * 5 ** (1 / 2 ** (j + 1)) * (1 + 1e-5))
  rank_one = jnp.outer(jnp.arange(1.0, 4.0), jnp.arange(1.0, 3.0))
  np.testing.assert_allclose(bounds.spectral_norm_upper_bound(rank_one),
                             np.sqrt(14.0 * 5.0), rtol=1e-5)
  assert float(bounds.spectral_norm_upper_bound(jnp.zeros((3, 3)))) < 1e-15
  # Used by the contractive modules: still an upper bound on Theorem 3.2.
  params = maps.random_l2_params(jax.random.PRNGKey(1), 4, 2)
  exact_bound = bounds.l2_mha_bound_from_variables(params, num_tokens=5,
                                                   norm="2")
  cheap_bound = bounds.l2_mha_bound_from_variables(
      params, num_tokens=5, norm="2", exact_spectral=False)
  # float32: the cheap bound may meet the exact one to the last bit.
  assert exact_bound <= cheap_bound * (1 + 1e-6) <= 1.1 * exact_bound


def test_jacobian_convention_for_linear_maps():
  """Jacobian of X -> X W is [N*O, N*D] with inf norm ||W^T||_inf."""
  w = jax.random.normal(jax.random.PRNGKey(0), (3, 5))
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 3))
  jac = jacobian.jacobian_matrix(lambda x: x @ w, x)
  np.testing.assert_allclose(jac, np.kron(np.eye(4), np.asarray(w).T),
                             atol=1e-6)
  np.testing.assert_allclose(jacobian.operator_norm(jac, "inf"),
                             np.abs(np.asarray(w)).sum(0).max(), rtol=1e-6)
  np.testing.assert_allclose(jacobian.operator_norm(jac, "2"),
                             np.linalg.svd(np.asarray(w))[1][0], rtol=1e-5)


def test_reference_matches_module_and_weights_are_tied():
  module = MultiHeadAttention(num_heads=2, config=AttentionConfig(kind="l2"))
  x_BLD = jax.random.normal(jax.random.PRNGKey(0), (2, 7, 6))
  variables = flax.core.meta.unbox(
      jax.jit(module.init)(jax.random.PRNGKey(1), x_BLD))
  params = variables["params"]
  assert set(params) == {"query", "value", "out"}
  assert set(params["query"]) == {"kernel"} and set(params["value"]) == {
      "kernel"}
  # Non-trivial out bias so that it is checked as well.
  params = {**params, "out": {**params["out"], "bias": jnp.arange(6.0)}}
  for causal in (False, True):
    mod = MultiHeadAttention(num_heads=2, config=AttentionConfig(kind="l2"),
                             causal=causal)
    got = jax.jit(mod.apply)({"params": params}, x_BLD)
    want = jax.vmap(lambda x: maps.l2_mha(params, x, causal=causal))(x_BLD)
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=2e-5)

  # Changing W_Q must move the key path too: the module agrees with the tied
  # reference at the new W_Q, and not with an untied map whose keys still
  # use the old W_Q.
  def untied(p, wk_DHK, x_ND):
    k = p["query"]["kernel"].shape[-1]
    q_NHK = jnp.einsum("nd,dhk->nhk", x_ND, p["query"]["kernel"])
    k_NHK = jnp.einsum("nd,dhk->nhk", x_ND, wk_DHK)
    d_HNM = jnp.sum((q_NHK[:, None] - k_NHK[None]) ** 2, -1).transpose(2, 0, 1)
    att_HNM = jax.nn.softmax(-d_HNM / jnp.sqrt(k), -1)
    qv_HKV = jnp.einsum("dhk,dhv->hkv", p["query"]["kernel"],
                        p["value"]["kernel"]) / jnp.sqrt(k)
    heads_NHV = jnp.einsum("hnm,mhk,hkv->nhv", att_HNM, q_NHK, qv_HKV)
    return jnp.einsum("nhv,hvo->no", heads_NHV,
                      p["out"]["kernel"]) + p["out"]["bias"]

  untied = jax.jit(untied)
  apply = jax.jit(module.apply)
  old_wq = params["query"]["kernel"]
  new_params = {**params, "query": {"kernel": old_wq + 0.5 * jax.random.normal(
      jax.random.PRNGKey(5), old_wq.shape)}}
  got = apply({"params": new_params}, x_BLD)[0]
  np.testing.assert_allclose(untied(params, old_wq, x_BLD[0]),
                             apply({"params": params}, x_BLD)[0],
                             atol=2e-5)
  np.testing.assert_allclose(
      got, untied(new_params, new_params["query"]["kernel"], x_BLD[0]),
      atol=2e-5)
  assert float(jnp.abs(got - untied(new_params, old_wq, x_BLD[0])).max()) > 1e-3


def test_find_params_errors():
  softmax = MultiHeadAttention(num_heads=2,
                               config=AttentionConfig(kind="softmax"))
  x = jnp.ones((1, 4, 4))
  variables = softmax.init(jax.random.PRNGKey(0), x)
  with pytest.raises(ValueError, match="'key' kernel"):
    bounds.l2_mha_bound_from_variables(variables, num_tokens=4)
  with pytest.raises(ValueError, match="no attention params"):
    bounds.l2_mha_bound_from_variables({"params": {}}, num_tokens=4)
  params = maps.unit_l2_params()
  with pytest.raises(ValueError, match="found 2"):
    bounds.l2_mha_bound_from_variables({"a": params, "b": params},
                                       num_tokens=4)
  with pytest.raises(ValueError, match="norm"):
    bounds.l2_mha_bound_from_variables(params, num_tokens=4, norm="1")
  with pytest.raises(ValueError, match="num_tokens"):
    bounds.l2_mha_bound_from_variables(params, num_tokens=0)
  # Nested deeper than the module's own variables is fine.
  nested = {"params": {"layer_0": {"attention": params}}}
  np.testing.assert_allclose(
      bounds.l2_mha_bound_from_variables(nested, num_tokens=3), 2.8522,
      rtol=1e-4)
