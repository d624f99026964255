"""Scratch test for kernels/rvq.py under the Triton interpreter (CPU, small shapes).

Run: TRITON_INTERPRET=1 python -m pytest tests/ops/_scratch_triton_rvq.py -q
"""

import os

os.environ["TRITON_INTERPRET"] = "1"  # must precede the triton import

import itertools

import pytest
import torch

from kernels.rvq import _launch_decode, _launch_forward, rvq_decode, rvq_forward

Q = 3
NS = [0, 1, 37, 130]
DS = [3, 16, 20]
KS = [5, 64, 100]
# (block_n, block_k): None -> the GPU defaults; 16/16 exercises many programs and K chunks.
BLOCKS = [(None, None), (16, 16)]


def ref_forward(x, codebooks, n_q):
    N, D = x.shape
    r = x.float()
    acc = torch.zeros(N, D, dtype=torch.float32)
    codes = torch.empty(N, n_q, dtype=torch.int64)
    sqerr = torch.empty(n_q, dtype=torch.float32)
    gaps = torch.empty(N, n_q, dtype=torch.float32)  # best-vs-second-best score gap
    for q in range(n_q):
        C = codebooks[q].float()
        score = (C * C).sum(-1)[None, :] - 2 * (r @ C.T)
        k = torch.argmin(score, dim=1)
        two = torch.topk(score, min(2, C.shape[0]), dim=1, largest=False).values
        gaps[:, q] = two[:, 1] - two[:, 0] if C.shape[0] > 1 else float("inf")
        codes[:, q] = k
        acc = acc + C[k]
        r = r - C[k]
        sqerr[q] = (r * r).sum()
    return acc.to(x.dtype), codes, sqerr, gaps


def ref_from_codes(x, codebooks, codes):
    """quantized/sqerr implied by the given codes (reference arithmetic)."""
    r = x.float()
    acc = torch.zeros_like(r)
    sqerr = torch.empty(codes.shape[1], dtype=torch.float32)
    for q in range(codes.shape[1]):
        cw = codebooks[q].float()[codes[:, q]]
        acc = acc + cw
        r = r - cw
        sqerr[q] = (r * r).sum()
    return acc.to(x.dtype), sqerr


def ref_decode(codes, codebooks, weights):
    acc = torch.zeros(codes.shape[0], codebooks.shape[2], dtype=torch.float32)
    for q in range(codes.shape[1]):
        cw = codebooks[q].float()[codes[:, q]]
        acc = acc + (cw if weights is None else weights[q] * cw)
    return acc.to(codebooks.dtype)


def _forward(x, cb, n_q, blocks):
    if blocks == (None, None):
        return rvq_forward(x, cb, n_q)
    return _launch_forward(x, cb, n_q, block_n=blocks[0], block_k=blocks[1])


@pytest.mark.parametrize("blocks", BLOCKS)
@pytest.mark.parametrize("N,D,K", list(itertools.product(NS, DS, KS)))
def test_integer_inputs_exact(N, D, K, blocks):
    """Integer-valued data: fp32 is exact, ties are real -> everything must match exactly."""
    g = torch.Generator().manual_seed(N * 10007 + D * 101 + K)
    x = torch.randint(-4, 5, (N, D), generator=g).float()
    cb = torch.randint(-4, 5, (Q, K, D), generator=g).float()
    for n_q in range(1, Q + 1):
        quant, codes, sqerr = _forward(x, cb, n_q, blocks)
        r_quant, r_codes, r_sqerr, _ = ref_forward(x, cb, n_q)
        assert codes.dtype == torch.int64 and codes.shape == (N, n_q)
        assert quant.dtype == x.dtype and quant.shape == (N, D)
        assert sqerr.dtype == torch.float32 and sqerr.shape == (n_q,)
        assert torch.equal(codes, r_codes)
        assert torch.equal(quant, r_quant)
        assert torch.equal(sqerr, r_sqerr)
        assert torch.equal(rvq_decode(codes, cb, None), quant)


@pytest.mark.parametrize("blocks", BLOCKS)
@pytest.mark.parametrize("N,D,K", [(37, 16, 100), (130, 20, 64), (130, 3, 5), (1, 20, 100)])
def test_random_normal(N, D, K, blocks):
    g = torch.Generator().manual_seed(1234 + N + D + K)
    x = torch.randn(N, D, generator=g)
    cb = torch.randn(Q, K, D, generator=g)
    n_q = Q
    quant, codes, sqerr = _forward(x, cb, n_q, blocks)
    r_quant, r_codes, r_sqerr, gaps = ref_forward(x, cb, n_q)

    # Codes must equal the reference up to the first stage where the reference is a near-tie.
    ambiguous = (gaps <= 1e-3).to(torch.int64).cummax(dim=1).values.bool()
    assert torch.equal(codes[~ambiguous], r_codes[~ambiguous])
    # quantized / sqerr must be exactly what the kernel's own codes imply (same fp32 ops)...
    c_quant, c_sqerr = ref_from_codes(x, cb, codes)
    assert torch.equal(quant, c_quant)
    torch.testing.assert_close(sqerr, c_sqerr, rtol=1e-5, atol=1e-5)
    # ...and close to the reference.
    if not ambiguous.any():
        torch.testing.assert_close(quant, r_quant, rtol=0, atol=0)
        torch.testing.assert_close(sqerr, r_sqerr, rtol=1e-5, atol=1e-5)

    # decode: unweighted is bitwise the forward's output; weighted is close to the reference.
    assert torch.equal(rvq_decode(codes, cb, None), quant)
    w = torch.rand(n_q, generator=g) + 0.5
    torch.testing.assert_close(rvq_decode(codes, cb, w), ref_decode(codes, cb, w), rtol=1e-6, atol=1e-6)
    # decode of a stage prefix (n_q < Q)
    torch.testing.assert_close(rvq_decode(codes[:, :2].contiguous(), cb, w[:2]), ref_decode(codes[:, :2], cb, w[:2]))


def test_float16_integer_inputs():
    g = torch.Generator().manual_seed(7)
    x = torch.randint(-4, 5, (37, 20), generator=g).half()
    cb = torch.randint(-4, 5, (Q, 100, 20), generator=g).half()
    quant, codes, sqerr = _launch_forward(x, cb, 2, block_n=16, block_k=16)
    r_quant, r_codes, r_sqerr, _ = ref_forward(x, cb, 2)
    assert quant.dtype == torch.float16
    assert torch.equal(codes, r_codes)
    assert torch.equal(quant, r_quant)
    assert torch.equal(sqerr, r_sqerr)
    out = rvq_decode(codes, cb, None)
    assert out.dtype == torch.float16 and torch.equal(out, quant)
    w = torch.tensor([0.5, 2.0])
    assert torch.equal(rvq_decode(codes, cb, w), ref_decode(codes, cb, w))


@pytest.mark.parametrize("block_n", [None, 1, 16])
def test_decode_blocks(block_n):
    g = torch.Generator().manual_seed(3)
    cb = torch.randn(Q, 64, 20, generator=g)
    codes = torch.randint(0, 64, (130, Q), generator=g)
    w = torch.rand(Q, generator=g)
    torch.testing.assert_close(_launch_decode(codes, cb, w, block_n=block_n), ref_decode(codes, cb, w))
    assert torch.equal(_launch_decode(codes, cb, None, block_n=block_n), ref_decode(codes, cb, None))


def test_empty():
    cb = torch.randn(Q, 5, 16)
    quant, codes, sqerr = rvq_forward(torch.empty(0, 16), cb, 2)
    assert quant.shape == (0, 16) and codes.shape == (0, 2) and codes.dtype == torch.int64
    assert torch.equal(sqerr, torch.zeros(2))
    out = rvq_decode(torch.empty(0, 2, dtype=torch.int64), cb, None)
    assert out.shape == (0, 16) and out.dtype == cb.dtype
