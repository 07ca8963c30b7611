"""Pure train and eval steps, compiled once per run by the trainer.

Both return *sums* (weighted loss, weight, correct predictions) rather than
means, so the host can average exactly over any number of steps or eval
batches. `summarize` turns sums into the reported metrics.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from performer_jax.train.state import TrainState

Batch = dict[str, jax.Array]
RedrawFn = Callable[[dict[str, Any], jax.Array], dict[str, Any]]


def weighted_sums(logits_BLV: jax.Array, targets_BL: jax.Array,
                  weights_BL: jax.Array) -> dict[str, jax.Array]:
  """Sums of weighted cross entropy (nats), weight and correct predictions.

  Args:
    logits_BLV: float [B, L, V]; upcast to float32.
    targets_BL: int32 [B, L].
    weights_BL: float32 [B, L], 0 on positions that do not count.
  Returns:
    dict of float32 scalars: loss_sum, weight_sum, correct_sum.
  """
  logits_BLV = logits_BLV.astype(jnp.float32)
  xent_BL = optax.softmax_cross_entropy_with_integer_labels(
      logits_BLV, targets_BL)
  weights_BL = weights_BL.astype(jnp.float32)
  correct_BL = (jnp.argmax(logits_BLV, axis=-1) == targets_BL)
  return {"loss_sum": jnp.sum(xent_BL * weights_BL),
          "weight_sum": jnp.sum(weights_BL),
          "correct_sum": jnp.sum(correct_BL * weights_BL)}


def split_microbatches(batch: Batch, microbatches: int) -> Batch:
  """`[B, ...]` -> `[microbatches, B / microbatches, ...]`, interleaved.

  Microbatch i takes rows i, i + M, i + 2M, ...: a batch sharded in
  contiguous blocks over the `data` axis then keeps every microbatch spread
  evenly over the same devices (each block splits locally, no communication),
  as long as each device's rows divide by M.
  """
  def split(x):
    b = x.shape[0]
    if b % microbatches:
      raise ValueError(f"batch of {b} rows does not split into "
                       f"{microbatches} microbatches; make "
                       "config.data.batch_size a multiple of "
                       "config.trainer.microbatches.")
    return jnp.swapaxes(
        x.reshape((b // microbatches, microbatches) + x.shape[1:]), 0, 1)
  return jax.tree.map(split, batch)


def make_train_step(model: nn.Module, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, *, redraw_every: int = 0,
                    redraw_fn: RedrawFn | None = None, microbatches: int = 1
                    ) -> Callable[[TrainState, Batch],
                                  tuple[TrainState, dict[str, jax.Array]]]:
  """Returns train_step(state, batch) -> (new state, metric sums).

  With `microbatches > 1` the batch is processed in that many sequential
  slices (a `lax.scan`) whose gradients are accumulated: the same update as
  one pass (the loss is normalized by the whole batch's weight before
  differentiating), with activation memory and working set divided by
  `microbatches`. Microbatch i draws dropout from `fold_in(dropout_rng, i)`,
  so only dropout masks differ from the single-pass step.

  With `redraw_every > 0` the random features are redrawn (by
  `redraw_fn(variables, rng)`) before every step t > 0 with
  t % redraw_every == 0, from `fold_in(fold_in(rng, t), 1)`: a pure function
  of the state, so resumed runs redraw exactly as uninterrupted ones. The
  branch is a `lax.cond`, so the step compiles once.
  """
  def train_step(state: TrainState, batch: Batch):
    step_rng = jax.random.fold_in(state.rng, state.step)
    dropout_rng = jax.random.fold_in(step_rng, 0)
    features = state.random_features
    if redraw_every > 0 and redraw_fn is not None and features:
      redraw_rng = jax.random.fold_in(step_rng, 1)
      due = (state.step > 0) & (state.step % redraw_every == 0)
      features = jax.lax.cond(
          due,
          lambda f: redraw_fn({"random_features": f}, redraw_rng)[
              "random_features"],
          lambda f: f,
          features)

    # Normalized by the whole batch's weight, so microbatch gradients add up
    # to the full-batch gradient exactly.
    total_weight = jnp.maximum(
        jnp.sum(batch["weights"].astype(jnp.float32)), 1.0)

    def loss_fn(params, part, rng):
      variables = {"params": params}
      if features:
        variables["random_features"] = features
      logits_BLV = model.apply(
          variables, part["inputs"], key_mask_BL=part["key_mask"],
          deterministic=False, rngs={"dropout": rng})
      sums = weighted_sums(logits_BLV, part["targets"], part["weights"])
      return sums["loss_sum"] / total_weight, sums

    grad_fn = jax.grad(loss_fn, has_aux=True)
    if microbatches == 1:
      grads, sums = grad_fn(state.params, batch, dropout_rng)
    else:
      def accumulate(carry, xs):
        i, part = xs
        grads_i, sums_i = grad_fn(state.params, part,
                                  jax.random.fold_in(dropout_rng, i))
        return jax.tree.map(jnp.add, carry, (grads_i, sums_i)), None
      parts = split_microbatches(batch, microbatches)
      # The accumulators take the shapes of one microbatch's (grads, sums).
      zeros = jax.tree.map(
          lambda s: jnp.zeros(s.shape, s.dtype),
          jax.eval_shape(grad_fn, state.params,
                         jax.tree.map(lambda x: x[0], parts), dropout_rng))
      (grads, sums), _ = jax.lax.scan(
          accumulate, zeros, (jnp.arange(microbatches), parts))
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(sums, grad_norm=optax.tree.norm(grads),
                   param_norm=optax.tree.norm(params),
                   learning_rate=jnp.asarray(schedule(state.step),
                                             jnp.float32))
    new_state = state.replace(step=state.step + 1, params=params,
                              opt_state=opt_state, random_features=features)
    return new_state, metrics

  return train_step


def make_eval_step(model: nn.Module
                   ) -> Callable[[TrainState, Batch], dict[str, jax.Array]]:
  """Returns eval_step(state, batch) -> metric sums (no dropout)."""
  def eval_step(state: TrainState, batch: Batch):
    variables = {"params": state.params}
    if state.random_features:
      variables["random_features"] = state.random_features
    logits_BLV = model.apply(variables, batch["inputs"],
                             key_mask_BL=batch["key_mask"], deterministic=True)
    return weighted_sums(logits_BLV, batch["targets"], batch["weights"])
  return eval_step


def summarize(sums: dict[str, float], loss_unit: str) -> dict[str, float]:
  """Turns summed metrics into loss, accuracy, perplexity and bits.

  Args:
    sums: host floats with loss_sum, weight_sum, correct_sum.
    loss_unit: "token", "byte" or "dim"; names the bits metric
      (bits_per_token, bits_per_byte, bits_per_dim).
  """
  weight = max(float(sums["weight_sum"]), 1e-12)
  loss = float(sums["loss_sum"]) / weight
  return {"loss": loss,
          "accuracy": float(sums["correct_sum"]) / weight,
          "perplexity": math.exp(min(loss, 700.0)),
          f"bits_per_{loss_unit}": loss / math.log(2.0)}
