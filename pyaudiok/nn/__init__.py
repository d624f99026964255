"""nn.Modules that hold parameters and buffers and call the fused ops."""
from .diffstride import (DiffStride1d, DiffStride2d, SpectralPool1d, SpectralPool2d, clamp_strides_,
                         diffstride_penalty, learned_strides)
