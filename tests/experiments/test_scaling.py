"""The scaling figure's memory model: the estimate that decides which
exact-attention runs are skipped matches what XLA allocates."""

from experiments.scaling import timing


def test_quadratic_memory_estimate_matches_compiled():
  # The estimate decides which exact-attention runs are skipped; it must be
  # close to what XLA actually allocates.
  shape = timing.Shape(batch=1, heads=2, head_dim=8, num_features=16)
  length = 512
  q, k, v, proj = timing.make_inputs(shape, length)
  for method in ("exact", "l2"):
    compiled = timing.fwd_bwd(method, 64).lower(q, k, v, proj).compile()
    got = timing.compiled_bytes(compiled)["total"]
    est = timing.estimate_quadratic_bytes(shape, length)
    assert 0.5 * est < got < 2 * est, (method, got, est)
  compiled = timing.fwd_bwd("favor", 64).lower(q, k, v, proj).compile()
  assert timing.compiled_bytes(compiled)["total"] < 0.5 * est
