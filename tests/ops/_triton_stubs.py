"""@triton.jit stand-ins for kernel callees, swapped in by tests to show a code path runs (interpreter only)."""
import triton
import triton.language as tl  # noqa: F401  (a jit function's module must import it)


@triton.jit
def latent_fwd_block_adding_nothing(acc, l_i, m_i, q, K, V, IDX, b, Mk, start, end, d, qk_scale, HAS_IDX, BLOCK_N, D,
                                    PREC):
    """kernels.latent_attention._fwd_block_overlapped's signature; leaves the running softmax as it is."""
    return acc, l_i, m_i


@triton.jit
def latent_fwd_ws_kernel_seeing_nothing(Q, K, V, KL, O, LSE, H, N, M, kv_chunk, qk_scale, HAS_KL: tl.constexpr,
                                        WARP_SPECIALIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                                        D: tl.constexpr, PREC: tl.constexpr):
    """kernels.latent_attention._fwd_ws_kernel's signature; every part as if its rows saw no key."""
    bh = tl.program_id(1).to(tl.int64)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    at = (tl.program_id(2) * tl.num_programs(1) + bh) * N + rows
    d = tl.arange(0, D)
    tl.store(O + at[:, None] * D + d[None, :], tl.zeros([BLOCK_M, D], tl.float32), mask=(rows < N)[:, None])
    tl.store(LSE + at, tl.full([BLOCK_M], float("-inf"), tl.float32), mask=rows < N)
