"""The full systems, built from pyaudiok.nn modules."""
from .perceiver_ar import PerceiverAR, PerceiverARConfig  # noqa: E402,F401
