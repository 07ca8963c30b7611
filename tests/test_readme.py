"""The README's Python blocks run as written, in order, in one namespace
(a reader pastes them into one session); the trained-model block reads a
tiny protein_lm run where the README has the workdir of its training
command."""

import os
import re

import jax
import numpy as np
import pytest

from tests.helpers import inputs
from tests.helpers import runs

pytestmark = pytest.mark.xdist_group("inference")


def python_blocks() -> list[str]:
  with open(os.path.join(inputs.REPO, "README.md")) as f:
    return re.findall(r"```python\n(.*?)```", f.read(), re.S)


def test_readme_python_blocks_run_as_written(capsys):
  blocks = python_blocks()
  assert len(blocks) == 4
  namespace = {}
  for i, block in enumerate(blocks):
    if "/tmp/protein_lm" in block:
      block = block.replace("/tmp/protein_lm", runs.trained("protein_lm"))
    exec(compile(block, f"README.md python block {i + 1}", "exec"),
         namespace)
  out_BLHD = np.asarray(namespace["out"])
  assert out_BLHD.shape == (2, 512, 8, 64) and np.isfinite(out_BLHD).all()
  assert np.asarray(namespace["y"]).shape == (2, 512, 128)
  assert namespace["m"].step == 1
  assert np.asarray(namespace["logits_BLV"]).shape[:2] == (1, 5)
  printed = capsys.readouterr().out
  assert printed.startswith("['MKV") and "<" not in printed
  assert namespace["decoder"].decode


def test_long_context_python_blocks_run_as_written():
  """docs/long_context.md's sequence-parallel blocks, on however many
  devices this process has (one here: the "seq" axis has size 1)."""
  with open(os.path.join(inputs.REPO, "docs", "long_context.md")) as f:
    blocks = re.findall(r"```python\n(.*?)```", f.read(), re.S)
  assert len(blocks) == 2
  namespace = {}
  for i, block in enumerate(blocks):
    exec(compile(block, f"docs/long_context.md python block {i + 1}",
                 "exec"), namespace)
  out_BLHD = np.asarray(namespace["out"])
  assert out_BLHD.shape == (2, 1024, 4, 64) and np.isfinite(out_BLHD).all()
  grads = namespace["grads"]
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
