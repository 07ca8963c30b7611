"""`python -m performer_jax.train --config=... --workdir=...`."""

from performer_jax.train.cli import main

if __name__ == "__main__":
  main()
