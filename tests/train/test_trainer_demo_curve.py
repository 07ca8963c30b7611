"""The demo (`bash scripts/run_demo.sh`: protein_mlm:cpu, the row of
docs/results.md) still takes the steps it took: its first STEPS training
losses and an eval on EVAL_BATCHES batches, against a stored curve.

Anything that changes what the demo learns (data order, masking, init,
model, optimizer, schedule) moves these numbers by far more than float32
rounding does; the tolerance is derived from the rounding alone. To
regenerate the curve after an intended change, and see the spread the
tolerance comes from:

  python -m tests.train.test_trainer_demo_curve --write

That runs the same steps in three processes whose float32 summation orders
differ: the test suite's XLA flags (tests/conftest.py, the stored curve),
XLA's default flags, and bidirectional FAVOR+ through "autodiff" instead of
the fused implementation. The tolerance is 10x the largest relative
difference between them, and at least 1e-4 (on 2026-12-04 the spread was
1e-7: the floor leaves room for instruction sets and thread counts these
three do not vary), written into the file. Losses are compared, not the
eval accuracy, which is a count of argmax hits that one near-tie can move
by a whole token.
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

CURVE = os.path.join(os.path.dirname(__file__), "trainer_demo_curve.json")
STEPS = 6
EVAL_BATCHES = 2
VARIANTS = ("suite", "default_xla", "autodiff")


def demo_curve(implementation: str = "auto") -> dict[str, list[float]]:
  """Train losses of the demo's first STEPS steps, and eval loss and
  accuracy on EVAL_BATCHES batches after them."""
  # pylint: disable=g-import-not-at-top
  from performer_jax.configs import protein_mlm
  from performer_jax.train import steps as steps_lib
  from performer_jax.train import trainer as trainer_lib
  # pylint: enable=g-import-not-at-top
  config = protein_mlm.get_config("cpu")  # as scripts/run_demo.sh
  config.model.attention.implementation = implementation
  t = trainer_lib.Trainer(config)
  state = t.init_state()
  losses = []
  with t.context():
    for step in range(STEPS):
      state, metrics = t.train_step(state, t.get_batch(t.task.train, step))
      metrics = jax.device_get(metrics)
      losses.append(float(metrics["loss_sum"] / metrics["weight_sum"]))
    sums = None
    for i in range(EVAL_BATCHES):
      batch = jax.device_get(t.eval_step(state, t.get_batch(t.task.eval, i)))
      sums = batch if sums is None else {k: sums[k] + batch[k] for k in sums}
  result = steps_lib.summarize(sums, "token")
  return {"train_loss": losses, "eval_loss": [result["loss"]],
          "eval_accuracy": [result["accuracy"]]}


def test_the_demo_takes_the_stored_steps():
  if jax.default_backend() != "cpu":
    pytest.skip("the stored curve is the CPU's float32 run")
  with open(CURVE) as f:
    stored = json.load(f)
  got = demo_curve()
  for key in ("train_loss", "eval_loss"):
    np.testing.assert_allclose(
        got[key], stored[key], rtol=stored["rtol"], atol=0,
        err_msg=f"the demo's {key} moved: if the change was intended, "
        "regenerate with `python -m tests.train.test_trainer_demo_curve --write` "
        "and rerun the demo for docs/results.md")


def _variant(name: str) -> dict[str, list[float]]:
  """The curve computed in a fresh process (XLA flags are read at start)."""
  # pylint: disable-next=g-import-not-at-top
  from tests.helpers import inputs
  env = inputs.subprocess_env()
  if name == "default_xla":
    env["XLA_FLAGS"] = ""
  code = ("import json, sys; from tests.train import test_demo_curve as t; "
          "print(json.dumps(t.demo_curve(sys.argv[1])))")
  if name == "suite":  # the flags tests/conftest.py sets for the suite
    code = "import tests.conftest; " + code
  out = subprocess.run(
      [sys.executable, "-c", code,
       "autodiff" if name == "autodiff" else "auto"], env=env,
      cwd=inputs.REPO, capture_output=True, text=True, check=True).stdout
  return json.loads(out.strip().splitlines()[-1])


def write() -> None:
  curves = {name: _variant(name) for name in VARIANTS}
  ref = curves["suite"]
  spread = max(
      float(np.max(np.abs(np.subtract(c[k], ref[k])) / np.abs(ref[k])))
      for c in curves.values() for k in ("train_loss", "eval_loss"))
  rtol = max(10 * spread, 1e-4)
  with open(CURVE, "w") as f:
    json.dump({**ref, "rtol": rtol, "largest_relative_spread": spread,
               "variants": curves, "command":
               "python -m tests.train.test_trainer_demo_curve --write"}, f, indent=1)
  print(f"wrote {CURVE}: rtol {rtol:.2e} (spread {spread:.2e})")


if __name__ == "__main__" and "--write" in sys.argv:
  write()
