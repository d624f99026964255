"""DiffStride: ResNet-18 with learnable-stride Fourier-domain downsampling (DESIGN §3)."""
from .resnet import POOLINGS, ResNet18DiffStride, resnet18_diffstride

__all__ = ["POOLINGS", "ResNet18DiffStride", "resnet18_diffstride"]
