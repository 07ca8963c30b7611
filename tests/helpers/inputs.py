"""What the tests share: the repository root, random attention inputs, the
environment of a subprocess and tiny training configs."""

import os
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from performer_jax import linen as pnn
from performer_jax.attention import gaussian_orthogonal_random_matrix

REPO = str(pathlib.Path(__file__).resolve().parents[2])


def qkv(b=2, length=23, h=2, d=8, m=32, scale=1.0, seed=0, keep=0.75):
  """Random q, k `[b, length, h, d]` (times `scale`), v, a key mask that
  keeps about `keep` of the keys (always the first) and an `[m, d]`
  projection."""
  r = jax.random.split(jax.random.PRNGKey(seed), 5)
  q = scale * jax.random.normal(r[0], (b, length, h, d))
  k = scale * jax.random.normal(r[1], (b, length, h, d))
  v = jax.random.normal(r[2], (b, length, h, d))
  mask = jax.random.bernoulli(r[3], keep, (b, length)).at[:, 0].set(True)
  proj = gaussian_orthogonal_random_matrix(r[4], m, d)
  return q, k, v, mask, proj


def subprocess_env(**extra: str) -> dict[str, str]:
  """This process's environment (so the test XLA flags carry over), on the
  CPU, with the repository importable; `extra` variables are appended to
  XLA_FLAGS or set."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  for name, value in extra.items():
    if name == "XLA_FLAGS":
      value = (env.get("XLA_FLAGS", "") + " " + value).strip()
    env[name] = value
  return env


def require_kernel() -> None:
  """Skips a test of the compiled causal FAVOR+ CPU kernel where it cannot
  run: on another backend (it is an XLA:CPU custom call), or where it is not
  built. The test command sets PERFORMER_JAX_REQUIRE_KERNEL=1 on the CPU,
  which turns the second skip into a failure."""
  backend = jax.default_backend()
  if backend != "cpu":
    pytest.skip(f"the compiled causal FAVOR+ kernel runs on the XLA:CPU "
                f"backend only; this run's backend is {backend}")
  # pylint: disable-next=g-import-not-at-top
  from performer_jax.attention import cpu_kernel
  if cpu_kernel.built():
    return
  message = ("causal FAVOR+ CPU kernel not built: run `python -m "
             "performer_jax.kernels.build`")
  if os.environ.get("PERFORMER_JAX_REQUIRE_KERNEL") == "1":
    pytest.fail(message)
  pytest.skip(message)


# The tiny models of the model tests: vocabulary, batch and length.
MODEL_VOCAB, MODEL_BATCH, MODEL_LEN = 13, 2, 16
# The attention variants the model tests run: model.attention overrides.
MODEL_KINDS = {
    "softmax": dict(kind="softmax"),
    "favor_softmax": dict(kind="favor", kernel="softmax", num_features=16),
    "favor_relu": dict(kind="favor", kernel="relu", num_features=16),
    "favor_relu_deterministic": dict(kind="favor", kernel="relu",
                                     num_features=0),
    "l2": dict(kind="l2"),
}


def tiny_model_config(kind="softmax", max_len=MODEL_LEN, **overrides):
  """A 2-layer, width-32 model section (a ConfigDict) with attention `kind`
  (a key of MODEL_KINDS) and top-level `overrides`; an override
  `attention_<key>` sets `attention.<key>`."""
  cfg = pnn.ModelConfig.defaults()
  cfg.num_layers, cfg.num_heads, cfg.emb_dim, cfg.mlp_dim = 2, 2, 32, 64
  cfg.max_len = max_len
  for key, value in MODEL_KINDS[kind].items():
    cfg.attention[key] = value
  for key, value in overrides.items():
    if key.startswith("attention_"):
      cfg.attention[key[len("attention_"):]] = value
    else:
      cfg[key] = value
  return cfg


def to_scan_layout(variables, num_layers=2):
  """Stacks the per-layer subtrees layer_0..layer_{n-1} of every collection
  into the single "layers" subtree that `scan_layers=True` uses."""
  converted = {}
  for name, tree in variables.items():
    tree = dict(nn.unbox(tree))
    layers = [tree.pop(f"layer_{i}") for i in range(num_layers)]
    tree["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs), *layers)
    converted[name] = tree
  return converted

