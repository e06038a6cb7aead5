"""Triton kernels of the `triton` backend (launched by fastrnn.backends.triton)."""
