"""Experiments reproducing the Performer paper's figures at CPU scale."""
