"""`python -m experiments.energy`: see `run.py`."""

from experiments.energy import run

run.main()
