"""Fault injection for what cannot happen here (a CUDA out-of-memory), at the model-call seam."""
