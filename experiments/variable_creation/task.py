"""Sparse Boolean functions of T bits and a one-layer attention classifier.

Edelman, Goel, Kakade and Zhang (2021), "Inductive Biases and Variable
Creation in Self-Attention Mechanisms": bounded-norm attention represents
s-sparse functions of T inputs with sample complexity growing like log T.
The data: x uniform in {0, 1}^T, a fixed hidden subset S of s positions and
y = f(x_S) with f the strict majority 1[sum x_S > s / 2] (AND for s = 2,
majority for s = 3). The model: bit and position embeddings, a [CLS] token
at position 0, one `performer_jax.linen.MultiHeadAttention` layer (softmax,
FAVOR+ or L2) with a residual connection and LayerNorm, and an MLP reading
the [CLS] output.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from performer_jax.linen import AttentionConfig
from performer_jax.linen import MultiHeadAttention


def hidden_subset(length: int, s: int, seed: int) -> np.ndarray:
  if not 1 <= s <= length:
    raise ValueError(f"need 1 <= s <= T, got s={s}, T={length}.")
  return np.sort(np.random.default_rng(seed).choice(length, s,
                                                    replace=False))


def label(bits_NT: jax.Array, subset: np.ndarray) -> jax.Array:
  """Strict majority of the bits at `subset`: int32 `[N]`."""
  return (2 * jnp.sum(bits_NT[:, subset], -1) > len(subset)).astype(jnp.int32)


def sample(rng: jax.Array, n: int, length: int, subset: np.ndarray):
  bits = jax.random.bernoulli(rng, 0.5, (n, length)).astype(jnp.int32)
  return bits, label(bits, subset)


class Classifier(nn.Module):
  """[CLS] + bits -> one attention layer -> MLP -> 2 logits."""
  length: int
  width: int = 32
  heads: int = 2
  attention: str = "softmax"
  num_features: int = 64

  @nn.compact
  def __call__(self, bits_NT):
    tokens = jnp.concatenate([jnp.full_like(bits_NT[:, :1], 2), bits_NT], 1)
    h = nn.Embed(3, self.width, name="bit")(tokens)
    h = h + self.param("position", nn.initializers.normal(1.0),
                       (self.length + 1, self.width))
    config = AttentionConfig(kind=self.attention,
                             num_features=self.num_features)
    h = h + MultiHeadAttention(num_heads=self.heads, config=config,
                               name="attention")(nn.LayerNorm()(h))
    cls = nn.LayerNorm()(h[:, 0])
    return nn.Dense(2)(nn.relu(nn.Dense(self.width)(cls)))


@functools.lru_cache(maxsize=None)
def _train_fn(fields: tuple, steps: int, batch: int, lr: float):
  model = Classifier(**dict(fields))
  opt = optax.adamw(lr, weight_decay=1e-4)

  def loss(params, rest, x, y):
    logits = model.apply({"params": params, **rest}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  def train(variables, x_NT, y_N, n, rng):
    params = nn.meta.unbox(variables["params"])
    rest = {k: v for k, v in variables.items() if k != "params"}

    def step(carry, key):
      params, state = carry
      idx = jax.random.randint(key, (batch,), 0, n)
      g = jax.grad(loss)(params, rest, x_NT[idx], y_N[idx])
      updates, state = opt.update(g, state, params)
      return (optax.apply_updates(params, updates), state), None

    (params, _), _ = jax.lax.scan(step, (params, opt.init(params)),
                                  jax.random.split(rng, steps))
    return {"params": params, **rest}

  return jax.jit(train)


def train_and_test(model: Classifier, subset, n_train: int, seed: int, *,
                   steps: int = 300, batch: int = 64, lr: float = 3e-3,
                   n_test: int = 2048, capacity: int = 4096):
  """(test accuracy, variables) after `steps` Adam steps on n_train samples
  (minibatches drawn with replacement from them).

  The training set is the first n_train of `capacity` samples drawn from
  `seed`, so one compilation serves every n_train <= capacity and larger
  sets extend smaller ones.
  """
  if not 1 <= n_train <= capacity:
    raise ValueError(f"n_train must be in [1, {capacity}], got {n_train}.")
  k_data, k_init, k_train, k_test = jax.random.split(
      jax.random.PRNGKey(seed), 4)
  x, y = sample(k_data, capacity, model.length, subset)
  variables = model.init({"params": k_init, "random_features": k_init},
                         x[:1])
  fields = tuple((f, getattr(model, f)) for f in (
      "length", "width", "heads", "attention", "num_features"))
  variables = _train_fn(fields, steps, batch, lr)(variables, x, y,
                                                   jnp.int32(n_train), k_train)
  x_test, y_test = sample(k_test, n_test, model.length, subset)
  pred = jnp.argmax(model.apply(variables, x_test), -1)
  return float(jnp.mean(pred == y_test)), variables


def attention_norms(variables) -> tuple[float, float]:
  """(sum over heads of |W_Q^h W_K^h^T|_F, of |W_V^h W_O^h|_F); L2
  attention ties W_K = W_Q."""
  p = nn.meta.unbox(variables["params"])["attention"]
  w_q = p["query"]["kernel"]  # [E, H, Dh]
  w_k = p["key"]["kernel"] if "key" in p else w_q
  w_v, w_o = p["value"]["kernel"], p["out"]["kernel"]  # [E,H,Dh], [H,Dh,E]
  qk = jnp.einsum("ehd,fhd->hef", w_q, w_k)
  vo = jnp.einsum("ehd,hdf->hef", w_v, w_o)
  frob = lambda m: float(jnp.sum(jnp.sqrt(jnp.sum(m ** 2, (1, 2)))))
  return frob(qk), frob(vo)
