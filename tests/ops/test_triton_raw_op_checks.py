"""The raw Triton ops (torch.ops.pyaudiok.*_triton, the launchers in kernels/) called directly: any
memory layout gives the result of the contiguous input, and shapes that do not agree raise a
ValueError naming the argument, instead of reading out of bounds. Tiny shapes (Triton's interpreter
off a GPU), on the device Triton runs on (a GPU's when there is one)."""
import importlib

import pytest
import torch
from torch.testing import assert_close

from ..harness import device_for

pytest.importorskip("triton")


def _on_triton_device(args: list) -> list:
    """args with their tensors moved to where the Triton backend runs (the inputs are built on the CPU)."""
    device = device_for("triton")
    return [a.to(device) if isinstance(a, torch.Tensor) else a for a in args]


def _module(name):
    return importlib.import_module(f"pyaudiok.ops.{name}")


def _op(module: str, register: str = "_triton_forward"):
    """A module's raw Triton op, through its own registration (fake and autograd included)."""
    return lambda: getattr(_module(module), register)()


def _kmeans():
    kmeans = _module("kmeans")
    return kmeans.triton_op("kmeans_lloyd_triton", "kmeans", "lloyd", kmeans._register_fake)


def _fourier(field):
    return lambda: getattr(_module("fourier_crop")._triton_kernels(), field)


def transposed(x):
    """x's values, its last two dims transposed in memory."""
    return x.transpose(-1, -2).contiguous().transpose(-1, -2)


def strided(x):
    """x's values, every other element of a buffer twice as long along the last dim."""
    wide = x.new_zeros(*x.shape[:-1], 2 * x.shape[-1])
    wide[..., ::2] = x
    return wide[..., ::2]


def _outputs(out):
    return [t for t in (out if isinstance(out, (tuple, list)) else (out,)) if isinstance(t, torch.Tensor)]


def _si_sdr():
    return [torch.randn(2, 3, 40), torch.randn(2, 4, 40), True, 1e-8]


def _latent():
    return [torch.randn(1, 2, 6, 16), torch.randn(1, 2, 10, 16), torch.randn(1, 2, 10, 16), None, 0.25, None]


def _pcen():
    params = torch.stack([torch.full((6,), 0.98), torch.full((6,), 2.0), torch.full((6,), 2.0),
                          torch.full((6,), 0.025)])
    return [torch.randn(2, 6, 40).abs(), params, 1e-6]


def _gnfp():
    return [torch.randn(2, 6, 9), torch.randn(2, 6), torch.randn(2, 6), torch.rand(6), 3, 1e-5]


def _sinkhorn():
    return [torch.rand(2, 5, 6), torch.randn(2, 5).log_softmax(-1), torch.randn(2, 6).log_softmax(-1), 0.5, 20,
            0.0, False]


def _gabor():
    return [torch.randn(2, 50), torch.randn(9, 5), torch.randn(9, 5), torch.rand(9, 5), 2, 1e-5]


def _collar():
    return [torch.randn(2, 3, 50), (torch.rand(2, 2, 50) > 0.5).float(), torch.tensor([[0, 1, -1], [1, -1, 0]]), 2.0]


# (id, op, inputs, position of the input given in another layout, that layout)
LAYOUTS = [
    ("si_sdr estimates", _op("si_sdr", "_triton_matrix_op"), _si_sdr, 0, transposed),
    ("latent_attention k", _op("latent_attention"), _latent, 1, transposed),
    ("latent_attention v", _op("latent_attention"), _latent, 2, transposed),
    ("bilinear_contrastive x", _op("bilinear_contrastive"), lambda: [torch.randn(6, 8), torch.randn(6, 8), True],
     0, transposed),
    ("soft_sort_rank x", _op("soft_rank"), lambda: [torch.randn(4, 7), 0.5, False, True, False], 0, transposed),
    ("pcen E", _op("pcen"), _pcen, 0, transposed),
    ("pcen params", _op("pcen"), _pcen, 1, transposed),
    ("group_norm_film_prelu x", _op("group_norm_film_prelu"), _gnfp, 0, transposed),
    ("group_norm_film_prelu gain", _op("group_norm_film_prelu"), _gnfp, 1, transposed),
    ("kmeans x", _kmeans, lambda: [torch.randn(2, 50, 4), torch.randn(2, 3, 4), 3], 0, transposed),
    ("reorder_channels x", _op("reorder_channels"),
     lambda: [torch.randn(2, 3, 4), torch.randn(2, 4, 10), None], 1, transposed),
    ("distance_logsumexp h", _op("distance_logsumexp"),
     lambda: [torch.randn(7, 5), torch.randn(9, 5), torch.tensor(0.5), False], 0, transposed),
    ("sinkhorn cost", _op("sinkhorn"), _sinkhorn, 0, transposed),
    ("gabor_pool x", _op("gabor_pool"), _gabor, 0, strided),
    ("collar_vad logits", _op("collar_vad"), _collar, 0, transposed),
    ("fourier_crop_matrix mask", _fourier("matrix"), lambda: [torch.randn(5), 16, 9], 0, strided),
    ("fourier_mask_crop spectrum", _fourier("mask_crop"),
     lambda: [torch.randn(2, 5, 9, 2), torch.randn(3), torch.randn(4)], 0, lambda x: strided(x.mT).mT),
]


@pytest.mark.parametrize("case", LAYOUTS, ids=[c[0] for c in LAYOUTS])
def test_any_layout_gives_the_contiguous_result(case):
    _, op, make, position, layout = case
    args = _on_triton_device(make())
    expected = op()(*args)
    args[position] = layout(args[position])
    assert not args[position].is_contiguous()
    for got, want in zip(_outputs(op()(*args)), _outputs(expected)):
        assert got.is_contiguous()
        assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_bilinear_contrastive_backward_takes_a_strided_gradient():
    x, y, g = _on_triton_device([torch.randn(6, 8), torch.randn(6, 8), torch.rand(6)])
    lse = _op("bilinear_contrastive")()(x, y, False)[2]
    backward = _module("bilinear_contrastive")._triton_backward()
    for got, want in zip(backward(strided(g), transposed(x), y, lse), backward(g, x, y, lse)):
        assert_close(got, want, rtol=1e-6, atol=1e-6)


def _with(make, position, value):
    def build():
        args = make()
        args[position] = value(args) if callable(value) else value
        return args
    return build


_pcen_params = lambda args: args[1]  # noqa: E731

# (id, op, inputs with one that does not fit, the name the error gives)
MISMATCHES = [
    ("si_sdr T", _op("si_sdr", "_triton_matrix_op"), _with(_si_sdr, 1, torch.randn(2, 4, 39)), "references"),
    ("si_sdr B", _op("si_sdr", "_triton_matrix_op"), _with(_si_sdr, 1, torch.randn(3, 4, 40)), "references"),
    ("latent_attention M < N", _op("latent_attention"),
     _with(_with(_latent, 1, torch.randn(1, 2, 4, 16)), 2, torch.randn(1, 2, 4, 16)), "k"),
    ("latent_attention v rows", _op("latent_attention"), _with(_latent, 2, torch.randn(1, 2, 7, 16)), "v"),
    ("latent_attention key_lengths", _op("latent_attention"), _with(_latent, 3, torch.tensor([3, 4])),
     "key_lengths"),
    ("bilinear_contrastive y rows", _op("bilinear_contrastive"),
     lambda: [torch.randn(6, 8), torch.randn(5, 8), True], "y"),
    ("pcen params F - 1", _op("pcen"), _with(_pcen, 1, lambda a: a[1][:, :5]), "params"),
    ("pcen params one row", _op("pcen"), _with(_pcen, 1, lambda a: a[1][:1]), "params"),
    ("group_norm_film_prelu gain C - 1", _op("group_norm_film_prelu"), _with(_gnfp, 1, torch.randn(2, 5)), "gain"),
    ("group_norm_film_prelu offset B + 1", _op("group_norm_film_prelu"), _with(_gnfp, 2, torch.randn(3, 6)),
     "offset"),
    ("group_norm_film_prelu prelu [2]", _op("group_norm_film_prelu"), _with(_gnfp, 3, torch.rand(2)),
     "prelu_weight"),
    ("group_norm_film_prelu num_groups 4", _op("group_norm_film_prelu"), _with(_gnfp, 4, 4), "num_groups"),
    ("collar_vad order [B, 1]", _op("collar_vad"), _with(_collar, 2, torch.zeros(2, 1, dtype=torch.int64)),
     "order"),
    ("fourier_crop_matrix mask short", _fourier("matrix"), lambda: [torch.randn(2), 16, 9], "mask"),
    ("fourier_crop_matrix mask long", _fourier("matrix"), lambda: [torch.randn(9), 16, 9], "mask"),
    ("fourier_crop_matrix n_out > n_in", _fourier("matrix"), lambda: [torch.randn(5), 4, 8], "n_out"),
    ("fourier_mask_crop rows > H", _fourier("mask_crop"),
     lambda: [torch.randn(2, 5, 9, 2), torch.randn(12), torch.randn(4)], "mask_rows"),
    ("fourier_mask_crop cols > F", _fourier("mask_crop"),
     lambda: [torch.randn(2, 5, 9, 2), torch.randn(3), torch.randn(10)], "mask_cols"),
    ("kmeans centroids B", _kmeans, lambda: [torch.randn(2, 50, 4), torch.randn(3, 3, 4), 3], "centroids"),
    ("kmeans centroids d", _kmeans, lambda: [torch.randn(2, 50, 4), torch.randn(2, 3, 5), 3], "centroids"),
    ("reorder_channels C", _op("reorder_channels"), lambda: [torch.randn(2, 3, 4), torch.randn(2, 5, 10), None],
     "x"),
    ("distance_logsumexp d", _op("distance_logsumexp"),
     lambda: [torch.randn(7, 5), torch.randn(9, 4), torch.tensor(0.5), False], "table"),
    ("sinkhorn log_a", _op("sinkhorn"), _with(_sinkhorn, 1, torch.zeros(2, 3)), "log_a"),
    ("gabor_pool windows W", _op("gabor_pool"), _with(_gabor, 3, torch.rand(8, 5)), "windows"),
    ("gabor_pool stride 0", _op("gabor_pool"), _with(_gabor, 4, 0), "stride"),
]


@pytest.mark.parametrize("case", MISMATCHES, ids=[c[0] for c in MISMATCHES])
def test_mismatched_shapes_raise_naming_the_argument(case):
    _, op, make, name = case
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        op()(*_on_triton_device(make()))


# (id, op, inputs with a wrong dtype or value, the error type, the name the error gives)
BAD_VALUES = [
    ("group_norm_film_prelu x int", _op("group_norm_film_prelu"),
     _with(_gnfp, 0, torch.zeros(2, 6, 9, dtype=torch.int32)), TypeError, "x"),
    ("group_norm_film_prelu gain float64", _op("group_norm_film_prelu"),
     _with(_gnfp, 1, torch.randn(2, 6, dtype=torch.float64)), TypeError, "gain"),
    ("group_norm_film_prelu eps 0", _op("group_norm_film_prelu"), _with(_gnfp, 5, 0.0), ValueError, "eps"),
    ("group_norm_film_prelu eps nan", _op("group_norm_film_prelu"), _with(_gnfp, 5, float("nan")), ValueError, "eps"),
]


@pytest.mark.parametrize("case", BAD_VALUES, ids=[c[0] for c in BAD_VALUES])
def test_wrong_dtypes_and_values_raise_naming_the_argument(case):
    _, op, make, error, name = case
    with pytest.raises(error, match=rf"^{name}\b"):
        op()(*_on_triton_device(make()))


@pytest.mark.parametrize("bad_end, same_as", [(100, "one block"), (-1, "singletons")])
def test_soft_rank_backward_clamps_malformed_blocks(bad_end, same_as):
    """A block end past the row is read as the row's end, one before the block's start as the start
    itself: in bounds, and the gradient of that partition."""
    if same_as == "one block":
        partition = torch.full((4, 7), 6, dtype=torch.int32)
    else:
        partition = torch.arange(7, dtype=torch.int32).expand(4, 7).contiguous()
    x, grad, bad, partition = _on_triton_device([torch.randn(4, 7), torch.randn(4, 7),
                                                 torch.full((4, 7), bad_end, dtype=torch.int32), partition])
    out, perm, _ = _op("soft_rank")()(x, 0.5, False, True, False)
    backward = _module("soft_rank")._triton_backward()
    got = backward(grad, x, out, perm, bad, 0.5, False, True, False)
    assert_close(got, backward(grad, x, out, perm, partition, 0.5, False, True, False), rtol=0, atol=0)
