"""Transformer language models (encoder and decoder-only) and decoding."""

from performer_jax.models.config import default_model_config
from performer_jax.models.config import validate_model_config
from performer_jax.models.decoding import decode_logits
from performer_jax.models.decoding import decode_step
from performer_jax.models.decoding import generate
from performer_jax.models.decoding import init_cache
from performer_jax.models.decoding import sample_logits
from performer_jax.models.transformer import LOGICAL_AXIS_RULES
from performer_jax.models.transformer import make_model
from performer_jax.models.transformer import Transformer
from performer_jax.models.transformer import TransformerConfig
