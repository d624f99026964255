"""nn.Modules that hold parameters and buffers and call the fused ops."""
from .quantization import ResidualVQ

__all__ = ["ResidualVQ"]
