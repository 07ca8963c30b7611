"""Logical-axis sharding of the NNX modules, and Linen modules bridged to NNX
(`nnx.bridge.ToNNX`): with no mesh at all, and on a 4-device mesh under
`jax.set_mesh` with logical axis rules, with flax's default flags."""

import subprocess
import sys
import textwrap

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from performer_jax import linen as pnn
from performer_jax import nnx as pnnx
from performer_jax.schemas import AttentionConfig
from tests.helpers import inputs
from tests.helpers.compare import assert_close

X = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 16))
FAVOR = AttentionConfig(kind="favor", num_features=8)


def test_no_mesh_needs_no_flag():
  assert nnx.using_eager_sharding()  # flax's default, left as it is
  module = pnnx.MultiHeadAttention(16, 2, FAVOR, rngs=nnx.Rngs(0))
  metadata = module.query.kernel.get_metadata()
  assert metadata["out_sharding"] == ("embed", "heads", "kv")
  assert metadata["eager_sharding"] is False
  assert module(X).shape == X.shape


def test_bridged_linen_module_initializes_redraws_and_trains():
  linen = pnn.MultiHeadAttention(num_heads=2, config=FAVOR)
  bridged = nnx.bridge.ToNNX(linen, rngs=nnx.Rngs(0))
  bridged.lazy_init(X)
  assert isinstance(bridged.projection, pnnx.RandomFeatures)
  # The bridged module's state is the native module's: same function.
  native = pnnx.MultiHeadAttention(16, 2, FAVOR, rngs=nnx.Rngs(1))
  pnnx.update_from_linen(native, pnnx.to_linen_variables(bridged))
  assert_close(native(X), bridged(X), tol=1e-6)
  old = bridged.projection[...]
  pnnx.redraw_random_features(bridged, jax.random.PRNGKey(1))
  assert not np.allclose(bridged.projection[...], old)
  optimizer = nnx.Optimizer(bridged, optax.sgd(0.1), wrt=nnx.Param)
  grads = nnx.grad(lambda m: jnp.sum(m(X) ** 2))(bridged)
  projection = bridged.projection[...]
  optimizer.update(bridged, grads)
  np.testing.assert_array_equal(bridged.projection[...], projection)


_MESH_SCRIPT = textwrap.dedent("""
    import flax.linen as nn
    from flax import nnx
    import jax
    import jax.numpy as jnp
    from jax.sharding import AxisType, PartitionSpec as P
    import numpy as np
    from performer_jax import linen as pnn
    from performer_jax import nnx as pnnx
    from tests.helpers import inputs

    def spec(variable):  # the mesh axes of each array axis
      names = tuple(variable[...].sharding.spec)
      return names + (None,) * (variable.ndim - len(names))

    def mesh(axis_type):
      return jax.make_mesh((2, 2), ("data", "model"),
                           axis_types=(axis_type,) * 2)

    rules = lambda: nn.logical_axis_rules(pnn.LOGICAL_AXIS_RULES)
    # Explicit axes, the strict case: created sharded (scanned layers get
    # the "layers" axis first), and every product that contracts a sharded
    # axis says how its output is sharded, so the model runs.
    cfg = inputs.tiny_model_config("favor_softmax", scan_layers=True)
    tokens = jax.random.randint(jax.random.PRNGKey(1), (4, 16), 0, 13)
    with jax.set_mesh(mesh(AxisType.Explicit)), rules():
      model = pnnx.make_model(cfg, vocab_size=13, causal=True,
                              rngs=nnx.Rngs(0))
      model.eval()
      layer = model.layers
      assert spec(layer.attention.query.kernel) == (
          None, None, "model", None), spec(layer.attention.query.kernel)
      assert spec(layer.attention.out.kernel) == (None, "model", None, None)
      assert spec(layer.mlp.wi.kernel) == (None, None, "model")
      assert spec(layer.mlp.wo.kernel) == (None, "model", None)
      assert spec(model.token_embed.embedding) == (None, None)
      # The partition specs NNX reports are the ones the arrays have.
      specs = nnx.get_partition_spec(nnx.state(model, nnx.Param))
      assert specs["layers"]["mlp"]["wi"]["kernel"].get_value() == P(
          None, None, "model")
      logits = nnx.jit(lambda m, t: m(t))(model, tokens)
    # The same weights on one device give the same logits.
    weights = nnx.state(model, nnx.Any(nnx.Param, pnnx.RandomFeatures))
    nnx.update(model, jax.tree.map(np.asarray, weights))
    expected = model(tokens)
    error = float(jnp.abs(logits - expected).max())
    assert error < 1e-4 * float(jnp.abs(expected).max()), error
    print("explicit ok")

    # Automatic axes (the trainer's mesh): the layers' model, and a Linen
    # module bridged to NNX.
    with jax.set_mesh(mesh(AxisType.Auto)), rules():
      model = pnnx.make_model(inputs.tiny_model_config("l2"), vocab_size=13,
                              causal=False, rngs=nnx.Rngs(0))
      assert spec(model.layer_1.attention.value.kernel) == (
          None, "model", None)
      bridged = nnx.bridge.ToNNX(
          pnn.MultiHeadAttention(num_heads=2, config=pnn.AttentionConfig(
              kind="favor", num_features=8)), rngs=nnx.Rngs(0))
      bridged.lazy_init(jnp.ones((4, 5, 16)))
      assert spec(bridged.query["kernel"]) == (None, "model", None)
    print("auto ok")
    """)


def test_shards_on_a_mesh_with_logical_rules():
  env = inputs.subprocess_env(
      XLA_FLAGS="--xla_force_host_platform_device_count=4")
  proc = subprocess.run([sys.executable, "-c", _MESH_SCRIPT], env=env,
                        cwd=inputs.REPO, capture_output=True, text=True,
                        timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.split() == ["explicit", "ok", "auto", "ok"], proc.stdout
