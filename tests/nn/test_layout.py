"""The conv stacks of COLA and the permutation pretext task run channels-last (pyaudiok.nn.layout):
their kernels are stored so, keep it through .to() and load_state_dict, and give what the same
weights give in the default layout, forward and backward."""
import copy

import pytest
import torch

from pyaudiok.models import COLA, COLAConfig, PermutationPretext


def _cola():
    model = COLA(COLAConfig(widths=(4, 8), embedding_dim=16))
    return model, lambda m: m(torch.randn(3, 4000, dtype=torch.float64), torch.randn(3, 4000, dtype=torch.float64))


def _permutation():
    model = PermutationPretext(n_mels=16, frames=16, time_patches=2, freq_patches=2, dim=8)
    x = torch.randn(3, 16, 16, dtype=torch.float64)
    return model, lambda m: m(x, generator=torch.Generator().manual_seed(0)).loss


def _kernels(model):
    return [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d)]


@pytest.mark.parametrize("make", (_cola, _permutation), ids=("cola", "permutation"))
def test_conv_stack_is_channels_last_and_matches_the_default_layout(make):
    torch.manual_seed(0)
    model, loss_of = make()
    model = model.double()  # .to() keeps the layout
    kernels = _kernels(model)
    assert kernels and all(w.is_contiguous(memory_format=torch.channels_last) for w in kernels)
    # (A kernel of one input channel is both layouts at once; the others are channels-last only.)
    assert all(not w.is_contiguous() for w in kernels if w.shape[1] > 1)
    default = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
    assert all(w.is_contiguous() for w in _kernels(default))
    torch.manual_seed(1)
    loss = loss_of(model)
    torch.manual_seed(1)
    expected = loss_of(default)
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-12)
    loss.backward()
    expected.backward()
    for w, v in zip(kernels, _kernels(default)):
        torch.testing.assert_close(w.grad, v.grad, rtol=1e-9, atol=1e-12)
    # A state_dict of the default layout loads into the channels-last model and keeps its layout.
    model.load_state_dict(default.state_dict())
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in _kernels(model))
