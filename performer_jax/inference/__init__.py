"""Using trained models: load a workdir or an exported file without its
data, prefill prompts in one pass, generate, score and embed.
"""

from performer_jax.inference.loading import export
from performer_jax.inference.loading import load
from performer_jax.inference.loading import LoadedModel
from performer_jax.inference.loading import ModelLoadError

__all__ = ["LoadedModel", "ModelLoadError", "export", "load"]
