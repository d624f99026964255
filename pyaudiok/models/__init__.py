"""The full systems, built from pyaudiok.nn modules."""
from .perceiver_ar import PerceiverAR, PerceiverARConfig
from .soundstream.model import SoundStream, SoundStreamConfig

__all__ = ["PerceiverAR", "PerceiverARConfig", "SoundStream", "SoundStreamConfig"]
