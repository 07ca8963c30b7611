"""performer-jax: linear-time (FAVOR+) and Lipschitz (L2) attention for JAX."""

__version__ = "0.1.0"


def load_model(workdir_or_export: str, step: int | None = None):
  """A trained run as a `performer_jax.inference.LoadedModel` (`.model`,
  `.variables`, `.config`, `.io`, `.generate`, `.tokens`, `.make_model`):
  a performer-train workdir (the newest checkpoint, or `step`) or a file
  written by performer-export. Only the parameters and random features are
  read: no optimizer state, no data. The same as
  `performer_jax.inference.load`."""
  from performer_jax.inference import loading  # pylint: disable=g-import-not-at-top
  return loading.load(workdir_or_export, step)


def use_fast_allocator() -> str:
  """XLA:CPU's fast path in your own script or notebook; call it first
  thing (`performer_jax.allocator.use_fast_allocator`)."""
  from performer_jax import allocator  # pylint: disable=g-import-not-at-top
  return allocator.use_fast_allocator()
