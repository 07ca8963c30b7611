"""`python -m experiments.variable_creation`: see `run.py`."""

from experiments.variable_creation import run

run.main()
