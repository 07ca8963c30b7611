"""Transformer language models (encoder and decoder-only) and decoding."""

from performer_jax.config.sections import ModelConfig
from performer_jax.models.decoding import decode_logits
from performer_jax.models.decoding import decode_step
from performer_jax.models.decoding import generate
from performer_jax.models.decoding import init_cache
from performer_jax.models.decoding import prefill
from performer_jax.models.decoding import sample_logits
from performer_jax.models.transformer import LOGICAL_AXIS_RULES
from performer_jax.models.transformer import make_model
from performer_jax.models.transformer import Transformer


def default_model_config():
  """The model section's defaults as a ConfigDict (a starting point to edit
  and pass to `make_model`)."""
  return ModelConfig.defaults()
