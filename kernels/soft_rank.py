"""Triton kernels for soft rank / soft sort by projection onto the permutahedron (PAV).

Public launchers (bodies of ``torch.library.triton_op``; see pyaudiok/ops/soft_rank.py for the
math and the contract of the two raw ops):

* ``soft_sort_rank(x, strength, kl, rank, descending)`` -> ``(out, perm, blocks)``
* ``soft_sort_rank_backward(grad, x, out, perm, blocks, strength, kl, rank, descending)`` -> ``grad_x``

The sort is torch's segmented sort (stable, decreasing key). PAV runs one program per row: a
scalar stack pass (each point pushed once, each merge pops a block: O(n)), block sums in fp32,
then the outputs are written block by block with vector loads and stores. The backward walks
the saved blocks the same way.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import _launch_checks as checks
from .gpu import launchable

BLOCK = 128  # vector width of the per-block output and gradient loops


@triton.jit
def _block_value(sy, sw, KL: tl.constexpr):
    if KL:
        return sy - sw
    else:
        return sy / sw


@triton.jit
def _merge(a, b, KL: tl.constexpr):
    if KL:  # log(e^a + e^b); an infinite larger term is the sum itself (not the NaN of inf - inf)
        hi = tl.maximum(a, b)
        return tl.where(tl.abs(hi) == float("inf"), hi, hi + tl.log(1.0 + tl.exp(tl.minimum(a, b) - hi)))
    else:
        return a + b


@triton.jit
def _pav_forward_kernel(
    s_ptr,  # [R, n] fp32 sorted keys (decreasing)
    perm_ptr,  # [R, n] int64
    out_ptr,  # [R, n] fp32 (out)
    blocks_ptr,  # [R, n] int32 (out)
    start_ptr, sy_ptr, sw_ptr,  # [R, n] scratch: the PAV stack
    n, inv_eps, sign,
    KL: tl.constexpr, RANK: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    base = row * n
    top = n * 0  # blocks on the stack (an int32 scalar tensor)
    for j in range(0, n):
        sj = tl.load(s_ptr + base + j)
        wj = (n - j).to(tl.float32)
        if RANK:
            if KL:
                cy = sj
                cw = tl.log(wj)
            else:
                cy = sj - wj
                cw = wj * 0.0 + 1.0
        else:
            if KL:
                cy = wj * inv_eps
                cw = sj
            else:
                cy = wj * inv_eps - sj
                cw = wj * 0.0 + 1.0
        cstart = j + top * 0
        go = top > 0
        while go:
            k = tl.maximum(top - 1, 0)
            py = tl.load(sy_ptr + base + k)
            pw = tl.load(sw_ptr + base + k)
            pool = (top > 0) & (_block_value(py, pw, KL) <= _block_value(cy, cw, KL))
            cy = tl.where(pool, _merge(py, cy, KL), cy)
            cw = tl.where(pool, _merge(pw, cw, KL), cw)
            cstart = tl.where(pool, tl.load(start_ptr + base + k), cstart)
            top = tl.where(pool, top - 1, top)
            go = pool & (top > 0)
        tl.store(start_ptr + base + top, cstart)
        tl.store(sy_ptr + base + top, cy)
        tl.store(sw_ptr + base + top, cw)
        tl.debug_barrier()
        top += 1

    lanes = tl.arange(0, BLOCK)
    for k in range(0, top):
        begin = tl.load(start_ptr + base + k)
        end = tl.load(start_ptr + base + k + 1, mask=k + 1 < top, other=n)
        v = _block_value(tl.load(sy_ptr + base + k), tl.load(sw_ptr + base + k), KL)
        for c in range(begin, end, BLOCK):
            pos = c + lanes
            ok = pos < end
            tl.store(blocks_ptr + base + pos, end - 1, mask=ok)
            if RANK:
                sj = tl.load(s_ptr + base + pos, mask=ok, other=0.0)
                idx = tl.load(perm_ptr + base + pos, mask=ok, other=0)
                if KL:
                    o = tl.exp(sj - v)
                else:
                    o = sj - v
                tl.store(out_ptr + base + idx, o, mask=ok)
            else:
                tl.store(out_ptr + base + pos, sign * ((n - pos).to(tl.float32) * inv_eps - v), mask=ok)


@triton.jit
def _pav_backward_kernel(
    grad_ptr,  # [R, n] fp32, gradient of out
    s_ptr,  # [R, n] fp32 sorted keys
    out_ptr,  # [R, n] fp32 forward output
    perm_ptr,  # [R, n] int64
    blocks_ptr,  # [R, n] int32
    grad_x_ptr,  # [R, n] fp32 (out)
    n, sign, dz,
    KL: tl.constexpr, RANK: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    base = row * n
    lanes = tl.arange(0, BLOCK)
    begin = n * 0
    while begin < n:
        # Clamped into (begin, n]: a malformed block end can neither read past the row nor stall the walk.
        end = tl.minimum(tl.maximum(tl.load(blocks_ptr + base + begin) + 1, begin + 1), n)
        total = 0.0
        mx = -float("inf")
        for c in range(begin, end, BLOCK):
            j = c + lanes
            ok = j < end
            idx = tl.load(perm_ptr + base + j, mask=ok, other=0)
            if RANK:
                u = tl.load(grad_ptr + base + idx, mask=ok, other=0.0)
                if KL:
                    u = u * tl.load(out_ptr + base + idx, mask=ok, other=0.0)
            else:
                u = sign * tl.load(grad_ptr + base + j, mask=ok, other=0.0)
            total += tl.sum(u, axis=0)
            if KL:
                block_s = tl.where(ok, tl.load(s_ptr + base + j, mask=ok, other=0.0), -float("inf"))
                mx = tl.maximum(mx, tl.max(block_s, axis=0))
        norm = (end - begin).to(tl.float32)
        if KL:
            norm = 0.0
            for c in range(begin, end, BLOCK):
                j = c + lanes
                ok = j < end
                norm += tl.sum(tl.where(ok, tl.exp(tl.load(s_ptr + base + j, mask=ok, other=0.0) - mx), 0.0), axis=0)
            # A +inf key makes the block's LSE +inf: its softmax is exp(s - mx) itself (NaN at the +inf keys,
            # 0 elsewhere), as in the reference; dividing by the NaN sum would spread the NaN over the block.
            norm = tl.where(mx == float("inf"), 1.0, norm)
        for c in range(begin, end, BLOCK):
            j = c + lanes
            ok = j < end
            idx = tl.load(perm_ptr + base + j, mask=ok, other=0)
            if KL:
                soft = tl.exp(tl.load(s_ptr + base + j, mask=ok, other=0.0) - mx) / norm
            else:
                soft = 1.0 / norm
            if RANK:
                u = tl.load(grad_ptr + base + idx, mask=ok, other=0.0)
                if KL:
                    u = u * tl.load(out_ptr + base + idx, mask=ok, other=0.0)
                gs = u - total * soft
            else:
                gs = total * soft
            tl.store(grad_x_ptr + base + idx, gs * dz, mask=ok)
        begin = end


def _key(x: Tensor, strength: float, rank: bool, descending: bool) -> tuple[Tensor, float, float]:
    """(z, sign, dz/dx): the key sorted in decreasing order, z = sign * x * scale."""
    sign = (-1.0 if descending else 1.0) if rank else (1.0 if descending else -1.0)
    scale = 1.0 / strength if rank else 1.0
    return x * (sign * scale), sign, sign * scale


def _sorted(x, strength, rank, descending):
    z, sign, dz = _key(x, strength, rank, descending)
    s, perm = torch.sort(z, dim=-1, descending=True, stable=True)
    return s.contiguous(), perm.contiguous(), sign, dz


def soft_sort_rank(x: Tensor, strength: float, kl: bool, rank: bool, descending: bool) -> tuple[Tensor, Tensor, Tensor]:
    R, n = checks.shape("x", x, "[R, n]", None, None)
    x = x.contiguous()
    s, perm, sign, _ = _sorted(x, strength, rank, descending)
    out = torch.empty_like(x)
    blocks = torch.empty(x.shape, dtype=torch.int32, device=x.device)
    if R and n:
        start = torch.empty(x.shape, dtype=torch.int32, device=x.device)
        sy, sw = torch.empty_like(x), torch.empty_like(x)
        launchable(_pav_forward_kernel)[(R,)](
            s, perm, out, blocks, start, sy, sw, n, 1.0 / strength, sign,
            KL=kl, RANK=rank, BLOCK=BLOCK, num_warps=4)
    return out, perm, blocks


def soft_sort_rank_backward(grad: Tensor, x: Tensor, out: Tensor, perm: Tensor, blocks: Tensor, strength: float,
                            kl: bool, rank: bool, descending: bool) -> Tensor:
    """Trusts perm's values (a permutation of each row): the public op checks them. A block end out of
    range is clamped into the row, so a malformed `blocks` gives wrong numbers, never an out-of-bounds
    access."""
    R, n = checks.shape("x", x, "[R, n]", None, None)
    for name, t in (("grad", grad), ("out", out), ("perm", perm), ("blocks", blocks)):
        checks.shape(name, t, "[R, n]", R, n)
        checks.device(name, t, x)
    checks.dtype("perm", perm, (torch.int64,))
    checks.dtype("blocks", blocks, (torch.int32,))
    x, out, perm, blocks = checks.dense(x, out, perm, blocks)
    z, sign, dz = _key(x, strength, rank, descending)
    s = torch.gather(z, 1, perm).contiguous()
    grad_x = torch.empty_like(x)
    if R and n:
        launchable(_pav_backward_kernel)[(R,)](
            grad.float().contiguous(), s, out, perm, blocks, grad_x, n, sign, dz,
            KL=kl, RANK=rank, BLOCK=BLOCK, num_warps=4)
    return grad_x
