"""`scripts/bench_residuals.py` counts what the backward keeps: for the GPU's
"pallas" no feature tensor and states in bf16, less than the XLA paths."""

import importlib.util
import os

import jax.numpy as jnp
import pytest

from performer_jax.attention import pallas_favor
from performer_jax.attention import pallas_segments
from tests.helpers import inputs

_PATH = os.path.join(inputs.REPO, "scripts", "bench_residuals.py")
_spec = importlib.util.spec_from_file_location("bench_residuals", _PATH)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

L = 4096  # 64 chunks of 64


def _bytes(res):
  return sum(r.size * r.dtype.itemsize for r in res)


@pytest.mark.skipif(not pallas_favor.supports("softmax", L, 64, 64, 256, 64,
                                              "gpu", dtype=jnp.bfloat16),
                    reason="this JAX has no Pallas Triton backend")
@pytest.mark.parametrize("causal", [True, False])
def test_pallas_keeps_no_features_and_less_than_the_xla_paths(
    monkeypatch, causal):
  monkeypatch.setattr(pallas_favor, "platform", lambda: "gpu")
  monkeypatch.setattr(pallas_segments, "segments_for", lambda *_: 1)
  kept = bench.residuals(L, causal, "pallas")
  g = bench.BATCH * bench.HEADS
  # Nothing with a length axis and a feature axis ([.., L, F]).
  assert not [r.shape for r in kept if L in r.shape and
              bench.FEATURES in r.shape]
  # Every other 32-row tile's entry state (F = 256 on a GPU).
  tile = pallas_favor.tile_rows(bench.CHUNK, bench.FEATURES, "gpu")
  states = [r for r in kept if r.shape == (g, L // tile // 2, bench.FEATURES,
                                           bench.HEAD_DIM)]
  assert [r.dtype for r in states] == ([jnp.bfloat16] if causal else [])
  other = bench.residuals(L, causal, "parallel" if causal else "slim")
  # Causal: half of "parallel"'s (its float32 state per 64-row chunk);
  # bidirectional: a tenth of "slim"'s.
  assert _bytes(kept) < (0.6 if causal else 0.2) * _bytes(other)
