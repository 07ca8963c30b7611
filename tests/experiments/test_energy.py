"""Attention as energy descent (experiments/energy) at tiny sizes."""

import jax
import jax.numpy as jnp
import numpy as np

from experiments.energy import layers
from experiments.energy import run as energy_run
from performer_jax.attention import gaussian_orthogonal_random_matrix

L, D = 12, 4


def _params(seed, scale=0.5):
  k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(seed), 4)
  f = jax.random.normal(k2, (D, D)) / np.sqrt(D)
  return (jax.random.normal(k1, (L, D)),
          {"w": scale * jax.random.normal(k3, (D, D)) / np.sqrt(D),
           "w_f": layers.constrain_ffn(2.0 * f),
           "b": jax.random.normal(k4, (D,)) / np.sqrt(D)})


def test_energy_and_steps_match_float64_brute_force():
  y, p = _params(0)
  y64 = np.asarray(y, np.float64)
  w, w_f, b = (np.asarray(p[k], np.float64) for k in ("w", "w_f", "b"))
  e_att = 0.5 * (y64 ** 2).sum()
  for i in range(L):
    for j in range(i):
      e_att -= np.exp(-0.5 * (((y64[i] - y64[j]) @ w) ** 2).sum())
  e_ffn = 0.5 * np.trace(y64 @ w_f @ y64.T) + 0.5 * ((y64 - b) ** 2).sum()
  np.testing.assert_allclose(layers.attention_energy(y, p["w"]), e_att,
                             rtol=1e-5)
  np.testing.assert_allclose(layers.energy(y, p), e_att + e_ffn, rtol=1e-5)
  logits = y64 @ w @ w.T @ y64.T
  att = np.exp(logits - logits.max(1, keepdims=True))
  att /= att.sum(1, keepdims=True)
  np.testing.assert_allclose(layers.attention_step(y, p["w"], 0.7),
                             0.3 * y64 + 0.7 * att @ y64, atol=1e-5)
  # The FFN step is a gradient step on E_ffn; W_f obeys the constraint.
  g = jax.grad(layers.ffn_energy)(y, p["w_f"], p["b"])
  np.testing.assert_allclose(layers.ffn_step(y, p["w_f"], p["b"], 0.7),
                             y - 0.7 * g, atol=1e-5)
  np.testing.assert_allclose(w_f, w_f.T, atol=1e-6)
  lam = np.linalg.eigvalsh(w_f)
  assert np.abs(lam).max() <= layers.FFN_CLIP + 1e-5 and np.abs(
      lam).max() > 0.9  # 2 f has eigenvalues beyond the clip


def test_tangent_majorizer_bounds_the_attention_energy():
  # rho(z) = -exp(-z) is concave, so Q >= E_att everywhere, = at Y0.
  y0, p = _params(1, scale=1.0)
  z0 = np.asarray(y0 @ p["w"], np.float64)
  dist0 = 0.5 * ((z0[:, None] - z0[None]) ** 2).sum(-1)
  below = np.tril(np.ones((L, L)), -1)

  def q(y):
    z = np.asarray(y @ p["w"], np.float64)
    dist = 0.5 * ((z[:, None] - z[None]) ** 2).sum(-1)
    return (below * (-np.exp(-dist0) + np.exp(-dist0) * (dist - dist0))
            ).sum() + 0.5 * (np.asarray(y, np.float64) ** 2).sum()

  np.testing.assert_allclose(q(y0), layers.attention_energy(y0, p["w"]),
                             rtol=1e-5)
  for seed in range(5):
    y = y0 + jax.random.normal(jax.random.PRNGKey(seed), y0.shape)
    assert layers.attention_energy(y, p["w"]) <= q(y) + 1e-4


def _unrolled(seed, alpha=(1.0, 1.0), scale=0.5, projections=None):
  y, p = _params(seed, scale)
  return {k: np.asarray(v) for k, v in layers.unroll(
      lambda v, proj: layers.exact_layer(v, p, alpha, proj), y, p, 24,
      projections).items()}


def test_exact_steps_never_increase_their_energies():
  for seed in (2, 3, 4):
    out = _unrolled(seed)
    # Attention steps lower E_att, FFN steps lower E_ffn, in all 24 layers.
    assert (out["att_rise"] <= 1e-5 * np.abs(out["E_att"][:-1])).all(), (
        seed, out["att_rise"])
    assert (out["ffn_rise"] <= 1e-5 * np.abs(out["E_ffn"][:-1])).all(), (
        seed, out["ffn_rise"])
    assert (out["att_rise"] < 0).any() and (out["ffn_rise"] < 0).any()


def test_attention_step_alone_and_ffn_step_alone_descend():
  y, p = _params(5)
  e = [layers.attention_energy(y, p["w"])]
  for _ in range(24):
    y = layers.attention_step(y, p["w"])
    e.append(layers.attention_energy(y, p["w"]))
  assert (np.diff(e) <= 1e-5 * np.abs(e[:-1])).all() and e[-1] < e[0]
  y, p = _params(6)
  e = [layers.ffn_energy(y, p["w_f"], p["b"])]
  for _ in range(24):
    y = layers.ffn_step(y, p["w_f"], p["b"])
    e.append(layers.ffn_energy(y, p["w_f"], p["b"]))
  assert (np.diff(e) <= 1e-5 * np.abs(e[:-1])).all() and e[-1] < e[0]


def test_wrong_step_sizes_increase_the_energies():
  out = _unrolled(2, alpha=energy_run.WRONG_STEP)
  assert (out["ffn_rise"] > 1e-3 * np.abs(out["E_ffn"][:-1])).any()
  y, p = _params(2)
  up = []
  for _ in range(4):
    y_next = layers.attention_step(y, p["w"], energy_run.WRONG_STEP[0])
    up.append(float(layers.attention_energy(y_next, p["w"]) -
                    layers.attention_energy(y, p["w"])))
    y = y_next
  assert max(up) > 0, up


def test_favor_step_converges_to_the_exact_step():
  y, p = _params(7)
  exact = layers.attention_step(y, p["w"])
  errs = []
  for m in (16, 4096):
    proj = gaussian_orthogonal_random_matrix(jax.random.PRNGKey(m), m, D)
    errs.append(float(jnp.abs(layers.attention_step(y, p["w"],
                                                    projection=proj) -
                              exact).mean()))
  assert errs[1] < 0.25 * errs[0] and errs[1] < 0.02, errs
