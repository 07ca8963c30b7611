"""`python -m experiments.expressivity`: see `run.py`."""

from experiments.expressivity import run

run.main()
