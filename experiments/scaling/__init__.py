"""Speed and memory of attention vs sequence length; shared timing code."""
