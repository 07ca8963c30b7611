"""Compiled CPU kernels (XLA FFI), built on the machine that runs them.

`python -m performer_jax.kernels.build` compiles them (scripts/setup.sh does
it); nothing is compiled or loaded at import time.
"""
