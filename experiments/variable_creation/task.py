"""Sparse Boolean functions of T bits and a one-layer attention classifier.

Edelman, Goel, Kakade and Zhang (2021), "Inductive Biases and Variable
Creation in Self-Attention Mechanisms": bounded-norm attention represents
s-sparse functions of T inputs with sample complexity growing like log T.
The data: x uniform in {0, 1}^T, a fixed hidden subset S of s positions and
y = f(x_S), f one of `FUNCTIONS`: parity (the paper's experiments: no bit
and no proper subset of S correlates with y), strict majority or AND (each
hidden bit alone correlates with y, an easier signal for gradient descent).
The model: bit and position embeddings, a [CLS] token at position 0, one
`performer_jax.linen.MultiHeadAttention` layer (softmax, FAVOR+ or L2; one
head by default, as in the theorem) with a residual connection and
LayerNorm, and an MLP reading the [CLS] output.
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


def _parity(bits_NS):
  return jnp.sum(bits_NS, -1) % 2


def _majority(bits_NS):
  return (2 * jnp.sum(bits_NS, -1) > bits_NS.shape[-1]).astype(jnp.int32)


def _and(bits_NS):
  return jnp.min(bits_NS, -1)


FUNCTIONS = {"parity": _parity, "majority": _majority, "and": _and}


def label(bits_NT: jax.Array, subset: np.ndarray,
          function: str = "parity") -> jax.Array:
  """f(bits at `subset`), f = FUNCTIONS[function]: int32 `[N]`."""
  if function not in FUNCTIONS:
    raise ValueError(f"unknown function {function!r}; choose from "
                     f"{sorted(FUNCTIONS)}.")
  return FUNCTIONS[function](bits_NT[:, subset]).astype(jnp.int32)


def sample(rng: jax.Array, n: int, length: int, subset: np.ndarray,
           function: str = "parity"):
  bits = jax.random.bernoulli(rng, 0.5, (n, length)).astype(jnp.int32)
  return bits, label(bits, subset, function)


class Classifier(nn.Module):
  """[CLS] + bits -> one attention layer -> MLP -> 2 logits."""
  length: int
  width: int = 32
  heads: int = 1
  attention: str = "softmax"
  num_features: int = 64
  # Only the [CLS] output is read, and in one layer its attention row needs
  # only its own query: attending from [CLS] alone is the same function at
  # 1/(T+1) of softmax's and L2's cost (tests check the equality).
  cls_query_only: bool = True

  @nn.compact
  def __call__(self, bits_NT):
    tokens = jnp.concatenate([jnp.full_like(bits_NT[:, :1], 2), bits_NT], 1)
    h = nn.Embed(3, self.width, name="bit")(tokens)
    h = h + self.param("position", nn.initializers.normal(1.0),
                       (self.length + 1, self.width))
    config = AttentionConfig(kind=self.attention,
                             num_features=self.num_features)
    x = nn.LayerNorm()(h)
    attend = MultiHeadAttention(num_heads=self.heads, config=config,
                                name="attention")
    if self.cls_query_only:
      h = h[:, :1] + attend(x[:, :1], x)
    else:
      h = h + attend(x)
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
    # Training loss over the n training samples (the restart selector).
    per = optax.softmax_cross_entropy_with_integer_labels(
        model.apply({"params": params, **rest}, x_NT), y_N)
    keep = jnp.arange(x_NT.shape[0]) < n
    return {"params": params, **rest}, jnp.sum(per * keep) / n

  return jax.jit(jax.vmap(train, in_axes=(0, None, None, None, 0)))


def train_and_test(model: Classifier, subset, n_train: int, seed: int, *,
                   function: str = "parity", steps: int = 300,
                   batch: int = 64, lr: float = 3e-3, restarts: int = 1,
                   n_test: int = 2048, capacity: int = 4096):
  """(test accuracy, variables) after `steps` Adam steps on n_train samples
  (minibatches drawn with replacement from them).

  With `restarts` > 1, that many initializations train side by side (vmap)
  and the one with the lowest training loss is kept: a closer approach to
  the empirical risk minimizer the theory speaks of, chosen from the
  training data only.

  The training set is the first n_train of `capacity` samples drawn from
  `seed`, so one compilation serves every n_train <= capacity and larger
  sets extend smaller ones.
  """
  if not 1 <= n_train <= capacity:
    raise ValueError(f"n_train must be in [1, {capacity}], got {n_train}.")
  k_data, k_init, k_train, k_test = jax.random.split(
      jax.random.PRNGKey(seed), 4)
  x, y = sample(k_data, capacity, model.length, subset, function)
  inits = [model.init({"params": k, "random_features": k}, x[:1])
           for k in jax.random.split(k_init, restarts)]
  stacked = jax.tree.map(lambda *v: jnp.stack(v), *inits)
  fields = tuple((f, getattr(model, f)) for f in (
      "length", "width", "heads", "attention", "num_features"))
  trained, losses = _train_fn(fields, steps, batch, lr)(
      stacked, x, y, jnp.int32(n_train), jax.random.split(k_train, restarts))
  best = int(jnp.argmin(losses))
  variables = jax.tree.map(lambda v: v[best], trained)
  x_test, y_test = sample(k_test, n_test, model.length, subset,
                          function)
  pred = jnp.argmax(model.apply(variables, x_test), -1)
  return float(jnp.mean(pred == y_test)), variables


def attention_norms(variables) -> dict[str, float]:
  """Norms of the layer's attention weights (per head, largest over heads).

  qk_fro = |W_Q^h W_K^h^T|_F, qk_21 = its (2,1) norm (sum of the column
  norms), v_fro = |W_V^h|_F, vo_fro = |W_V^h W_O^h|_F. L2 attention ties
  W_K = W_Q. These are Frobenius and (2,1) norms of this model's matrices,
  not the theorem's exact capacity measure.
  """
  p = nn.meta.unbox(variables["params"])["attention"]
  w_q = p["query"]["kernel"]  # [E, H, Dh]
  w_k = p["key"]["kernel"] if "key" in p else w_q
  w_v, w_o = p["value"]["kernel"], p["out"]["kernel"]  # [E,H,Dh], [H,Dh,E]
  qk = jnp.einsum("ehd,fhd->hef", w_q, w_k)
  vo = jnp.einsum("ehd,hdf->hef", w_v, w_o)
  fro = lambda m: float(jnp.max(jnp.sqrt(jnp.sum(m ** 2, (1, 2)))))
  return {"qk_fro": fro(qk),
          "qk_21": float(jnp.max(jnp.sum(jnp.sqrt(jnp.sum(qk ** 2, 1)), -1))),
          "v_fro": fro(jnp.moveaxis(w_v, 1, 0)), "vo_fro": fro(vo)}
