"""nn.Modules that hold parameters and buffers and call the fused ops."""
from .attention import LatentAttention, PartialRotary  # noqa: E402,F401
