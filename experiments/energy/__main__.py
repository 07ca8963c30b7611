"""`python -m experiments.energy`: see `run.py`."""

import performer_jax

from experiments.energy import run

performer_jax.use_fast_allocator()  # re-executes under tcmalloc if found

run.main()
