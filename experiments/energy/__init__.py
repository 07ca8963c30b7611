"""Attention as descent on an energy (Yang, Huang and Wipf, NeurIPS 2022)."""
