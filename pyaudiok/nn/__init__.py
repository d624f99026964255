"""nn.Modules that hold parameters and buffers and call the fused ops."""
from .attention import LatentAttention, PartialRotary
from .quantization import ResidualVQ

__all__ = ["LatentAttention", "PartialRotary", "ResidualVQ"]
