"""Triton kernels for pyaudiok."""
