"""Sparse attention patterns at d = O(log L) (Likhosherstov et al. 2021)."""
