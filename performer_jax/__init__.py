"""performer-jax: linear-time (FAVOR+) and Lipschitz (L2) attention for JAX."""

__version__ = "0.1.0"


def load_model(workdir_or_export: str, step: int | None = None):
  """`(model, variables)` of a trained run: a performer-train workdir (the
  newest checkpoint, or `step`) or a file written by performer-export. Only
  the parameters and random features are read: no optimizer state, no data.
  `performer_jax.inference.load` returns the config and tokenizer too."""
  from performer_jax.inference import loading  # pylint: disable=g-import-not-at-top
  loaded = loading.load(workdir_or_export, step)
  return loaded.model, loaded.variables
