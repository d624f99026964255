"""DiffStride layers: shapes, learnable vs fixed strides, clamping, the complexity penalty."""
import pytest
import torch

from pyaudiok.nn import (DiffStride1d, DiffStride2d, SpectralPool1d, SpectralPool2d, clamp_strides_,
                         diffstride_penalty, learned_strides)
from pyaudiok.ops import fourier_crop


@pytest.mark.parametrize("layer,shape", [(DiffStride1d(1.0), (2, 3, 37)), (DiffStride2d(1.0), (2, 3, 20, 17)),
                                         (DiffStride2d([1.0, 1.0]), (1, 2, 12, 16))])
def test_stride_one_preserves_size_and_values(layer, shape):
    x = torch.randn(shape)
    y = layer(x)
    assert y.shape == x.shape
    torch.testing.assert_close(y, x, atol=1e-5, rtol=0)


def test_layer_is_the_op_and_its_stride_learns():
    layer = DiffStride2d(2.3, per_axis=True)
    assert layer.strides.shape == (2,) and layer.strides.requires_grad
    x = torch.randn(2, 3, 40, 36)
    y = layer(x)
    torch.testing.assert_close(y, fourier_crop(x, torch.tensor([2.3, 2.3])))
    assert y.shape[2:] == layer.output_size(40, 36)
    (y ** 2).sum().backward()
    assert layer.strides.grad is not None and layer.strides.grad.abs().min() > 0


def test_half_precision_maps_keep_the_strides_in_float32():
    """A bf16 map (autocast) is cropped at the float32 stride itself, not at its bf16 rounding
    (1.7 → 1.703125), and the gradient reaches the float32 parameter."""
    layer = DiffStride2d(1.7)
    x = torch.randn(2, 3, 40, 36).bfloat16()
    y = layer(x)
    assert y.dtype == torch.bfloat16
    (y.double() ** 2).sum().backward()
    stride64 = torch.tensor([1.7], dtype=torch.float64, requires_grad=True)
    want = fourier_crop(x.double(), stride64)
    (want ** 2).sum().backward()
    torch.testing.assert_close(y.double(), want, atol=0.03, rtol=0.02)
    assert layer.strides.grad.dtype == torch.float32
    torch.testing.assert_close(layer.strides.grad.double(), stride64.grad, atol=0, rtol=0.05)


def test_spectral_pool_has_fixed_strides():
    pool = SpectralPool2d(2.0)
    assert not any(p.requires_grad for p in pool.parameters()) and "strides" in dict(pool.named_buffers())
    assert SpectralPool1d(3.0)(torch.randn(1, 2, 64)).shape == (1, 2, 31)  # 64/3: T = 11.67, K = 15


def test_clamp_keeps_strides_at_least_one():
    model = torch.nn.Sequential(DiffStride2d(1.2), DiffStride1d(1.5))
    with torch.no_grad():
        model[0].strides.fill_(0.7)
        model[1].strides.fill_(-3.0)
    clamp_strides_(model)
    assert learned_strides(model) == [[1.0], [1.0]]


def test_penalty_is_cumulative_area_and_differentiable():
    model = torch.nn.Sequential(DiffStride2d(2.0), SpectralPool2d(2.0), DiffStride2d([1.0, 4.0]))
    penalty = diffstride_penalty(model)
    # learnable layers only: 1/4 after the first; 1/4 · 1/4 · 1/4 after the third
    assert penalty.item() == pytest.approx(0.25 + 0.25 * 0.25 * 0.25)
    penalty.backward()
    assert model[0].strides.grad.item() == pytest.approx(-2 * 0.25 / 2.0 - 2 * 0.25 ** 3 / 2.0)
    assert diffstride_penalty(torch.nn.Linear(2, 2)).item() == 0


def test_bad_construction_and_input():
    with pytest.raises(ValueError, match="stride"):
        DiffStride2d(0.5)
    with pytest.raises(ValueError, match="stride"):
        DiffStride1d([2.0, 2.0])
    with pytest.raises(ValueError, match="4-D input"):
        DiffStride2d(2.0)(torch.randn(2, 3, 16))


def test_non_finite_strides_smoothness_and_lower_bound_are_rejected_at_construction():
    for kwargs, match in ((dict(stride=float("nan")), "stride"), (dict(stride=float("inf")), "stride"),
                          (dict(stride=2.0, smoothness=0.0), "smoothness"),
                          (dict(stride=2.0, smoothness=float("nan")), "smoothness"),
                          (dict(stride=0.5, lower_bound=0.25), "lower_bound")):
        with pytest.raises(ValueError, match=match):
            DiffStride1d(**kwargs)
    with pytest.raises(ValueError, match="takes 2 input size"):
        DiffStride2d(2.0).output_size(17)


def test_strides_given_as_a_tensor():
    torch.testing.assert_close(DiffStride2d(torch.tensor([2.0, 3.0])).strides, torch.tensor([2.0, 3.0]))
    torch.testing.assert_close(DiffStride1d(torch.tensor(2.5)).strides, torch.tensor([2.5]))
    with pytest.raises(ValueError, match="stride: expected 1 value or 2"):
        DiffStride2d(torch.tensor([2.0, 3.0, 4.0]))
