"""The full systems, built from pyaudiok.nn modules."""
from .charm import CharmClassifier, CharmConfig
from .cola import COLA, COLAConfig
from .diffstride import resnet18_diffstride
from .dive import DIVE, DIVEConfig
from .leaf import LeafClassifier
from .perceiver_ar import PerceiverAR, PerceiverARConfig
from .permutation import PermutationPretext
from .soundstream.model import SoundStream, SoundStreamConfig
from .wavesplit import Wavesplit, WavesplitConfig

__all__ = ["COLA", "COLAConfig", "DIVE", "DIVEConfig", "LeafClassifier", "PerceiverAR", "PerceiverARConfig",
           "PermutationPretext", "SoundStream", "SoundStreamConfig", "Wavesplit", "WavesplitConfig",
           "resnet18_diffstride"]
__all__ += ["CharmClassifier", "CharmConfig"]
