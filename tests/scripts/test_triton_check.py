"""`scripts/triton_check.py`: every GPU kernel compiles to sm_90 code with
the launch options the kernels use, within a block's shared memory.

It needs the `triton` package (a dev dependency, on Linux); without it
the test skips.
"""

import importlib.util
import os

import jax.numpy as jnp
import pytest

from tests.helpers import inputs

triton = pytest.importorskip(
    "triton", reason="the triton package compiles the kernels' IR "
    "(pip install triton==3.8.0)")
if not triton.__version__.startswith("3.8."):
  pytest.skip(f"triton {triton.__version__} (from another package, e.g. "
              "torch) need not read this JAX's IR; the dev set-up pins "
              "3.8.0", allow_module_level=True)
_PATH = os.path.join(inputs.REPO, "scripts", "triton_check.py")
_spec = importlib.util.spec_from_file_location("triton_check", _PATH)
check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check)


@pytest.mark.parametrize("head_dim,features", [(64, 256), (128, 128)])
def test_every_kernel_compiles_for_sm90(head_dim, features):
  irs = check.kernel_irs(256, head_dim, features, 64, jnp.bfloat16)
  assert sorted(irs) == sorted([
      "_summary_kernel", "_causal_fwd_kernel", "_causal_bwd_kernel",
      "_key_bwd_kernel", "_attend_kernel", "_query_bwd_kernel"])
  for name, ir in irs.items():
    got = check.compile_ir(name, ir, 90)
    assert "error" not in got, (name, got)
    assert 0 < got["smem"] <= check.SMEM_LIMIT[90], (name, got)
