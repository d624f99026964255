"""Second-order gradients (create_graph=True, e.g. a gradient penalty) through every differentiable op:
each fused backend either gives the reference's second-order gradients or raises an error that names
the op and points to the reference backend. Never a silently wrong or missing second-order term."""
import math

import pytest
import torch

import pyaudiok
from pyaudiok import dispatch, ops

from .harness import device_for, rel_error, require_backend


def _rand(*shape, low=None):
    t = torch.randn(*shape, dtype=torch.float64)
    return t if low is None else low + t.abs()


def _angles(B, M, dims):
    a = 50 * torch.rand(B, 1, M, dims // 2, dtype=torch.float64)
    return a.cos(), a.sin()


def _gabor(window):
    def case():
        F = 3
        eta = torch.rand(F, dtype=torch.float64) * math.pi
        sigma = 2 + 10 * torch.rand(F, dtype=torch.float64)
        pool = 0.1 + 0.3 * torch.rand(F, dtype=torch.float64)
        return (lambda x, e, s, p: ops.gabor_pool(x, e, s, p, window=window, stride=7),
                [_rand(2, 2 * window), eta, sigma, pool])
    return case


def _token_attention():
    return (lambda q, rows, tokens, cos, sin: ops.token_attention(q, rows, tokens, cos, sin, 4, 2),
            [_rand(2, 2, 5, 8), _rand(2 * 2 * 5, 8)], [torch.randint(0, 5, (2, 12)), *_angles(2, 12, 4)])


def _gather_rows():
    return (lambda rows, index, cos, sin: ops.gather_rows_rotary(rows, index, cos, sin, 4), [_rand(6, 8)],
            [torch.randint(0, 6, (2, 3, 7)), *_angles(2, 7, 4)])


def _split_heads():
    return (lambda x, cos, sin: ops.split_heads_rotary(x, 3, 2, cos, sin, 4, 2), [_rand(2, 7, 3 * 2 * 8)],
            list(_angles(2, 7, 4)))


def _collar_vad():
    return (lambda logits, reference, order: ops.collar_vad_loss(logits, reference, order, collar_frames=2.0),
            [_rand(2, 2, 40)], [(torch.rand(2, 3, 40) > 0.5).double(), torch.tensor([[0, 2], [1, -1]])])


def _distance_nll():
    return (lambda h, table, alpha, targets: ops.distance_nll(h, table, targets, alpha=alpha),
            [_rand(9, 5), _rand(7, 5), torch.tensor(0.7, dtype=torch.float64)], [torch.randint(0, 7, (9, 2))])


def _reorder():
    return (lambda logits, x, mask: ops.reorder_channels(logits, x, mask)[0], [_rand(2, 3, 5), _rand(2, 5, 11)],
            [torch.tensor([[True, True, False, True, True], [True] * 5])])


def _sinkhorn(backward):
    return (lambda cost: ops.sinkhorn(cost, eps=0.5, n_iters=30, tol=None, backward=backward),
            [_rand(2, 5, 6).abs()])


def _rvq():
    def quantize(x, codebooks):
        result = ops.residual_vq(x, codebooks)
        return torch.cat([result.quantized.flatten(), result.commit_loss.flatten()])
    return quantize, [_rand(13, 4), _rand(3, 6, 4)]


# name: (the dispatcher's op, a function of fresh inputs -> (fn, the differentiable inputs[, constants])): fn
# takes the inputs, then the constants (indices, masks, rotary angles: on the run's device, floats in its dtype).
CASES = {
    "residual_vq": ("residual_vq", _rvq),
    "rvq_decode": ("rvq_decode", lambda: (lambda cb, codes: ops.rvq_decode(codes, cb), [_rand(3, 6, 4)],
                                          [torch.randint(0, 6, (13, 3))])),
    "si_sdr_matrix": ("si_sdr_matrix", lambda: (ops.si_sdr_matrix, [_rand(2, 3, 50), _rand(2, 2, 50)])),
    "collar_vad_loss": ("collar_vad_loss", _collar_vad),
    "distance_logsumexp": ("distance_logsumexp", lambda: (
        lambda h, table, alpha: ops.distance_logsumexp(h, table, alpha=alpha),
        [_rand(9, 5), _rand(7, 5), torch.tensor(0.7, dtype=torch.float64)])),
    "distance_nll": ("distance_logsumexp", _distance_nll),
    "reorder_channels": ("reorder_channels", _reorder),
    "latent_cross_attention": ("latent_cross_attention", lambda: (
        ops.latent_cross_attention, [_rand(2, 2, 5, 16), _rand(2, 2, 19, 16), _rand(2, 2, 19, 16)])),
    "token_attention": ("token_attention", _token_attention),
    "gather_rows_rotary": ("gather_rows_rotary", _gather_rows),
    "split_heads_rotary": ("split_heads_rotary", _split_heads),
    "fourier_crop fft": ("fourier_crop", lambda: (
        lambda x, s: ops.fourier_crop(x, s, method="fft"), [_rand(2, 3, 9, 11), torch.tensor([1.7, 2.2],
                                                                                          dtype=torch.float64)])),
    "fourier_crop matmul": ("fourier_crop", lambda: (
        lambda x, s: ops.fourier_crop(x, s, method="matmul"), [_rand(2, 3, 9, 11), torch.tensor([1.7, 2.2],
                                                                                             dtype=torch.float64)])),
    "soft_rank": ("soft_rank", lambda: (ops.soft_rank, [_rand(3, 7)])),
    "soft_sort kl": ("soft_sort", lambda: (lambda x: ops.soft_sort(x, regularization="kl"), [_rand(3, 7)])),
    "sinkhorn unroll": ("sinkhorn", lambda: _sinkhorn("unroll")),
    "sinkhorn implicit": ("sinkhorn", lambda: _sinkhorn("implicit")),
    "log_sinkhorn_normalize": ("sinkhorn", lambda: (lambda x: ops.log_sinkhorn_normalize(x, n_iters=10),
                                                    [_rand(2, 5, 5)])),
    "bilinear_contrastive_loss": ("bilinear_contrastive_loss", lambda: (
        ops.bilinear_contrastive_loss, [_rand(6, 4), _rand(6, 4), _rand(4, 4)])),
    "gabor_pool tiled": ("gabor_pool", _gabor(31)),
    "gabor_pool fft": ("gabor_pool", _gabor(129)),
    "pcen": ("pcen", lambda: (ops.pcen, [_rand(2, 3, 20, low=0.01), 0.5 + 0.4 * torch.rand(3, dtype=torch.float64),
                                         _rand(3, low=0.5), _rand(3, low=1.0),
                                         0.05 + 0.3 * torch.rand(3, dtype=torch.float64)])),
    "group_norm_film_prelu": ("group_norm_film_prelu", lambda: (
        lambda x, prelu, weight, bias, scale, shift: ops.group_norm_film_prelu(
            x, 2, prelu, weight=weight, bias=bias, scale=scale, shift=shift),
        [_rand(2, 4, 9), _rand(4), _rand(4), _rand(4), _rand(2, 4), _rand(2, 4)])),
}


def _on(tensor, device, dtype):
    return tensor.to(device, dtype) if tensor.is_floating_point() else tensor.to(device)


def _second_order(fn, inputs, constants, backend, dtype, device, weights):
    """∂/∂input of ⟨∂⟨w, fn⟩/∂inputs, v⟩ for each input on its own (a gradient penalty's second-order
    terms; a penalty with respect to one input is a common case), None where the penalty is a constant."""
    leaves = [t.to(device, dtype).requires_grad_() for t in inputs]
    with pyaudiok.use_backend(backend):
        out = fn(*leaves, *(_on(c, device, dtype) for c in constants))
        w, v = weights
        grads = torch.autograd.grad((out * w.to(device, dtype)).sum(), leaves, create_graph=True, allow_unused=True)
        penalty = sum((g * vi.to(device, dtype)).sum() for g, vi in zip(grads, v) if g is not None)
        if not torch.is_tensor(penalty) or not penalty.requires_grad:
            return None
        return [torch.autograd.grad(penalty, leaf, allow_unused=True, retain_graph=True)[0] for leaf in leaves]


@pytest.mark.parametrize("backend", ("cpu", "triton"))
@pytest.mark.parametrize("case", list(CASES))
def test_second_order_gradients_match_the_reference_or_raise(case, backend):
    op_name, make = CASES[case]
    op = dispatch.op(op_name)
    dtype = torch.float32
    device = require_backend(op, backend, dtype)
    fn, inputs, *constants = make()
    constants = constants[0] if constants else []
    out = fn(*inputs, *constants)
    weights = (torch.randn(out.shape, dtype=torch.float64), [torch.randn_like(t) for t in inputs])
    want = _second_order(fn, inputs, constants, "reference", torch.float64, torch.device("cpu"), weights)
    if want is None:  # the gradients are constants (straight-through, linear in the weights)
        want = [torch.zeros_like(t) for t in inputs]
    try:
        got = _second_order(fn, inputs, constants, backend, dtype, device, weights)
    except RuntimeError as error:
        assert "not differentiable again" in str(error) and "reference" in str(error), error
        return
    if got is None:
        assert all(w is None or w.norm() == 0 for w in want), \
            f"{case}/{backend}: the gradients lost their graph (the penalty is a constant)"
        return
    for i, (g, w) in enumerate(zip(got, want)):
        if g is None and w is None:
            continue
        g = torch.zeros_like(w) if g is None else g.cpu().double()
        w = torch.zeros_like(g) if w is None else w
        if w.norm() == 0:
            assert g.norm() <= 1e-4, f"{case}/{backend}: input {i} has a second-order term the reference lacks"
        else:
            assert rel_error(g, w) < 2e-3, f"{case}/{backend}: input {i}'s second-order gradient is wrong"


def test_cases_cover_every_differentiable_public_op():
    covered = {name.split()[0] for name in CASES}
    no_gradient = {"kmeans", "ot_pseudo_labels", "fourier_crop_output_size"}
    built_on_covered = {"pit_si_sdr", "neg_si_sdr_loss", "sinkhorn_rank", "sinkhorn_sort", "soft_sort",
                        "proportion_loss"}  # via si_sdr_matrix, sinkhorn, the same kernels; plain PyTorch
    public = {name for name in ops.__all__ if callable(getattr(ops, name)) and not isinstance(getattr(ops, name), type)}
    assert public - covered - no_gradient - built_on_covered == set()
    assert device_for("cpu").type == "cpu"
