"""The README section "Using performer-jax from NNX" (kept in docs/nnx.md)
runs as written: it builds, trains a step, redraws features and decodes."""

import os
import re

import jax.numpy as jnp
import numpy as np

from performer_jax import nnx as pnnx
from tests.helpers import inputs


def _example() -> str:
  with open(os.path.join(inputs.REPO, "docs", "nnx.md")) as f:
    text = f.read()
  section = text.split("## Using performer-jax from NNX", 1)[1]
  return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_example_runs():
  namespace = {}
  exec(compile(_example(), "docs/nnx.md", "exec"), namespace)
  assert np.isfinite(float(namespace["loss"]))
  sampled = namespace["sampled_BL"]
  assert sampled.shape == (8, 32) and sampled.dtype == jnp.int32
  model = namespace["model"]
  assert isinstance(model, pnnx.Transformer) and model.decode
  assert int(model.pos_embed.cache_index[...]) == 31
