"""`python -m experiments.backward_compat`: see `run.py`."""

from experiments.backward_compat import run

run.main()
