"""`python -m experiments.variable_creation`: see `run.py`."""

import performer_jax

from experiments.variable_creation import run

performer_jax.use_fast_allocator()  # re-executes under tcmalloc if found

run.main()
