"""Trained models without their data: `load_model` and `export`.

`load` reads a workdir's checkpoint or an exported file
(`train/saved_model.py` says what each holds) into a `LoadedModel`, the
object users sample, score and embed with.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import flax.linen as nn
import numpy as np

from performer_jax import experiment
from performer_jax.tasks import base
from performer_jax.train import saved_model
from performer_jax.train.saved_model import ModelLoadError  # re-exported
from performer_jax.train.saved_model import write_export


@dataclasses.dataclass(frozen=True)
class LoadedModel:
  """A trained model and everything needed to use it.

  Attributes:
    model: the Flax Linen module (decode=False); for the NNX model,
      `pnnx.update_from_linen(pnnx.make_model(...), variables)`.
    variables: {"params": ..., "random_features": ...} (host arrays).
    config: the run's ExperimentConfig.
    io: the task's vocabulary and tokenization.
    step: the training step of the weights.
  """
  model: nn.Module
  variables: dict[str, Any]
  config: experiment.ExperimentConfig
  io: base.TaskIO
  step: int

  def make_model(self, **kwargs) -> nn.Module:
    """The same model with other build arguments (e.g. decode=True)."""
    return self.config.build_model(vocab_size=self.io.vocab_size,
                                   causal=self.io.causal, api="linen",
                                   **kwargs)

  def tokens(self, text: str) -> np.ndarray:
    """int32 `[n]`: what the model reads for `text`, the start token first
    when the task has one (`io.encode` gives the content only)."""
    content = np.asarray(self.io.encode(text), np.int32)
    if self.io.bos is None:
      return content
    return np.concatenate([[self.io.bos], content]).astype(np.int32)

  def generate(self, prompt: str | None = None, **kwargs) -> list[Any]:
    """Samples as performer-generate writes them: text (residues, bytes,
    cut at the end token, no special tokens) or uint8 `[H, W, C]` images.
    `prompt` None samples from the start token. Keyword arguments:
    num_samples, max_len, temperature, top_k, greedy, seed, batch_size
    (the command's flags, same defaults)."""
    # pylint: disable-next=g-import-not-at-top
    from performer_jax.inference import generate as generate_lib
    records = generate_lib.prompt_records(self.io, prompt)
    samples = generate_lib.generate_samples(self, records, **kwargs)
    return [generate_lib.decoded(self.io, s) for _, s in samples]


def load(path: str, step: int | None = None) -> LoadedModel:
  """The model and weights of a workdir (newest or `step` checkpoint) or of
  an exported file (`saved_model.read`). Reads no dataset and no optimizer
  state.

  Raises:
    ModelLoadError: naming what is missing (config, checkpoint, step).
  """
  return LoadedModel(*saved_model.read(path, step))


def export(workdir: str, output: str, step: int | None = None, *,
           overwrite: bool = False) -> int:
  """Writes the model of `workdir` into one file; returns its step. An
  existing `output` is replaced only with `overwrite`."""
  if os.path.exists(output) and not overwrite:
    raise FileExistsError(f"{output} already exists; choose another output "
                          "or pass --overwrite (overwrite=True) to replace "
                          "it")
  loaded = load(workdir, step)
  write_export(output, loaded.config, loaded.variables, loaded.step)
  return loaded.step


