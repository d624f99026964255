"""Bottom-right causal latent cross-attention: every backend against the reference."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.attention.bias import causal_lower_right

import pyaudiok
from pyaudiok.ops import latent_cross_attention
from pyaudiok.ops.latent_attention import OP, latent_attention_reference

from ..harness import (assert_close, compare_with_reference, forward_opcheck_tests, opcheck, poisoned_outputs,
                       require_backend, threads)

BACKENDS = ("cpu", "triton")

CASES = [  # (B, H, N, M, d, key_lengths): odd sizes, square, padded rows, rows with no visible key
    (2, 2, 37, 101, 16, None),
    (1, 3, 17, 17, 32, None),              # M = N: square causal self-attention
    (3, 1, 20, 45, 32, [45, 10, 0]),       # L < N: early queries see nothing; L = 0: no key at all
    (2, 2, 19, 50, 16, [30, 19]),
    (1, 1, 1, 33, 16, None),
    (2, 1, 32, 70, 16, [70, 40]),          # N a multiple of every query tile: the backward's row checks off
]


def _inputs(B, H, N, M, d, device, dtype=torch.float32, grad=True):
    q, k, v = (torch.randn(B, H, S, d, dtype=torch.float64).to(device, dtype) for S in (N, M, M))
    return [x.requires_grad_(grad) for x in (q, k, v)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("B,H,N,M,d,lengths", CASES)
def test_forward_and_gradients_match_reference(backend, B, H, N, M, d, lengths):
    device = require_backend(OP, backend)
    q, k, v = _inputs(B, H, N, M, d, device)
    compare_with_reference(lambda q, k, v: latent_cross_attention(q, k, v, key_lengths=lengths), (q, k, v), backend)


def test_cpu_backend_in_float64():
    require_backend(OP, "cpu", torch.float64)
    q, k, v = _inputs(2, 2, 23, 70, 24, "cpu", torch.float64)
    compare_with_reference(lambda q, k, v: latent_cross_attention(q, k, v, key_lengths=[70, 9], scale=0.3),
                           (q, k, v), "cpu")


@pytest.mark.parametrize("n_threads,B,M,lengths", [(1, 1, 1100, None), (2, 1, 1100, None), (4, 2, 1100, [1100, 613]),
                                                    (2, 1, 300, None), (2, 2, 600, [600, 300])])
def test_cpu_kernel_blocks_and_key_splits(n_threads, B, M, lengths):
    """The C++ kernel's block edges under the tiles chosen by shape: queries in blocks of 128 or 256
    (keys mostly before the queries) or of 37 (square: N/8), one to five key blocks, a key_lengths
    cut inside a block, the backward's key split (one batch·head per thread or fewer), and the
    square causal case (M = N = 300; 300 of 600), where the backward skips the keys after a query
    block's last visible one."""
    require_backend(OP, "cpu", torch.float64)
    q, k, v = _inputs(B, 1, 300, M, 8, "cpu", torch.float64)
    with threads(n_threads):
        compare_with_reference(lambda q, k, v: latent_cross_attention(q, k, v, key_lengths=lengths), (q, k, v),
                               "cpu")


@pytest.mark.parametrize("tile", [(1, 7), (16, 48), (37, 512), (128, 512), (256, 256), (300, 1024)])
def test_cpu_kernel_gives_the_same_result_with_any_tile(tile):
    """The raw ops' tuning arguments (query block, key block) change the work's tiling, never the
    result: forward and all three gradients against the reference, bottom-right mask and a length
    cut crossing the blocks."""
    require_backend(OP, "cpu", torch.float64)
    q, k, v = _inputs(2, 2, 60, 200, 16, "cpu", torch.float64)
    lengths = torch.tensor([200, 77])
    out, lse = torch.ops.pyaudiok.latent_attention_forward(q.detach(), k.detach(), v.detach(), lengths, 0.25, *tile)
    ref = latent_attention_reference(q, k, v, lengths, 0.25)
    grad = torch.randn_like(ref)
    ref.backward(grad)
    dq, dk, dv = torch.ops.pyaudiok.latent_attention_backward(grad, q.detach(), k.detach(), v.detach(), out, lse,
                                                              lengths, 0.25, *tile)
    for name, got, want in (("out", out, ref), ("dq", dq, q.grad), ("dk", dk, k.grad), ("dv", dv, v.grad)):
        assert_close(name, got, want, torch.float64)


@pytest.mark.parametrize("d", [8, 20, 64, 72, 136])
@pytest.mark.parametrize("tile", [(1, 7), (1, 512)])
def test_cpu_kernel_single_query_rows(d, tile):
    """A block of one query (a sampling step) takes the kernel's dot-product path instead of its GEMMs:
    float32 against the float64 reference, at head dims that leave 64- and 8-channel remainders and
    key blocks that are not multiples of four, with a length cut."""
    require_backend(OP, "cpu")
    q, k, v = _inputs(2, 3, 5, 203, d, "cpu", torch.float64, grad=False)
    lengths = torch.tensor([203, 77])
    out, _ = torch.ops.pyaudiok.latent_attention_forward(q.float(), k.float(), v.float(), lengths, d ** -0.5, *tile)
    assert_close("out", out, latent_attention_reference(q, k, v, lengths, d ** -0.5), torch.float32)


def test_cpu_kernel_aten_gemm_fallback():
    """The kernel's GEMM through at::addmm_out (used where torch exports no Fortran BLAS) agrees."""
    require_backend(OP, "cpu")
    code = ("import torch, pyaudiok; from pyaudiok.ops import latent_cross_attention as f; "
            "from pyaudiok.ops.latent_attention import latent_attention_reference as r; torch.manual_seed(0); "
            "q, k, v = (torch.randn(2, 2, 150, 8, dtype=torch.float64) for _ in range(3)); "
            "k, v = torch.cat((k, k), 2), torch.cat((v, v), 2); L = torch.tensor([300, 200]); "
            "g = torch.randn(2, 2, 150, 8, dtype=torch.float64); "
            "ours = torch.autograd.functional.vjp(lambda *x: f(*x, key_lengths=L), (q, k, v), g); "
            "ref = torch.autograd.functional.vjp(lambda *x: r(*x, L), (q, k, v), g); "
            "print(max(float((a - b).abs().max()) for a, b in zip((ours[0],) + ours[1], (ref[0],) + ref[1])))")
    env = dict(os.environ, PYAUDIOK_ATTENTION_GEMM="aten", PYAUDIOK_BACKEND="cpu")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout.strip()) < 1e-10


@settings(max_examples=8, deadline=None)
@given(N=st.integers(1, 40), extra=st.integers(0, 60), d=st.sampled_from([16, 32]), B=st.integers(1, 3),
       data=st.data())
def test_generated_shapes(N, extra, d, B, data):
    M = N + extra
    lengths = data.draw(st.one_of(st.none(), st.lists(st.integers(0, M), min_size=B, max_size=B)))
    backend = data.draw(st.sampled_from(BACKENDS))
    device = require_backend(OP, backend)
    q, k, v = _inputs(B, 2, N, M, d, device)
    compare_with_reference(lambda q, k, v: latent_cross_attention(q, k, v, key_lengths=lengths), (q, k, v), backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_dropout_keep_gathers_kept_keys(backend):
    device = require_backend(OP, backend)
    B, H, N, M, d = 2, 2, 12, 60, 16
    q, k, v = _inputs(B, H, N, M, d, device)
    # Keep a random half of each row's prefix and all of its last N keys.
    keep = torch.stack([torch.cat([torch.randperm(M - N)[:20].sort().values, torch.arange(M - N, M)])
                        for _ in range(B)]).to(device)
    out, _ = compare_with_reference(
        lambda q, k, v: latent_cross_attention(q, k, v, dropout_keep=keep, key_lengths=[32, 25]), (q, k, v), backend)
    # Same thing as attending the gathered keys.
    idx = keep[:, None, :, None].expand(B, H, keep.shape[1], d)
    gathered = latent_attention_reference(q, k.gather(2, idx), v.gather(2, idx), torch.tensor([32, 25]))
    assert_close("gathered", out[0], gathered.double(), torch.float32)


class _RecordedLaunches:
    """A stand-in for kernels.gpu.launchable: `launchable(kernel, **options)[grid](...)` records the
    kernel's name and its tensor arguments, and launches nothing."""

    def __init__(self):
        self.kernels, self.tensors = [], []

    def __call__(self, kernel, **options):
        self.kernel = kernel
        return self

    def __getitem__(self, grid):
        return self.record

    def record(self, *args, **kwargs):
        self.kernels.append(self.kernel.__name__)
        self.tensors += [a for a in args if isinstance(a, torch.Tensor)]


@pytest.mark.parametrize("settings", [{}, {"FORWARD_LOOP": "overlapped"}, {"DQ_MODE": "atomic"}])
def test_triton_launchers_trace_on_fake_tensors(monkeypatch, settings):
    """The launchers' host code reads no tensor's data (no data pointer) and launches only through
    `launchable`, so torch.compile and opcheck can trace them on fake tensors (which have no data):
    forward and backward, with lengths and with kept keys, split over key ranges (the merge), under
    each loop and dQ mode. Traced, every argument is the tracer's: none of the tensors that eager
    calls keep for absent arguments."""
    pytest.importorskip("triton")
    from torch._subclasses.fake_tensor import FakeTensor
    from torch.fx.experimental.proxy_tensor import make_fx

    from pyaudiok.kernels import latent_attention as kernels
    launches = _RecordedLaunches()
    monkeypatch.setattr(kernels, "launchable", launches)
    for name, value in settings.items():
        monkeypatch.setattr(kernels, name, value)

    def forward_and_backward(q, k, v, lengths, keep):
        out, lse = kernels.launch_forward(q, k, v, lengths, 0.25, keep, splits=2)
        return (out, lse, *kernels.launch_backward(torch.ones_like(out), q, k, v, out, lse, lengths, 0.25, keep,
                                                   splits=2))
    q, k, v = _inputs(2, 2, 8, 24, 16, "cpu", grad=False)
    lengths, keep = torch.tensor([24, 5]), torch.arange(2, 24).expand(2, 22).contiguous()
    forward_and_backward(q, k, v, None, None)  # eagerly: the kept tensors for absent arguments exist
    for kl, kp in ((None, None), (lengths, None), (None, keep)):
        launches.kernels.clear()
        launches.tensors.clear()
        graph = make_fx(forward_and_backward, tracing_mode="fake")(q, k, v, kl, kp)
        assert all(isinstance(t, FakeTensor) for t in launches.tensors)
        shapes = [tuple(node.meta["val"].shape) for node in graph.graph.find_nodes(op="output")[0].args[0]]
        assert shapes == [(2, 2, 8, 16), (2, 2, 8), (2, 2, 8, 16), (2, 2, 24, 16), (2, 2, 24, 16)]
        dq_pass = [] if settings.get("DQ_MODE") == "atomic" else ["_bwd_dq_kernel"]
        assert launches.kernels == ["_fwd_kernel", "_merge_kernel", "_bwd_prep_kernel", "_bwd_dkdv_kernel", *dq_pass]


def test_triton_split_kv_forward():
    device = require_backend(OP, "triton")
    from pyaudiok.kernels.latent_attention import launch_forward
    for lengths in (None, torch.tensor([90, 5, 0])):
        q, k, v = _inputs(3, 2, 21, 90, 32, device, grad=False)
        ref = latent_attention_reference(q.double(), k.double(), v.double(), lengths)
        kl = None if lengths is None else lengths.to(device)
        with poisoned_outputs():
            out, lse = launch_forward(q, k, v, kl, 32 ** -0.5, None, splits=3)
            single, lse1 = launch_forward(q, k, v, kl, 32 ** -0.5, None, splits=1)
        assert_close("split-KV output", out, ref, torch.float32)
        torch.testing.assert_close(out, single)
        torch.testing.assert_close(lse, lse1)


def test_triton_split_kv_backward():
    """dQ split over key ranges (the parts summed) equals the unsplit pass and the reference."""
    device = require_backend(OP, "triton")
    from pyaudiok.kernels.latent_attention import launch_backward, launch_forward
    for lengths in (None, torch.tensor([90, 5, 0])):
        q, k, v = _inputs(3, 2, 21, 90, 32, device)
        kl = None if lengths is None else lengths.to(device)
        grad = torch.randn_like(q)
        ref = latent_attention_reference(q.double(), k.double(), v.double(), lengths)
        want = torch.autograd.grad(ref, (q, k, v), grad.double())
        with torch.no_grad(), poisoned_outputs():
            out, lse = launch_forward(q, k, v, kl, 32 ** -0.5, None)
            split = launch_backward(grad, q, k, v, out, lse, kl, 32 ** -0.5, None, splits=3)
            single = launch_backward(grad, q, k, v, out, lse, kl, 32 ** -0.5, None, splits=1)
        for name, a, b, w in zip(("dq", "dk", "dv"), split, single, want):
            assert_close(f"split-KV {name}", a, w.double(), torch.float32)
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("B,H,N,M,d,lengths", CASES[:4])
def test_triton_atomic_dq_backward_matches_reference(monkeypatch, B, H, N, M, d, lengths):
    """DQ_MODE "atomic": dQ added by the dK/dV kernel (no dQ pass) gives the reference's gradients,
    also with gathered keys (cross-attend dropout) and rows that see no key."""
    device = require_backend(OP, "triton")
    from pyaudiok.kernels import latent_attention as kernels
    monkeypatch.setattr(kernels, "DQ_MODE", "atomic")
    monkeypatch.setattr(kernels, "_bwd_dq_kernel", None)  # the dQ pass must not run
    q, k, v = _inputs(B, H, N, M, d, device)
    compare_with_reference(lambda q, k, v: latent_cross_attention(q, k, v, key_lengths=lengths), (q, k, v), "triton")
    keep = torch.stack([torch.cat([torch.randperm(M - N)[:(M - N) // 2].sort().values, torch.arange(M - N, M)])
                        for _ in range(B)]).to(device)
    compare_with_reference(lambda q, k, v: latent_cross_attention(q, k, v, dropout_keep=keep), (q, k, v), "triton")


FORWARD_VARIANTS = {  # the forward's settings that are not the default, and what each changes
    "lazy rescale": ("FORWARD_RESCALE", "lazy"),     # a stale running max while no row's grew by > 2^8
    "overlapped loop": ("FORWARD_LOOP", "overlapped"),  # block j + 1's QK^T before block j's PV product
}


@pytest.mark.parametrize("variant", FORWARD_VARIANTS)
@pytest.mark.parametrize("B,H,N,M,d,lengths", CASES)
def test_triton_forward_variants_match_reference(monkeypatch, variant, B, H, N, M, d, lengths):
    """Each forward variant's out, lse and the gradients (from that lse) are the reference's, also
    with gathered keys (cross-attend dropout)."""
    device = require_backend(OP, "triton")
    from pyaudiok.kernels import latent_attention as kernels
    monkeypatch.setattr(kernels, *FORWARD_VARIANTS[variant])
    q, k, v = _inputs(B, H, N, M, d, device)
    compare_with_reference(lambda q, k, v: latent_cross_attention(q, k, v, key_lengths=lengths), (q, k, v), "triton")
    if M > N:
        keep = torch.stack([torch.cat([torch.randperm(M - N)[:(M - N) // 2].sort().values, torch.arange(M - N, M)])
                            for _ in range(B)]).to(device)
        compare_with_reference(lambda q, k, v: latent_cross_attention(q, k, v, dropout_keep=keep), (q, k, v),
                               "triton")


def test_triton_overlapped_loop_runs_its_unmasked_blocks(monkeypatch):
    """The overlapped loop runs its own code over the unmasked blocks, one block and many: with that
    code replaced by a stand-in that adds nothing, the output changes (so the variant tests above
    test it). Interpreter only: a compiled kernel's callees cannot be swapped."""
    device = require_backend(OP, "triton")
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("swaps a @triton.jit function, which only the interpreter resolves at each call")
    from pyaudiok.kernels import latent_attention as kernels

    from . import _triton_stubs
    monkeypatch.setattr(kernels, *FORWARD_VARIANTS["overlapped loop"])
    for M in (40, 200):  # 16-key tiles in the interpreter: unmasked ranges of 1 and of 11 blocks
        q, k, v = _inputs(1, 1, 16, M, 16, device, grad=False)
        with pyaudiok.use_backend("triton"):
            out = latent_cross_attention(q, k, v)
            with monkeypatch.context() as patch:
                patch.setattr(kernels, "_fwd_block_overlapped", _triton_stubs.latent_fwd_block_adding_nothing)
                without_it = latent_cross_attention(q, k, v)
        assert_close("out", out.double().cpu(), latent_attention_reference(q.cpu(), k.cpu(), v.cpu()).double(),
                     torch.float32)
        assert (without_it - out).abs().max() > 1e-2, M


@pytest.mark.parametrize("variant", [None, *FORWARD_VARIANTS])
@pytest.mark.parametrize("N,lengths", [(256, None), (200, [700, 333])])
def test_triton_at_the_gpu_tiles_in_the_interpreter(monkeypatch, variant, N, lengths):
    """The kernels at the tiles a GPU launch of 16-bit d = 64 uses (128-query forward tiles, the
    dK/dV kernel's 32 queries by 128 keys, ...) and split over 3 key ranges, in the interpreter:
    the block arithmetic the small interpreter tiles do not reach (whole-block loops of 64 keys, the
    row checks off at N = 256 and on at 200)."""
    device = require_backend(OP, "triton")
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("on a GPU every test runs these tiles")
    from pyaudiok.kernels import latent_attention as kernels
    gpu_tiles = kernels._tiles(64, torch.bfloat16, torch.device("cuda"))
    monkeypatch.setattr(kernels, "_tiles", lambda D, dtype, device: gpu_tiles)
    monkeypatch.setattr(kernels, "choose_splits", lambda programs, Mk, device: 3)
    if variant is not None:
        monkeypatch.setattr(kernels, *FORWARD_VARIANTS[variant])
    q, k, v = _inputs(2, 1, N, 700, 64, device)
    compare_with_reference(lambda q, k, v: latent_cross_attention(q, k, v, key_lengths=lengths), (q, k, v), "triton")


@pytest.mark.parametrize("settings,message", [
    ({"FORWARD_LOOP": "pipelined"}, "FORWARD_LOOP must be 'sequential' or 'overlapped'; got 'pipelined'"),
    ({"FORWARD_LOOP": "warp_specialized"}, "FORWARD_LOOP must be 'sequential' or 'overlapped'"),
    ({"FORWARD_LOOP": "overlapped", "FORWARD_RESCALE": "lazy"},
     "FORWARD_LOOP 'overlapped' .* FORWARD_RESCALE 'always'"),
])
def test_triton_forward_loop_is_checked(monkeypatch, settings, message):
    from pyaudiok.kernels import latent_attention as kernels
    for name, value in settings.items():
        monkeypatch.setattr(kernels, name, value)
    with pytest.raises(ValueError, match=message):
        kernels.forward_loop()


def test_triton_lazy_rescale_rescales_when_a_max_jumps(monkeypatch):
    """Scores that grow by ~45 (log2 units) from one key block to the next, in float16: the lazy loop
    must rescale on those blocks, or its probabilities (2^45 above a stale max) overflow float16."""
    device = require_backend(OP, "triton", torch.float16)
    from pyaudiok.kernels import latent_attention as kernels
    monkeypatch.setattr(kernels, "FORWARD_RESCALE", "lazy")
    N, M, d = 16, 80, 16
    direction = torch.nn.functional.normalize(torch.randn(d, dtype=torch.float64), dim=0)
    q = direction.expand(1, 1, N, d) + 0.01 * torch.randn(1, 1, N, d, dtype=torch.float64)
    k = (2.0 * torch.arange(M, dtype=torch.float64))[None, None, :, None] * direction  # score ~ 2i
    v = torch.randn(1, 1, M, d, dtype=torch.float64)
    want = latent_attention_reference(q, k, v, scale=1.0)
    with pyaudiok.use_backend("triton"):  # the forward only: these keys' dQ is ill-conditioned in float16
        out = latent_cross_attention(*(x.to(device, torch.float16) for x in (q, k, v)), scale=1.0)
    assert_close("out", out.double().cpu(), want, torch.float16)
    monkeypatch.setattr(kernels, "FORWARD_RESCALE", "sometimes")
    with pytest.raises(ValueError, match="FORWARD_RESCALE must be 'always' or 'lazy'; got 'sometimes'"):
        kernels.forward_rescale()


def test_triton_dq_mode_is_checked_and_deterministic_mode_keeps_the_dq_pass(monkeypatch):
    from pyaudiok.kernels import latent_attention as kernels
    monkeypatch.setattr(kernels, "DQ_MODE", "atomic")
    assert kernels.dq_mode() == "atomic"
    monkeypatch.setattr(torch, "are_deterministic_algorithms_enabled", lambda: True)
    assert kernels.dq_mode() == "separate"  # atomics add in a varying order
    monkeypatch.setattr(kernels, "DQ_MODE", "fast")
    with pytest.raises(ValueError, match="DQ_MODE must be 'separate' or 'atomic'; got 'fast'"):
        kernels.dq_mode()


def test_triton_fp32_runs_on_tensor_cores():
    """fp32 dots are 3xTF32 (fp32-accurate), TF32 only where PyTorch's matmuls may use TF32: never
    the FMA fallback, which spills registers on the GPU."""
    pytest.importorskip("triton")
    from pyaudiok.kernels.latent_attention import _precision
    old = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        assert _precision(torch.float32) == "tf32x3"
        torch.backends.cuda.matmul.allow_tf32 = True
        assert _precision(torch.float32) == "tf32"
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def test_triton_split_count_fills_the_gpu(monkeypatch):
    """Few query tiles over long key ranges are split until the launch fills every SM (up to two
    CTAs each); enough tiles, short ranges or the interpreter are never split."""
    pytest.importorskip("triton")
    from pyaudiok.kernels import latent_attention as kernels
    monkeypatch.setattr(kernels, "_sm_count", lambda device: 132)
    cuda = torch.device("cuda", 0)
    assert kernels.choose_splits(64, 65536, cuda) == 4      # N = 1024, 8 heads: 256 CTAs, one wave
    assert kernels.choose_splits(128, 65536, cuda) == 2
    assert kernels.choose_splits(264, 65536, cuda) == 1
    assert kernels.choose_splits(64, 1500, cuda) == 1
    assert kernels.choose_splits(64, 65536, torch.device("cpu")) == 1
    hits = kernels._fewest_waves.cache_info().hits
    assert kernels.choose_splits(64, 65536, cuda) == 4 and kernels._fewest_waves.cache_info().hits == hits + 1
    monkeypatch.setattr(kernels, "_sm_count", lambda device: 66)  # the search's answer is cached per SM count
    assert kernels.choose_splits(64, 65536, cuda) == 2


def test_triton_split_count_under_symbolic_sizes(monkeypatch):
    """A tracer's symbolic sizes (torch.compile with dynamic shapes) get the same split count, past
    the cache of the plain ints' answers."""
    pytest.importorskip("triton")
    from torch.fx.experimental.proxy_tensor import make_fx

    from pyaudiok.kernels import latent_attention as kernels
    monkeypatch.setattr(kernels, "_sm_count", lambda device: 132)
    cuda = torch.device("cuda", 0)
    graph = make_fx(lambda x: x.new_full((), kernels.choose_splits(x.shape[0], x.shape[1] * 1024, cuda)),
                    tracing_mode="symbolic")(torch.zeros(64, 64))
    assert graph(torch.zeros(64, 64)).item() == 4


@pytest.mark.parametrize("backend", ("reference",) + BACKENDS)
def test_bottom_right_semantics(backend):
    """Key i may change query j's output only if i <= L - N + j: perturb each key and look."""
    device = require_backend(OP, backend) if backend != "reference" else torch.device("cpu")
    B, H, N, M, d = 2, 1, 6, 15, 16
    lengths = [15, 9]
    q, k, v = _inputs(B, H, N, M, d, device, grad=False)
    with pyaudiok.use_backend(backend):
        base = latent_cross_attention(q, k, v, key_lengths=lengths)
        for i in range(M):
            k2, v2 = k.clone(), v.clone()
            k2[:, :, i] += 1.0
            v2[:, :, i] += 1.0
            changed = (latent_cross_attention(q, k2, v2, key_lengths=lengths) - base).abs().amax(dim=(1, 3)) > 0
            for b, L in enumerate(lengths):
                expected = torch.tensor([i <= L - N + j and i < L for j in range(N)])
                assert torch.equal(changed[b].cpu(), expected), f"row {b}, key {i}"


def test_reference_is_pytorch_causal_lower_right():
    q, k, v = _inputs(2, 3, 9, 31, 16, "cpu", torch.float64, grad=False)
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(9, 31))
    torch.testing.assert_close(latent_attention_reference(q, k, v), want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rows_without_visible_keys_are_zero(backend):
    device = require_backend(OP, backend)
    q, k, v = _inputs(2, 2, 8, 20, 16, device)
    with pyaudiok.use_backend(backend):
        out = latent_cross_attention(q, k, v, key_lengths=[3, 0])
    out.sum().backward()
    assert torch.equal(out[0, :, :5].cpu(), torch.zeros(2, 5, 16)) and torch.equal(out[1].cpu(), torch.zeros(2, 8, 16))
    assert out[0, :, 5:].abs().min() > 0
    assert torch.equal(q.grad[1].cpu(), torch.zeros(2, 8, 16)) and torch.equal(k.grad[:, :, 3:].cpu(),
                                                                                 torch.zeros(2, 2, 17, 16))
    assert torch.isfinite(q.grad).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_inputs(backend):
    device = require_backend(OP, backend)
    q, k, v = _inputs(2, 3, 10, 40, 16, device, grad=False)
    q, k, v = (x.transpose(1, 2).contiguous().transpose(1, 2).requires_grad_() for x in (q, k, v))
    assert not q.is_contiguous()
    compare_with_reference(lambda q, k, v: latent_cross_attention(q, k, v), (q, k, v), backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_keys_values_shared_by_every_head(backend):
    """k, v broadcast over the heads (stride 0, multi-query style) and a head dim sliced from a wider
    buffer: the gradients to the shared keys sum over the heads, as the reference's do."""
    device = require_backend(OP, backend)
    q = torch.randn(2, 3, 7, 24, device=device)[..., :16].requires_grad_()
    k, v = (torch.randn(2, 1, 30, 16, device=device, requires_grad=True) for _ in range(2))
    compare_with_reference(lambda q, k, v: latent_cross_attention(q, k.expand(2, 3, 30, 16), v.expand(2, 3, 30, 16),
                                                                  key_lengths=[30, 11]), (q, k, v), backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_keys_values_viewed_from_a_larger_cache(backend):
    """k, v as the first M rows of [B, H, capacity, d] buffers (a growing generation cache): the CPU
    forward reads them in place, and every backend gives the reference's result."""
    device = require_backend(OP, backend)
    q, k, v = _inputs(2, 3, 5, 37, 16, device, grad=False)
    k_buf, v_buf = (torch.randn(2, 3, 50, 16, device=device) for _ in range(2))
    k_buf[:, :, :37], v_buf[:, :, :37] = k, v
    k_view, v_view = k_buf[:, :, :37], v_buf[:, :, :37]
    assert not k_view.is_contiguous()
    with pyaudiok.use_backend(backend):
        got = latent_cross_attention(q, k_view, v_view)
    assert_close("out", got, latent_attention_reference(q.double(), k.double(), v.double()), torch.float32)
    if backend == "cpu":  # the raw op takes the views as they are; other strides still get a clear error
        out, _ = torch.ops.pyaudiok.latent_attention_forward(q, k_view, v_view, None, 0.25)
        torch.testing.assert_close(out, latent_attention_reference(q, k, v, scale=0.25))
        with pytest.raises(RuntimeError, match="contiguous rows"):
            torch.ops.pyaudiok.latent_attention_forward(q, k.transpose(2, 3).contiguous().transpose(2, 3), v, None,
                                                        0.25)


@pytest.mark.parametrize("backend", ("reference",) + BACKENDS)
def test_keys_past_the_lengths_are_never_read(backend):
    """A cache's buffers past the filled rows hold whatever memory held (NaN, inf): with key_lengths
    the output and gradients are those of the same call with zeros there."""
    device = require_backend(OP, backend) if backend != "reference" else torch.device("cpu")
    q = torch.randn(2, 2, 4, 16, device=device, requires_grad=True)
    k, v = torch.randn(2, 2, 30, 16, device=device), torch.randn(2, 2, 30, 16, device=device)
    lengths = torch.tensor([9, 30], device=device)
    dirty_k, dirty_v = k.clone(), v.clone()
    dirty_k[0, :, 9:], dirty_v[0, :, 9:] = float("nan"), float("inf")
    with pyaudiok.use_backend(backend):
        out = latent_cross_attention(q, dirty_k, dirty_v, key_lengths=lengths)
        want = latent_cross_attention(q, k, v, key_lengths=lengths)
    torch.testing.assert_close(out, want)
    grad = torch.randn_like(out)
    torch.testing.assert_close(torch.autograd.grad(out, q, grad)[0], torch.autograd.grad(want, q, grad)[0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_inputs_give_nan_where_the_reference_does(backend):
    """A NaN query (all its scores NaN) or key reaches the rows that see it as NaN, not as zeros (a
    row of NaN scores once looked like a row that sees no key)."""
    device = require_backend(OP, backend)
    q = torch.randn(1, 2, 5, 16, device=device)
    k, v = torch.randn(1, 2, 40, 16, device=device), torch.randn(1, 2, 40, 16, device=device)
    q[0, 0, 1, 3] = float("nan")
    k[0, 1, 37, 0] = float("nan")  # seen by the queries j with 37 <= 35 + j: the last three
    with pyaudiok.use_backend(backend):
        out = latent_cross_attention(q, k, v)
    want = latent_attention_reference(q, k, v)
    assert torch.equal(out.isnan(), want.isnan()) and want.isnan().any()
    torch.testing.assert_close(out.nan_to_num(), want.nan_to_num(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", ("reference",) + BACKENDS)
@pytest.mark.parametrize("shape,M", [((0, 2, 4, 8), 6), ((2, 0, 4, 8), 6), ((2, 2, 0, 8), 6), ((2, 2, 0, 8), 0)])
def test_empty(backend, shape, M):
    device = require_backend(OP, backend) if backend != "reference" else torch.device("cpu")
    q = torch.randn(shape, device=device, requires_grad=True)
    k = torch.randn(shape[0], shape[1], M, 16, device=device)[..., :8].requires_grad_()
    v = torch.randn(shape[0], shape[1], M, 8, device=device, requires_grad=True)
    with pyaudiok.use_backend(backend):
        out = latent_cross_attention(q, k, v, key_lengths=[M] * shape[0])
    assert out.shape == shape
    out.sum().backward()
    assert q.grad.shape == shape and k.grad.shape == k.shape and v.grad.shape == v.shape
    assert not k.grad.any() and not v.grad.any()  # no query: nothing flows to the keys


@pytest.mark.parametrize("backend", ("cpu", pytest.param("triton", marks=pytest.mark.gpu)))
@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
@pytest.mark.parametrize("d", (32, 64, 128))
def test_half_precision(backend, dtype, d):
    """Half inputs: Triton's kernels take them as they are, the CPU kernels compute in float32."""
    device = require_backend(OP, backend, dtype)
    q, k, v = _inputs(2, 4, 300, 2000, d, device, dtype)
    out, _ = compare_with_reference(lambda q, k, v: latent_cross_attention(q, k, v, key_lengths=[2000, 1234]),
                                    (q, k, v), backend)
    assert out[0].dtype == dtype


def test_triton_float16_in_the_interpreter():
    """Half inputs through the Triton kernels at the interpreter's small tiles, forward and backward
    (bfloat16 only on a GPU: the interpreter's bfloat16 dot products are not exact)."""
    device = require_backend(OP, "triton", torch.float16)
    q, k, v = _inputs(2, 2, 19, 50, 16, device, torch.float16)
    out, _ = compare_with_reference(lambda q, k, v: latent_cross_attention(q, k, v, key_lengths=[50, 23]),
                                    (q, k, v), "triton")
    assert out[0].dtype == torch.float16


@pytest.mark.gpu
@pytest.mark.parametrize("variant", FORWARD_VARIANTS)
@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
@pytest.mark.parametrize("d", (32, 64, 128))
def test_triton_forward_variants_in_half_precision(monkeypatch, variant, dtype, d):
    """The forward variants at the GPU tiles they are timed at (the interpreter runs float32 at small
    tiles, and a GPU's float32 keeps the sequential loop): as test_half_precision."""
    from pyaudiok.kernels import latent_attention as kernels
    monkeypatch.setattr(kernels, *FORWARD_VARIANTS[variant])
    test_half_precision("triton", dtype, d)




@pytest.mark.parametrize("backend", BACKENDS)
def test_registered_ops_pass_opcheck(backend):
    device = require_backend(OP, backend)
    q, k, v = _inputs(2, 2, 8, 24, 16, device)
    lengths = torch.tensor([24, 5], device=device)
    keep = torch.arange(2, 24, device=device).expand(2, 22).contiguous()
    if backend == "triton":
        from pyaudiok.ops.latent_attention import _triton_backward, _triton_forward
        forward, backward = _triton_forward(), _triton_backward()
    else:
        forward, backward = torch.ops.pyaudiok.latent_attention_cpu, torch.ops.pyaudiok.latent_attention_cpu_backward
    tests = forward_opcheck_tests(backend, device)
    for kl, kp in ((None, None), (lengths, None), (None, keep)):
        opcheck(forward, (q, k, v, kl, 0.25, kp), test_utils=tests)
    # Every key visible to the last query (one flash call on the cpu backend: its gradients come back
    # in ATen's layout unless made contiguous), then per-row lengths; square (M = N) and M > N.
    for kq, kk, kv_, kl in ((q, k, v, None), (q, k, v, lengths), (q, k[:, :, :8], v[:, :, :8], None)):
        out, lse = forward(kq, kk, kv_, kl, 0.25, None)
        opcheck(backward, (torch.randn_like(out), kq.detach(), kk.detach().contiguous(),
                                         kv_.detach().contiguous(), out.detach(), lse.detach(), kl, 0.25, None),
                              test_utils=("test_schema", "test_faketensor"))


def test_cpu_backward_with_dropout_keep_returns_the_fakes_layout():
    """Keys and values as a permuted view (heads split off a [B, M, H·d] projection) with kept keys:
    the scattered gradients are contiguous, as the fake says, so compiled graphs get what they expect."""
    require_backend(OP, "cpu")
    q = torch.randn(2, 2, 5, 8)
    k, v = (torch.randn(2, 13, 2, 8).transpose(1, 2) for _ in range(2))
    keep = torch.tensor([[0, 2, 4, 6, 8, 10], [1, 2, 3, 4, 5, 12]])
    out, lse = torch.ops.pyaudiok.latent_attention_cpu(q, k, v, None, 0.3, keep)
    args = (torch.randn_like(out), q, k, v, out, lse, None, 0.3, keep)
    opcheck(torch.ops.pyaudiok.latent_attention_cpu_backward, args, test_utils=("test_schema", "test_faketensor"))


def test_cpu_backend_under_torch_compile():
    """Forward and backward traced by torch.compile (the fakes must match the real outputs' strides)."""
    require_backend(OP, "cpu")
    q, k, v = _inputs(2, 2, 8, 8, 16, "cpu")  # M = N: the square causal case of the latent blocks
    grad = torch.randn(q.shape, dtype=q.dtype)

    def step(q, k, v):
        with pyaudiok.use_backend("cpu"):
            out = latent_cross_attention(q, k, v)
        return torch.autograd.grad((out * grad).sum(), (q, k, v))

    expected = step(q, k, v)
    compiled = torch.compile(step)(q, k, v)  # inductor: it checks the real strides against the fakes
    for name, a, b in zip("qkv", compiled, expected):
        assert_close(f"d{name}", a, b, torch.float32)


# ---------------------------------------------------------------------------------------------
# Bad input: clear errors naming the argument.

def _good():
    return torch.randn(2, 3, 4, 8), torch.randn(2, 3, 10, 8), torch.randn(2, 3, 10, 8)


@pytest.mark.parametrize("make,kwargs,exc,words", [
    (lambda q, k, v: (q, k[:, :, :3], v[:, :, :3]), {}, ValueError, ["M >= N", "M = 3"]),
    (lambda q, k, v: (q, k[..., :4], v[..., :4]), {}, ValueError, ["k", "[B, H, M, d]"]),
    (lambda q, k, v: (q, k, v[..., :4]), {}, ValueError, ["v", "shape"]),
    (lambda q, k, v: (q, k[:1], v[:1]), {}, ValueError, ["k", "[2, 3, M, 8]"]),
    (lambda q, k, v: (q, k.double(), v), {}, TypeError, ["k", "dtype"]),
    (lambda q, k, v: (q.long(), k, v), {}, TypeError, ["q", "dtype"]),
    (lambda q, k, v: (q[0], k, v), {}, ValueError, ["q", "[B, H, N, d]"]),
    (lambda q, k, v: (q, k.to("meta"), v), {}, ValueError, ["k", "device"]),
    (lambda q, k, v: (q, k, v), {"key_lengths": [10, 11]}, ValueError, ["key_lengths", "[0, 10]"]),
    (lambda q, k, v: (q, k, v), {"key_lengths": [-1, 3]}, ValueError, ["key_lengths"]),
    (lambda q, k, v: (q, k, v), {"key_lengths": [3]}, ValueError, ["key_lengths", "[B] = [2]"]),
    (lambda q, k, v: (q, k, v), {"key_lengths": torch.tensor([3.0, 4.0])}, TypeError, ["key_lengths", "dtype"]),
    (lambda q, k, v: (q, k, v), {"scale": -1.0}, ValueError, ["scale"]),
    (lambda q, k, v: (q, k, v), {"scale": float("inf")}, ValueError, ["scale", "finite"]),
    (lambda q, k, v: (q, k, v), {"scale": torch.tensor(0.5)}, TypeError, ["scale", "Tensor"]),
    (lambda q, k, v: (q, k, v), {"key_lengths": [3.5, 4]}, TypeError, ["key_lengths", "ints"]),
    (lambda q, k, v: (q, k, v), {"key_lengths": "ab"}, TypeError, ["key_lengths"]),
    (lambda q, k, v: (q, k, v), {"dropout_keep": torch.tensor([[0, 1, 2]] * 2)}, ValueError, ["dropout_keep", "M'"]),
    (lambda q, k, v: (q, k, v), {"dropout_keep": torch.tensor([[0, 1, 2, 10]] * 2)}, ValueError,
     ["dropout_keep", "[0, M)"]),
    (lambda q, k, v: (q, k, v), {"dropout_keep": torch.tensor([[0, 2, 1, 3]] * 2)}, ValueError,
     ["dropout_keep", "increasing"]),
])
def test_bad_input_raises_named_error(make, kwargs, exc, words):
    with pytest.raises(exc) as info:
        latent_cross_attention(*make(*_good()), **kwargs)
    for word in words:
        assert word in str(info.value)
