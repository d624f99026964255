"""The full systems, built from pyaudiok.nn modules."""
from .soundstream.model import SoundStream, SoundStreamConfig

__all__ = ["SoundStream", "SoundStreamConfig"]
