"""Sparse variable creation by self-attention (Edelman et al. 2021)."""
