"""Benchmark of bottom-right causal latent cross-attention (DESIGN §1), forward + backward, at
Perceiver AR's size (CPU: M = 16 384, N = 1024, H = 8, d = 64; GPU: M = 65 536, bf16; B = 1),
against the reference, every backend, the peers PyTorch SDPA with `causal_lower_right` (its CPU
flash kernel; on a GPU the flash kernels it picks, and SDPA held to its memory-efficient and to its
cuDNN backend) and `flex_attention` with the same mask, and the speed floor:
plain matmuls doing the same multiply-adds (the visible part of QKᵀ and PV; 3.5 times as many with
the backward), in the attention's own shapes and, as the machine's matmul peak, in one large GEMM
(x floor ≤ 2 is ≥ 50 % of that peak). Both count every row at full length.

`latent_attn.lengths` runs B = 2 rows with different key_lengths; its SDPA peer gets the per-row
mask materialised, which is what SDPA needs for it. On a GPU the backward cases also time the
Triton backend with dQ added atomically by the dK/dV kernel (`kernels.latent_attention.DQ_MODE`),
and every GPU case its forward with lazy rescaling (`FORWARD_RESCALE`) and with the overlapped loop
(`FORWARD_LOOP`): schemes that are not the default until they measure faster. `latent_attn.decode`
times the sampling step's attention (one query over 8 192 keys) against SDPA, with a decode tile as
a candidate."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right

from pyaudiok import backends
from pyaudiok.ops.latent_attention import OP, latent_cross_attention, visible_mask

from .harness import Candidate, Case, backend_candidates, relative_error, with_backend, with_settings

H, D = 8, 64
SIZES = {"cpu": (1024, 16384), "cuda": (1024, 65536)}       # (N, M)
QUICK = {"cpu": (256, 4096), "cuda": (1024, 16384)}
DTYPE = {"cpu": torch.float32, "cuda": torch.bfloat16}


def _inputs(B, N, M, device, dtype, grad):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, S, D, generator=gen).to(device, dtype).requires_grad_(grad) for S in (N, M, M))
    return q, k, v


def _step(fn, q, k, v, backward):
    """fn() once; with backward, backpropagate a fixed weight and clear the gradients."""
    weight = torch.randn(q.shape, generator=torch.Generator().manual_seed(1)).to(q.device, q.dtype)

    def run():
        out = fn()
        if backward:
            (out * weight).sum().backward()
            q.grad = k.grad = v.grad = None
            return None
        return out.detach()
    return run


_check = relative_error()


def sdpa_on(backend, q, k, v, mask):
    """SDPA with its choice limited to `backend` (a torch.nn.attention.SDPBackend); a backend that
    cannot run the call raises (the harness reports it as failed)."""
    from torch.nn.attention import sdpa_kernel
    with sdpa_kernel(backend):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _sdpa_backend_peers(q, k, v, mask, backward, check) -> list[Candidate]:
    """SDPA held to each GPU backend it does not pick by itself for causal_lower_right (it picks
    flash, the plain peer): SDPA's best backend is the bar. The memory-efficient kernels have a
    bottom-right causal mode; cuDNN's does not, so SDPA gives it the mask materialised."""
    from torch.nn.attention import SDPBackend
    return [Candidate(f"torch SDPA causal_lower_right, {label} only", "peer",
                      _step(lambda backend=backend: sdpa_on(backend, q, k, v, mask), q, k, v, backward), check=check)
            for label, backend in (("memory-efficient", SDPBackend.EFFICIENT_ATTENTION),
                                   ("cuDNN", SDPBackend.CUDNN_ATTENTION))]


def _flex(q, k, v, lengths, backward):
    if backward and q.device.type == "cpu":
        return None, "flex_attention has no backward on the CPU"
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError as e:
        return None, f"flex_attention unavailable: {e}"
    N, M = q.shape[2], k.shape[2]
    L = torch.tensor(lengths if lengths is not None else [M] * q.shape[0], device=q.device)

    def mask_mod(b, h, j, i):
        return (i <= L[b] - N + j) & (i < L[b])
    try:
        block_mask = create_block_mask(mask_mod, q.shape[0], None, N, M, device=q.device)
        compiled = torch.compile(flex_attention, dynamic=False)
        return (lambda: compiled(q, k, v, block_mask=block_mask)), None
    except Exception as e:  # no compiler toolchain, unsupported here: a skip, not a crash
        return None, f"flex_attention failed: {type(e).__name__}: {e}"[:160]


def _visible_work(q, k, backward) -> tuple[float, int]:
    """(mean keys a query sees, matmuls over them): the floors' share of the op's multiply-adds,
    every row at full length. Forward: QKᵀ, PV; the backward adds QKᵀ again, dP, dV, dK, dQ."""
    N, M = q.shape[2], k.shape[2]
    return M - N + (N + 1) / 2, 7 if backward else 2


def _floor(q, k, backward):
    """Matmuls with the multiply-adds of the visible scores (QKᵀ and PV), at the op's dtype."""
    B, _, N, _ = q.shape
    visible_cols, matmuls = _visible_work(q, k, backward)
    width = int(visible_cols) // 64 * 64
    a = torch.randn(B * H * N, D, device=q.device, dtype=q.dtype)
    b = torch.randn(D, width, device=q.device, dtype=q.dtype)
    c = torch.randn(width, D, device=q.device, dtype=q.dtype)

    def run():
        s = a @ b
        for i in range(matmuls // 2):
            s @ c if i % 2 == 0 else a @ b
        if matmuls % 2:
            s @ c
    return run


def _peak_floor(q, k, backward):
    """One [4096, K] × [K, 4096] GEMM at the op's dtype, K chosen for the multiply-adds of _floor:
    the rate the machine's matmuls reach when nothing but the GEMM is in the way."""
    B, _, N, _ = q.shape
    visible_cols, matmuls = _visible_work(q, k, backward)
    macs = B * H * N * D * visible_cols * matmuls
    side = 4096
    inner = max(64, round(macs / side ** 2 / 64) * 64)
    a = torch.randn(side, inner, device=q.device, dtype=q.dtype)
    b = torch.randn(inner, side, device=q.device, dtype=q.dtype)
    out = torch.empty(side, side, device=q.device, dtype=q.dtype)
    return lambda: torch.mm(a, b, out=out)


KERNELS = "kernels.latent_attention."  # the Triton kernels' module, for with_settings


def _triton_variants(ours, backward: bool) -> list[Candidate]:
    """The Triton backend under the kernel settings that are not the default until they measure
    faster (pyaudiok.kernels.latent_attention): the forward's lazy rescaling and overlapped loop, the
    backward's atomic dQ (alone and with each forward setting)."""
    triton_step = with_backend("triton", ours)
    forward = {"lazy rescale": {KERNELS + "FORWARD_RESCALE": "lazy"},
               "overlapped loop": {KERNELS + "FORWARD_LOOP": "overlapped"}}
    atomic = {KERNELS + "DQ_MODE": "atomic"}
    check = None if backward else _check
    cands = [Candidate(f"triton, {name}", "backend", with_settings(triton_step, settings), check=check)
             for name, settings in forward.items()]
    if backward:
        cands.append(Candidate("triton, atomic dQ", "backend", with_settings(triton_step, atomic)))
        cands += [Candidate(f"triton, {name} + atomic dQ", "backend",
                            with_settings(triton_step, {**settings, **atomic})) for name, settings in forward.items()]
    return cands


def attention_case(device, N, M, backward, lengths=None) -> Case:
    B = 1 if lengths is None else len(lengths)
    dtype = DTYPE[device.type]
    q, k, v = _inputs(B, N, M, device, dtype, backward)
    name = ("latent_attn.fwd+bwd" if backward else "latent_attn.fwd") + (".lengths" if lengths else "")
    ours = _step(lambda: latent_cross_attention(q, k, v, key_lengths=lengths), q, k, v, backward)
    check = None if backward else _check
    cands = []
    if device.type == "cpu" and M * N * B * H <= 2**26:  # the reference's [N, M] scores must fit
        cands.append(Candidate("reference", "reference", with_backend("reference", ours)))
    else:
        cands.append(Candidate("reference", "reference", None, skip="the [N, M] score matrix is too large here"))
    cands += backend_candidates(OP, device, dtype, (q, k, v, None, D ** -0.5, None),
                                lambda b: with_backend(b, ours), check)
    if device.type == "cuda" and backends.triton_reason(device) is None:
        cands += _triton_variants(ours, backward)
    if lengths is None:
        mask = causal_lower_right(N, M)
    else:  # SDPA has no per-row lengths: a materialised [B, 1, N, M] mask
        mask = visible_mask(N, M, torch.tensor(lengths), device)
    cands.append(Candidate("torch SDPA causal_lower_right" if lengths is None else "torch SDPA (row masks)", "peer",
                           _step(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask), q, k, v, backward),
                           check=check))
    if lengths is None and device.type == "cuda":
        cands += _sdpa_backend_peers(q, k, v, mask, backward, check)
    if lengths is not None:  # the cost the per-row path is held to: every row at full length
        full = causal_lower_right(N, M)
        cands.append(Candidate("torch SDPA causal_lower_right (rows full)", "peer",
                               _step(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=full), q, k, v,
                                     backward)))
    flex, reason = _flex(q, k, v, lengths, backward)
    cands.append(Candidate("torch flex_attention (compiled)", "peer",
                           _step(flex, q, k, v, backward) if flex else None, skip=reason, check=check))
    cands.append(Candidate("floor: matmuls of the visible scores", "floor", _floor(q, k, backward)))
    cands.append(Candidate("floor: one GEMM, same MACs (peak)", "floor", _peak_floor(q, k, backward)))
    params = {"B": B, "H": H, "N": N, "M": M, "d": D, "dtype": str(dtype).replace("torch.", "")}
    if lengths is not None:
        params["key_lengths"] = list(lengths)
    return Case(name, params, cands)


# Perceiver AR's cached sampling step (`PerceiverAR.cached_step`): one new latent over the window's
# keys, at the bench's model size (12 heads of 64), batch 4.
DECODE = dict(B=4, H=12, N=1, M=8192)


def _decode_tiles(splits: int):
    """launch_forward with a 16-query tile (tl.dot's smallest) and `splits` key ranges: a decode
    candidate to time against the default tiles (128 queries, splits of >= 1 024 keys), which spend
    127 of 128 rows on nothing when N = 1."""
    from pyaudiok.kernels import latent_attention as kernels

    from .tile_sweep import tiles_fixed

    def launch(q, k, v):
        tiles = kernels._tiles(q.shape[-1], q.dtype, q.device)
        with tiles_fixed(kernels, (kernels._Tile(16, 64, 4, 3),) + tuple(tiles[1:])):
            return kernels.launch_forward(q, k, v, None, q.shape[-1] ** -0.5, None, splits=splits)[0]
    return launch


def decode_case(device: torch.device) -> Case:
    """Forward of one query row over M keys (no mask: the new latent sees every key): the sampling
    step's attention, against SDPA (its decode kernels) and one read of K and V."""
    B, Hd, N, M = DECODE["B"], DECODE["H"], DECODE["N"], DECODE["M"]
    dtype = DTYPE[device.type]
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, Hd, S, D, generator=gen).to(device, dtype) for S in (N, M, M))
    ours = lambda: latent_cross_attention(q, k, v)  # noqa: E731
    cands = [Candidate("reference", "reference", with_backend("reference", ours), check=_check)]
    cands += backend_candidates(OP, device, dtype, (q, k, v, None, D ** -0.5, None), lambda b: with_backend(b, ours),
                                _check)
    if device.type == "cuda" and backends.triton_reason(device) is None:
        for splits in (8, 32):
            launch = _decode_tiles(splits)
            cands.append(Candidate(f"triton, 16-query tile, {splits} key splits", "backend",
                                   lambda launch=launch: launch(q, k, v), check=_check))
    cands.append(Candidate("torch SDPA", "peer", lambda: F.scaled_dot_product_attention(q, k, v), check=_check))
    cands.append(Candidate("floor: one read of K and V", "floor", lambda: (k.sum(), v.sum())))
    return Case("latent_attn.decode", {**DECODE, "d": D, "dtype": str(dtype).replace("torch.", "")}, cands)


def cases(device: torch.device, quick: bool) -> list[Case]:
    N, M = (QUICK if quick else SIZES)[device.type]
    # Row lengths: one full, one with 3/4 of the keys (odd, so no block edge is aligned).
    lengths = [M, 3 * M // 4 + 1]
    return [attention_case(device, N, M, backward=False), attention_case(device, N, M, backward=True),
            attention_case(device, N, M, backward=True, lengths=lengths), decode_case(device)]
