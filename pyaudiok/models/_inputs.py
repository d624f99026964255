"""Input checks the models share."""
from __future__ import annotations

import torch
from torch import nn

from pyaudiok.ops import _checks


def check_model_dtype(name: str, x: torch.Tensor, module: nn.Module) -> None:
    """x must have the dtype of `module`'s floating-point parameters: a float64 waveform meeting a
    float32 model fails deep inside a conv otherwise, with a message naming neither. Under autocast,
    which casts to its dtype per op, x may have that dtype too."""
    weight = next((p for p in module.parameters() if p.is_floating_point()), None)
    if weight is None or x.dtype == weight.dtype:
        return
    device = x.device.type
    if torch.is_autocast_enabled(device) and x.dtype == torch.get_autocast_dtype(device):
        return
    expected, got = _checks._dtype_name(weight.dtype), _checks._dtype_name(x.dtype)
    raise TypeError(f"{name} must have the model's dtype ({expected}); got {got} "
                    f"(convert the input, or the model with .to(dtype))")
