"""The full systems, built from pyaudiok.nn modules."""
from .diffstride import resnet18_diffstride
from .perceiver_ar import PerceiverAR, PerceiverARConfig
from .soundstream.model import SoundStream, SoundStreamConfig
from .wavesplit import Wavesplit, WavesplitConfig
from .dive import DIVE, DIVEConfig

__all__ = ["PerceiverAR", "PerceiverARConfig", "SoundStream", "SoundStreamConfig", "resnet18_diffstride"]
__all__ += ["Wavesplit", "WavesplitConfig"]
__all__ += ["DIVE", "DIVEConfig"]
