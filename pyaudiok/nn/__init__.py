"""nn.Modules that hold parameters and buffers and call the fused ops."""
from .attention import LatentAttention, PartialRotary
from .channel_reorder import ChannelEncoder, ChannelReorder, Reordered, reordering_loss
from .diffstride import (DiffStride1d, DiffStride2d, SpectralPool1d, SpectralPool2d, clamp_strides_,
                         diffstride_penalty, learned_strides)
from .label_proportions import OTPseudoLabelLoss, ProportionLoss
from .leaf import SPCEN, GaborFilterbank, GaussianLowpass, Leaf
from .mel import hz_to_mel, mel_filterbank, mel_to_hz
from .quantization import ResidualVQ

__all__ = ["LatentAttention", "PartialRotary", "ResidualVQ", "DiffStride1d", "DiffStride2d", "SpectralPool1d",
           "SpectralPool2d", "clamp_strides_", "diffstride_penalty", "learned_strides"]
__all__ += ["Leaf", "GaborFilterbank", "GaussianLowpass", "SPCEN"]
__all__ += ["mel_filterbank", "hz_to_mel", "mel_to_hz"]
__all__ += ["ChannelReorder", "ChannelEncoder", "Reordered", "reordering_loss"]
__all__ += ["ProportionLoss", "OTPseudoLabelLoss"]
