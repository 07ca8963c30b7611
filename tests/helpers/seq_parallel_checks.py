"""Sequence-parallel models and training on 8 forced CPU devices, run by
test_sequence_parallel.py in ONE subprocess (the device count is fixed when
JAX starts).

`python -m tests.helpers.seq_parallel_checks` prints one JSON line: check name
-> a number (an error relative to the reference's scale, or a loss list) or
a string (an error message).
"""


import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from performer_jax import attention
from performer_jax import linen as pnn
from performer_jax.configs import copy as copy_config
from performer_jax.train import trainer as trainer_lib
from tests.helpers import inputs
from tests.helpers import multidevice

jax.config.update("jax_default_matmul_precision", "highest")

record = multidevice.Recorder()
BATCH, LEN = 4, 32


def rel_error(got, want) -> float:
  # Some gradients are zero in exact arithmetic (softmax is invariant to the
  # key bias): their float32 noise is measured against 1e-3 of the largest.
  return multidevice.rel_error(got, want, floor=1e-3)


def mesh_of(data, seq):
  devices = np.asarray(jax.devices()[:data * seq]).reshape(data, seq, 1)
  return Mesh(devices, ("data", "seq", "model"))


def model_check(kind, causal, data, seq):
  """Loss and parameter gradients of a 2-layer model on padded sequences:
  sequence-sharded over (data, seq) against one device."""
  cfg = inputs.tiny_model_config(kind, max_len=LEN, attention_chunk_size=4,
                                 dropout_rate=0.0)
  model = pnn.make_model(cfg, vocab_size=inputs.MODEL_VOCAB,
                            causal=causal)
  rng = jax.random.PRNGKey(0)
  tokens = jax.random.randint(rng, (BATCH, LEN), 0, inputs.MODEL_VOCAB)
  lengths = jnp.array([LEN, 21, 9, 30])  # padding across device blocks
  key_mask = jnp.arange(LEN)[None] < lengths[:, None]
  variables = model.init({"params": rng, "random_features": rng}, tokens)
  weights = jax.random.uniform(jax.random.PRNGKey(1),
                               (BATCH, LEN, inputs.MODEL_VOCAB))

  def loss(params, tokens, key_mask):
    logits = model.apply({**variables, "params": params}, tokens,
                         key_mask_BL=key_mask)
    return jnp.sum(jnp.where(key_mask[..., None], logits * weights, 0.0))

  # Two function objects: JAX caches a function's trace, and the sharding
  # context is read when it is traced.
  want = jax.jit(jax.value_and_grad(loss))(variables["params"], tokens,
                                           key_mask)
  step = jax.value_and_grad(loss)
  mesh = mesh_of(data, seq)
  sharded = NamedSharding(mesh, P("data", "seq"))
  args = (variables["params"], jax.device_put(tokens, sharded),
          jax.device_put(key_mask, sharded))
  with attention.sequence_sharding(mesh, batch_axes="data",
                                   head_axis="model"):
    # One trace serves both the jaxpr check and the call.
    traced = jax.jit(step, in_shardings=(None, sharded, sharded)).trace(*args)
    jaxpr = str(traced.jaxpr)
    got = traced.lower().compile()(*args)
  assert "shard_map" in jaxpr and "all_gather" in jaxpr, (
      "the attention did not run sequence-parallel")
  return max(rel_error(got[0], want[0]), rel_error(got[1], want[1]))


def train_losses(kind, mlm, data, seq, steps=3):
  config = copy_config.get_config("smoke," + kind + (",mlm" if mlm else ""))
  config.mesh.data, config.mesh.seq = data, seq
  config.model.dropout_rate = 0.0
  config.model.attention.chunk_size = 2  # several chunks per device block
  config.model.attention.redraw_every = 2
  config.trainer.progress = "log"
  trainer = trainer_lib.Trainer(config)
  state = trainer.init_state()
  losses = []
  for step in range(steps):
    batch = trainer.get_batch(trainer.task.train, step)
    assert batch["inputs"].sharding.spec == P("data", "seq")
    with trainer.context():
      if step == 0 and seq > 1:  # the step's own (cached) trace
        jaxpr = str(trainer.train_step.trace(state, batch).jaxpr)
        assert "shard_map" in jaxpr, "the trainer ran no sequence-parallel"
      state, metrics = trainer.train_step(state, batch)
    losses.append(float(metrics["loss_sum"]))
  return losses


def main():
  for kind, causal, data, seq in [
      ("favor_softmax", True, 2, 4), ("favor_softmax", False, 2, 4),
      ("favor_relu", True, 1, 8),
      ("softmax", False, 2, 4), ("l2", True, 2, 4)]:
    record(f"model/{kind}/{'causal' if causal else 'bidir'}/{data}x{seq}")(
        lambda kind=kind, causal=causal, data=data, seq=seq: model_check(
            kind, causal, data, seq))
  for kind, mlm, meshes in [("favor", False, [(8, 1), (2, 4)]),
                            ("softmax", True, [(8, 1), (2, 4)])]:
    for data, seq in meshes:
      record(f"train/{kind}/{'mlm' if mlm else 'causal'}/{data}x{seq}")(
          lambda kind=kind, mlm=mlm, data=data, seq=seq: train_losses(
              kind, mlm, data, seq))
  record.print()


if __name__ == "__main__":
  main()
