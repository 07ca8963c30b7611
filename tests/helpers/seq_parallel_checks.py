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


def model_check(kind, causal, data, seq, implementation="auto"):
  """Loss and parameter gradients of a 2-layer model on padded sequences:
  sequence-sharded over (data, seq) against one device. With seq = 1 the
  attention runs in a shard_map over the batch only (sequence_axis=None);
  then also returns the compiled step's all-gathers."""
  cfg = inputs.tiny_model_config(kind, max_len=LEN, attention_chunk_size=4,
                                 dropout_rate=0.0,
                                 attention_implementation=implementation)
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
                                   head_axis="model",
                                   sequence_axis="seq" if seq > 1 else None):
    # One trace serves both the jaxpr check and the call.
    traced = jax.jit(step, in_shardings=(None, sharded, sharded)).trace(*args)
    jaxpr = str(traced.jaxpr)
    compiled = traced.lower().compile()
    got = compiled(*args)
  assert "shard_map" in jaxpr, "the attention ran in no shard_map"
  assert ("all_gather" in jaxpr) == (seq > 1), "sequence-parallel iff seq > 1"
  error = max(rel_error(got[0], want[0]), rel_error(got[1], want[1]))
  if seq > 1:
    return error
  return {"error": error,
          "all_gathers": compiled.as_text().count(" all-gather(")}


def unsplit_kernel_gathers() -> int:
  """The all-gathers of a "pallas" attention under jit with batch-sharded
  inputs and no shard_map: XLA gathers what it cannot split."""
  cfg = inputs.tiny_model_config("favor_softmax", max_len=LEN,
                                 attention_chunk_size=4,
                                 attention_implementation="pallas")
  model = pnn.make_model(cfg, vocab_size=inputs.MODEL_VOCAB, causal=True)
  tokens = jnp.zeros((BATCH, LEN), jnp.int32)
  variables = model.init({"params": jax.random.PRNGKey(0),
                          "random_features": jax.random.PRNGKey(0)}, tokens)
  sharded = NamedSharding(mesh_of(4, 1), P("data", "seq"))
  fn = jax.jit(lambda v, t: model.apply(v, t).sum(),
               in_shardings=(None, sharded))
  return fn.lower(variables, jax.device_put(tokens, sharded)).compile(
      ).as_text().count(" all-gather(")


def train_losses(kind, mlm, data, seq, steps=3):
  """Losses of a few trainer steps; kind "favor_pallas" is "favor" with
  implementation="pallas", which must run in a shard_map on any mesh."""
  pallas = kind == "favor_pallas"
  config = copy_config.get_config("smoke," + kind.replace("_pallas", "") +
                                  (",mlm" if mlm else ""))
  if pallas:
    config.model.attention.implementation = "pallas"
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
      if step == 0 and (seq > 1 or pallas):  # the step's own (cached) trace
        jaxpr = str(trainer.train_step.trace(state, batch).jaxpr)
        assert "shard_map" in jaxpr, "the trainer's attention ran unsplit"
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
  for causal in (True, False):
    record(f"kernel/{'causal' if causal else 'bidir'}/4x1")(
        lambda causal=causal: model_check("favor_softmax", causal, 4, 1,
                                          implementation="pallas"))
  record("kernel/unsplit")(unsplit_kernel_gathers)
  for kind, mlm, meshes in [("favor", False, [(8, 1), (2, 4)]),
                            ("softmax", True, [(8, 1), (2, 4)]),
                            ("favor_pallas", False, [(8, 1)])]:
    for data, seq in meshes:
      record(f"train/{kind}/{'mlm' if mlm else 'causal'}/{data}x{seq}")(
          lambda kind=kind, mlm=mlm, data=data, seq=seq: train_losses(
              kind, mlm, data, seq))
  record.print()


if __name__ == "__main__":
  main()
