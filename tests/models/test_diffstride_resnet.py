"""ResNet-18 with DiffStride downsampling: shapes, shared pooling in the shortcut, baselines."""
import pytest
import torch

from pyaudiok.models import resnet18_diffstride
from pyaudiok.nn import DiffStride2d, diffstride_penalty, learned_strides

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("pooling", ["diffstride", "spectral", "conv"])
def test_image_model_shapes_and_gradients(pooling):
    model = resnet18_diffstride(5, width=4, pooling=pooling)
    x = torch.randn(2, 3, 32, 32)
    logits = model(x)
    assert logits.shape == (2, 5)
    (logits.sum() + diffstride_penalty(model)).backward()
    if pooling == "diffstride":
        strides = [m.strides for m in model.modules() if isinstance(m, DiffStride2d)]
        assert len(strides) == 5 and all(s.grad is not None for s in strides)
        assert learned_strides(model) == [[1.0], [1.0], [2.0], [2.0], [2.0]]


def test_shortcut_shares_the_downsampling_layer():
    model = resnet18_diffstride(3, width=4)
    block = model.blocks[2]  # first block of stage 2: downsamples
    seen = []
    hook = block.down.pool.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    model(torch.randn(1, 3, 32, 32))
    hook.remove()
    # main path (after conv1: 8 channels) and shortcut (before its projection: 4), the same map size
    assert len(seen) == 2 and seen[0][2:] == seen[1][2:] == (23, 25)


def test_audio_variant_on_log_mel_frames():
    model = resnet18_diffstride(7, dims=1, in_channels=20, width=4, strides=(1, 1, 3, 2, 3))
    out = model(torch.randn(2, 20, 150))
    assert out.shape == (2, 7)


def test_bad_arguments():
    with pytest.raises(ValueError, match="strides"):
        resnet18_diffstride(10, strides=(1, 2))
    with pytest.raises(ValueError, match="pooling"):
        resnet18_diffstride(10, pooling="max")


def test_non_finite_strides_and_wrong_inputs_are_named():
    with pytest.raises(ValueError, match="strides must be 5 finite values"):
        resnet18_diffstride(3, (1, 1, 2, 2, float("nan")), width=4)
    with pytest.raises(ValueError, match="num_classes"):
        resnet18_diffstride(0, width=4)
    model = resnet18_diffstride(3, width=4)
    with pytest.raises(ValueError, match=r"x must have shape \[B, C, H, W\]"):
        model(torch.randn(1, 3, 16))
    with pytest.raises(ValueError, match="in_channels"):
        model(torch.randn(1, 2, 16, 16))


@pytest.mark.parametrize("pooling", ["diffstride", "spectral", "conv"])
def test_per_axis_stride_pairs(pooling):
    """A 2-D place may take a (height, width) pair: its layer downsamples each axis by its own stride."""
    strides = ((1, 1), 1, (2, 1), (1, 2), 1)
    model = resnet18_diffstride(3, strides, width=4, pooling=pooling)
    sizes = []
    for block in (model.blocks[2], model.blocks[4]):
        block.down.register_forward_hook(lambda m, i, o: sizes.append((tuple(i[0].shape[2:]), tuple(o.shape[2:]))))
    model(torch.randn(1, 3, 32, 32)).sum().backward()
    if pooling == "conv":
        assert sizes == [((32, 32), (16, 32)), ((16, 32), (16, 16))]
    else:
        assert learned_strides(model) == [[1.0, 1.0], [1.0], [2.0, 1.0], [1.0, 2.0], [1.0]]
        (_, (h0, w0)), ((h_in, w_in), (h1, w1)) = sizes
        assert h0 < 32 and w0 == 32 and h1 == h_in and w1 < w_in


def test_per_axis_needs_learnable_two_dimensional_strides():
    for kwargs in (dict(pooling="spectral"), dict(pooling="conv"), dict(dims=1, in_channels=4)):
        with pytest.raises(ValueError, match="per_axis=True .* needs dims=2 and pooling='diffstride'"):
            resnet18_diffstride(3, width=4, per_axis=True, **kwargs)
    model = resnet18_diffstride(3, width=4, per_axis=True)
    assert learned_strides(model) == [[1.0, 1.0], [1.0, 1.0], [2.0, 2.0], [2.0, 2.0], [2.0, 2.0]]
    for strides in (((1, 2, 3), 1, 1, 1, 1), ((1, 0.5), 1, 1, 1, 1), ((1, 2), 1, 1, 1)):
        with pytest.raises(ValueError, match="strides must be 5 finite values >= 1 or"):
            resnet18_diffstride(3, strides, width=4)
    with pytest.raises(ValueError, match=r"strides must be 5 finite values >= 1 \(stem"):  # pairs are 2-D only
        resnet18_diffstride(3, ((2, 2),) * 5, width=4, dims=1, in_channels=4)


def test_input_of_another_dtype_than_the_model_is_named():
    with pytest.raises(TypeError, match=r"x must have the model's dtype \(float32\); got float64"):
        resnet18_diffstride(3, width=4)(torch.randn(1, 3, 16, 16, dtype=torch.float64))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast casts per op: its dtype is fine too
        assert resnet18_diffstride(3, width=4)(torch.randn(1, 3, 16, 16, dtype=torch.bfloat16)).shape == (1, 3)
