"""Shared pytest setup: CPU only, deterministic, float32 matmuls exact."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
