"""performer-jax: linear-time (FAVOR+) and Lipschitz (L2) attention for JAX."""

__version__ = "0.1.0"
