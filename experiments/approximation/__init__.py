"""Approximation error of FAVOR+ vs exact softmax attention (Lemma 2)."""
