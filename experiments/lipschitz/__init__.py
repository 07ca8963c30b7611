"""Experiments on the Lipschitz constant of L2 self-attention (Kim et al.)."""
