"""SLiM: sub-linear memory causal Performer training."""
