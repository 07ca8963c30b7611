"""Tests for the compiled causal FAVOR+ CPU kernel (implementation="kernel").

Values and gradients are checked against the autodiff XLA path and a float64
brute force (attention/test_favor.py runs its brute-force, leak and causality
tests on the kernel too); here: every feature map, masks including left
padding, partial chunks, large norms, dtypes, jit/vmap, a sharded mesh,
check_grads, the "auto" choice and the errors.
"""

import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from performer_jax.attention import api
from performer_jax.attention import cpu_kernel
from performer_jax.attention import pallas_favor
from performer_jax.attention import favor_attention
from performer_jax.kernels import build
from tests.helpers import inputs



@pytest.fixture(autouse=True)
def _needs_kernel(request):
  if "no_kernel_needed" not in request.keywords:
    inputs.require_kernel()


def square_features(x, projection):
  del projection
  return jnp.square(x)


def _inputs(b=2, length=21, h=2, d=8, m=16, scale=1.0, seed=0):
  return inputs.qkv(b, length, h, d, m, scale=scale, seed=seed, keep=0.7)


def _value_and_grads(implementation, q, k, v, proj, **kw):
  def loss(q, k, v):
    out = favor_attention(q, k, v, proj, causal=True,
                          implementation=implementation, **kw)
    # A non-uniform cotangent, so every output element matters; positive
    # terms, so the sum has no cancellation and its float32 rounding stays
    # relative to its value (see _assert_close).
    return jnp.sum(jnp.exp(jnp.sin(3.0 * out)) *
                   (1.0 + jnp.arange(out.shape[-1])))
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(q, k, v)


def _assert_close(a, b, tol):
  """Each leaf within tol of the largest |entry| of its reference: the two
  implementations sum in different orders, so only a relative bound holds."""
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    scale = max(float(jnp.max(jnp.abs(y))), 1e-6)
    np.testing.assert_allclose(x / scale, y / scale, atol=tol, rtol=0)


@pytest.mark.parametrize("kernel,with_proj", [
    ("softmax", True), ("softmax_hyperbolic", True), ("relu", True),
    ("relu", False), (square_features, False)])
@pytest.mark.parametrize("chunk", [4, 64])
@pytest.mark.parametrize("masked", [False, True])
def test_matches_autodiff_values_and_gradients(kernel, with_proj, chunk,
                                               masked):
  q, k, v, mask, proj = _inputs(scale=1.5)
  kw = dict(kernel=kernel, chunk_size=chunk,
            key_mask=mask if masked else None)
  proj = proj if with_proj else None
  _assert_close(_value_and_grads("kernel", q, k, v, proj, **kw),
                _value_and_grads("autodiff", q, k, v, proj, **kw), 2e-5)


def test_left_padding_and_empty_prefix():
  """Leading padded keys: the running max starts at 0 and then falls to the
  first real key's amplitude (the one non-monotone case); queries that see
  no key get 0, as in the other implementations."""
  q, k, v, _, proj = _inputs(b=1, length=19, scale=2.0)
  mask = jnp.arange(19)[None] >= 6
  kw = dict(key_mask=mask, chunk_size=4)
  got = _value_and_grads("kernel", q, k, v, proj, **kw)
  _assert_close(got, _value_and_grads("autodiff", q, k, v, proj, **kw), 2e-5)
  out = favor_attention(q, k, v, proj, causal=True, implementation="kernel",
                        **kw)
  np.testing.assert_array_equal(out[:, :6], 0.0)
  # Padded keys get no gradient, whatever they hold.
  np.testing.assert_array_equal(got[1][1][:, :6], 0.0)


def test_padding_content_is_ignored():
  q, k, v, mask, proj = _inputs()
  run = lambda k, v: favor_attention(q, k, v, proj, causal=True,
                                     key_mask=mask, implementation="kernel")
  junk = ~mask[:, :, None, None]
  out = run(jnp.where(junk, 1e4, k), jnp.where(junk, -1e4, v))
  np.testing.assert_allclose(out, run(k, v), atol=1e-6)


def test_long_sequence_matches_slim():
  q, k, v, _, proj = _inputs(b=1, length=3000, h=1, d=16, m=32, scale=1.0)
  a = favor_attention(q, k, v, proj, causal=True, implementation="kernel")
  b = favor_attention(q, k, v, proj, causal=True, implementation="slim")
  np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("kernel", ["softmax", "relu"])
def test_large_norms_stay_finite(kernel):
  q, k, v, _, proj = _inputs(d=16, scale=12.0)
  value, grads = _value_and_grads("kernel", q, k, v, proj, kernel=kernel,
                                  chunk_size=8)
  assert np.isfinite(value)
  for g in grads:
    assert np.all(np.isfinite(g))
  _assert_close((value, grads),
                _value_and_grads("slim", q, k, v, proj, kernel=kernel,
                                 chunk_size=8), 1e-4)


def test_bf16_in_bf16_out():
  q, k, v, _, proj = _inputs()
  cast = lambda x: x.astype(jnp.bfloat16)
  out = favor_attention(cast(q), cast(k), cast(v), proj, causal=True,
                        implementation="kernel")
  assert out.dtype == jnp.bfloat16
  ref = favor_attention(cast(q), cast(k), cast(v), proj, causal=True,
                        implementation="autodiff")
  # Both round a float32 result to bfloat16: they may land one bf16 ulp
  # (2^-7 relative) apart.
  np.testing.assert_allclose(out.astype(np.float32), ref.astype(np.float32),
                             atol=1e-2, rtol=2 ** -7)


def test_check_grads():
  q, k, v, _, proj = _inputs(b=1, length=7, h=1, d=4, m=8)
  fn = lambda q, k, v: favor_attention(q, k, v, proj, causal=True,
                                       chunk_size=3, implementation="kernel")
  check_grads(fn, (q, k, v), order=1, modes=("rev",), atol=2e-2, rtol=2e-2)


def test_jit_vmap_and_batch_dims():
  q, k, v, _, proj = _inputs()
  fn = lambda q, k, v: favor_attention(q, k, v, proj, causal=True,
                                       chunk_size=8, implementation="kernel")
  eager = fn(q, k, v)
  # jit and vmap fuse the feature maps differently: float32 reordering.
  np.testing.assert_allclose(jax.jit(fn)(q, k, v), eager, atol=1e-5)
  stacked = [jnp.stack([x, 2 * x]) for x in (q, k, v)]
  batched = jax.vmap(fn)(*stacked)
  np.testing.assert_allclose(batched[0], eager, atol=1e-5)
  np.testing.assert_allclose(batched[1], fn(2 * q, 2 * k, 2 * v), atol=1e-5)
  # Extra batch dimensions are flattened like the other implementations.
  multi = favor_attention(*(x.reshape(1, 2, *x.shape[1:]) for x in (q, k, v)),
                          proj, causal=True, chunk_size=8,
                          implementation="kernel")
  np.testing.assert_allclose(multi[0], eager, atol=1e-5)


def test_sharded_mesh_matches_one_device():
  script = textwrap.dedent("""
      import jax, jax.numpy as jnp, numpy as np
      from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
      from performer_jax.attention import favor_attention
      from performer_jax.attention import gaussian_orthogonal_random_matrix
      r = jax.random.split(jax.random.PRNGKey(0), 4)
      q, k, v = (jax.random.normal(x, (4, 24, 2, 8)) for x in r[:3])
      proj = gaussian_orthogonal_random_matrix(r[3], 16, 8)
      loss = lambda q, k, v: jnp.sum(jnp.sin(favor_attention(
          q, k, v, proj, causal=True, chunk_size=8, implementation="kernel")))
      grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
      ref = grad(q, k, v)
      mesh = Mesh(np.array(jax.devices()).reshape(2, 2), ("data", "model"))
      spec = NamedSharding(mesh, P("data", None, "model", None))
      got = grad(*(jax.device_put(x, spec) for x in (q, k, v)))
      print(max(float(jnp.max(jnp.abs(a - b)))
                for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref))))
  """)
  env = inputs.subprocess_env(
      XLA_FLAGS="--xla_force_host_platform_device_count=4")
  proc = subprocess.run([sys.executable, "-c", script], env=env,
                        cwd=inputs.REPO,
                        capture_output=True, text=True, timeout=300,
                        check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert float(proc.stdout.strip().splitlines()[-1]) < 1e-5


@pytest.mark.no_kernel_needed
@pytest.mark.parametrize("backend", ["cpu", "gpu"])
def test_auto_choice(monkeypatch, backend):
  """What "auto" runs, stated for each backend (the backend is faked: the
  choice is made at trace time from its name). The GPU is a pre-Hopper
  one; TPU and Hopper: test_pallas_favor.py."""
  monkeypatch.setattr(jax, "default_backend", lambda: backend)
  monkeypatch.setattr(pallas_favor, "gpu_capability", lambda: (8, 0))
  resolve = api.resolve_implementation
  monkeypatch.setattr(cpu_kernel, "built", lambda: True)
  if backend == "cpu":
    assert resolve("auto", "softmax", True) == "kernel"
    assert resolve("auto", square_features, True) == "kernel"
    assert resolve("auto", "softmax_trig", True) == "slim"
    assert resolve("auto", "softmax", True, sequence_axis="seq") == "slim"
  else:  # The CPU kernel never runs elsewhere, built or not.
    assert resolve("auto", "softmax", True) == "parallel"
    assert resolve("auto", "softmax_trig", True) == "parallel"
  assert resolve("auto", "softmax", False) == "slim"
  assert resolve("autodiff", "softmax", True) == "autodiff"
  monkeypatch.setattr(cpu_kernel, "built", lambda: False)
  assert resolve("auto", "softmax", True) == (
      "slim" if backend == "cpu" else "parallel")
  with pytest.raises(ValueError, match="implementation must be one of"):
    resolve("fast", "softmax", True)


def test_signed_features_rejected():
  q, k, v, _, proj = _inputs()
  with pytest.raises(ValueError, match="softmax_trig.*implementation='slim'"):
    favor_attention(q, k, v, proj, causal=True, kernel="softmax_trig",
                    implementation="kernel")


def test_kernel_rejects_mismatched_shapes():
  f32 = lambda *s: jnp.ones(s, jnp.float32)
  cpu_kernel._register()
  with pytest.raises(Exception, match="expected qf, kf"):
    cpu_kernel._core(f32(2, 8, 4), f32(2, 9, 4), f32(2, 8), f32(2, 8, 3), 4)


@pytest.mark.no_kernel_needed
def test_missing_build_names_the_fix(monkeypatch, tmp_path):
  monkeypatch.setenv("PERFORMER_JAX_KERNEL_DIR", str(tmp_path / "none"))
  assert not cpu_kernel.built()
  with pytest.raises(RuntimeError, match="performer_jax.kernels.build"):
    cpu_kernel.load_library()


@pytest.mark.no_kernel_needed
def test_build_errors_are_clear(monkeypatch, tmp_path):
  monkeypatch.setenv("PERFORMER_JAX_KERNEL_DIR", str(tmp_path))
  monkeypatch.delenv("EIGEN_INCLUDE_DIR", raising=False)
  monkeypatch.setattr(build, "EIGEN_CANDIDATES", (str(tmp_path / "no"),))
  with pytest.raises(build.KernelBuildError, match="libeigen3-dev"):
    build.build(force=True)
  monkeypatch.setattr(build, "EIGEN_CANDIDATES", build.EIGEN_CANDIDATES)
  monkeypatch.setenv("EIGEN_INCLUDE_DIR", str(tmp_path))
  (tmp_path / "Eigen").mkdir()
  (tmp_path / "Eigen" / "Core").write_text("")
  monkeypatch.setenv("CXX", "false")  # a compiler that always fails
  with pytest.raises(build.KernelBuildError, match="compiling"):
    build.build(force=True)
  assert not list(tmp_path.glob("*.so"))  # no half-written library left


@pytest.mark.no_kernel_needed
def test_library_name_tracks_source_and_jaxlib(monkeypatch):
  first = build.library_path()
  monkeypatch.setattr(build, "FLAGS", build.FLAGS + ("-O2",))
  assert build.library_path() != first
  assert first.name.startswith("causal_favor_cpu-")
