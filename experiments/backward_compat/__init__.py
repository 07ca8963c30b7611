"""Backward compatibility: softmax weights continued as FAVOR+ (the Performer
paper's claim)."""
