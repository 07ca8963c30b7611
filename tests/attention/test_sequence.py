"""Attention on 8 forced CPU devices: every implementation inside a
batch-sharded `shard_map` and under `jit` with sharded inputs (where a
VJP without varying-axis annotations fails), and sequence parallelism (`sequence_axis`) on meshes
(data=2, seq=4) and (seq=8), compared with one device.

The device count is fixed when JAX starts, so all checks run in ONE
subprocess (sharded_checks.py); each test reads its part of the results.
Tolerances: the same math summed in another order, ~1e-5 relative to the
largest value of each output or gradient.
"""


import numpy as np
import pytest

from tests.helpers import inputs
from tests.helpers import multidevice

TOL = 1e-5
# One worker runs the module: the subprocess runs once.
pytestmark = pytest.mark.xdist_group("sharded")
results = multidevice.fixture("tests.helpers.sharded_checks")
_check = multidevice.found


@pytest.mark.parametrize("causal,implementation", [
    ("causal", "kernel"), ("causal", "slim"), ("causal", "autodiff"),
    ("causal", "parallel"), ("causal", "pallas"), ("bidir", "slim"),
    ("bidir", "autodiff"), ("bidir", "pallas")])
def test_every_implementation_differentiates_when_sharded(
    results, causal, implementation):
  """Outputs and gradients inside a batch-sharded shard_map and under jit
  with batch-sharded inputs equal the one-device "autodiff" reference."""
  if implementation == "kernel":
    inputs.require_kernel()
  name = f"batch_shard_map/{causal}/{implementation}"
  assert _check(results, name)[name] < TOL


def test_sequence_parallel_equals_one_device(results):
  """FAVOR+ (causal: "parallel", "pallas" in one walk and in a GPU's
  stretches, "slim", "autodiff"; bidirectional, also with a key length
  twice the query length), softmax and L2, with key and query masks
  (whole devices padded), outputs and gradients."""
  found = _check(results, "sequence/")
  cases = [k for k in found if k.count("/") >= 3]
  assert len(cases) == 9, cases
  for name in cases:
    assert found[name] < TOL, (name, found[name])


def test_no_leak_across_device_boundaries(results):
  found = _check(results, "sequence/causal_across_devices")
  moved = found["sequence/causal_across_devices"]
  # Exactly unchanged: the stabilizer and the seeds only look backwards.
  assert moved["earlier"] == 0.0
  assert moved["last"] > 1e-3  # the check can see a change
  leak = _check(results, "sequence/padded_keys_cannot_leak")
  assert leak["sequence/padded_keys_cannot_leak"] == 0.0


def test_communication_is_one_summary_gather_independent_of_length(results):
  """The compiled gradient of the sequence-parallel causal pass on
  (data=2, seq=4) with B=2, H=2, F=16, Dv=8: one all-gather of the 4
  devices' `[B/2, H, F+1, Dv+1]` summaries forward, one reduce-scatter of
  the same backward, and nothing else; the same at L=32 and L=128."""
  found = _check(results, "sequence/collectives")["sequence/collectives"]
  assert found["at_32"] == found["at_128"]
  assert found["at_32"] == [["all-gather", "f32[4,1,2,17,9]"],
                            ["reduce-scatter", "f32[1,1,2,17,9]"]]


def test_shard_sequence_under_jit_with_a_context_mesh(results):
  name = "sequence/shard_sequence_context_mesh"
  assert _check(results, name)[name] < TOL


def test_sequence_sharded_over_two_mesh_axes(results):
  name = "sequence/tuple_axes"
  assert _check(results, name)[name] < TOL


def test_results_are_finite(results):
  for name, value in results.items():
    if isinstance(value, float):
      assert np.isfinite(value), name
