"""An EfficientNet-B0 feature extractor for one-channel spectrograms (COLA's encoder option):
the B0 stem, its seven stages of MBConv blocks (inverted residual, depthwise conv,
squeeze-and-excitation, SiLU) and the 1×1 head conv to 1280 channels; no classifier (COLA
max-pools the map). Stage table and block as in Tan & Le (2019)."""
from __future__ import annotations

from torch import nn

__all__ = ["EfficientNetB0", "B0_STAGES"]

# (expansion, output channels, repeats, first stride, kernel)
B0_STAGES = ((1, 16, 1, 1, 3), (6, 24, 2, 2, 3), (6, 40, 2, 2, 5), (6, 80, 3, 2, 3), (6, 112, 3, 1, 5),
             (6, 192, 4, 2, 5), (6, 320, 1, 1, 3))


def _conv_bn_act(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True):
    layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.SiLU(inplace=True)) if act else nn.Sequential(*layers)


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, squeezed: int):
        super().__init__()
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, squeezed, 1), nn.SiLU(inplace=True),
                                  nn.Conv2d(squeezed, channels, 1), nn.Sigmoid())

    def forward(self, x):
        return x * self.gate(x)


class MBConv(nn.Module):
    """Expand (1×1) → depthwise k×k (stride) → squeeze-excite (¼ of the block's input width) →
    project (1×1, no activation); identity shortcut when shape allows."""

    def __init__(self, cin: int, cout: int, expansion: int, stride: int, kernel: int):
        super().__init__()
        mid = cin * expansion
        layers = [_conv_bn_act(cin, mid, 1)] if expansion != 1 else []
        layers += [_conv_bn_act(mid, mid, kernel, stride, groups=mid), SqueezeExcite(mid, max(1, cin // 4)),
                   _conv_bn_act(mid, cout, 1, act=False)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.body(x)
        return x + y if self.residual else y


class EfficientNetB0(nn.Module):
    """[B, in_channels, H, W] → feature map [B, 1280, H/32, W/32] (ceil)."""

    out_channels = 1280

    def __init__(self, in_channels: int = 1):
        super().__init__()
        blocks = [_conv_bn_act(in_channels, 32, 3, 2)]
        cin = 32
        for expansion, cout, repeats, stride, kernel in B0_STAGES:
            for r in range(repeats):
                blocks.append(MBConv(cin, cout, expansion, stride if r == 0 else 1, kernel))
                cin = cout
        blocks.append(_conv_bn_act(cin, self.out_channels, 1))
        self.features = nn.Sequential(*blocks)

    def forward(self, x):
        return self.features(x)
