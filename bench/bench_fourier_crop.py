"""Benchmark of Fourier-domain cropping (DESIGN §3), forward + backward to x and the strides:
the reference (rfft → mask → crop → irfft), both implementations (FFT with the fused mask/crop,
separable matmul) on every backend, and as the floor the stride-1 3×3 convolution (C → C) that
precedes the DiffStride layer in a ResNet block: "x floor" < 1 means the pooling costs less than
that convolution. Sizes: ResNet-18 feature maps (B = 128, C = 64…512, 32×32…4×4 on CPU; 224×224
stem sizes on GPU) and 1-D audio (B = 32, C = 64, T = 16 000), stride 2."""
from __future__ import annotations

import torch

from pyaudiok.ops.fourier_crop import FOURIER_CROP, METHODS, fourier_crop

from .harness import Candidate, Case, backend_candidates, compiled, with_backend, with_settings, with_tf32

STRIDE = 2.0
# (B, C, spatial) per device; quick sizes keep the layer shapes with a smaller batch.
SIZES = {
    "cpu": [(128, 64, (32, 32)), (128, 128, (16, 16)), (128, 256, (8, 8)), (128, 512, (4, 4)),
            (32, 64, (16000,))],
    "cuda": [(128, 64, (56, 56)), (64, 64, (112, 112)), (32, 64, (224, 224)), (128, 64, (32, 32)),
             (32, 64, (16000,))],
}
QUICK_BATCH = {"cpu": 8, "cuda": 32}
MATMUL_BENCH_MAX = 1024


def _train_step(x, strides, grad, method=None):
    def run():
        y = fourier_crop(x, strides, method=method)
        y.backward(grad)
        x.grad = strides.grad = None
    return run


def _conv_step(x):
    conv = (torch.nn.Conv2d if x.dim() == 4 else torch.nn.Conv1d)(x.shape[1], x.shape[1], 3, padding=1,
                                                                    bias=False).to(x.device)
    grad = torch.randn_like(x)

    def run():
        conv(x).backward(grad)
        x.grad = None
        conv.weight.grad = None
    return run


def case(device, batch, channels, spatial) -> Case:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, channels, *spatial, generator=gen).to(device).requires_grad_()
    strides = torch.tensor([STRIDE], device=device, requires_grad=True)
    with torch.no_grad():
        grad = torch.randn_like(fourier_crop(x, strides))
    cands = [Candidate("reference", "reference", with_backend("reference", _train_step(x, strides, grad)))]
    for method in METHODS:
        for cand in backend_candidates(FOURIER_CROP, device, x.dtype, (x, strides, 4.0, method, (STRIDE,)),
                                       lambda b: with_backend(b, _train_step(x, strides, grad, method))):
            cand.name = f"{cand.name} {method}"
            if method == "matmul" and max(spatial) > MATMUL_BENCH_MAX and cand.skip is None:
                cand.run, cand.skip = None, (f"[N_out, N] matrices for N = {max(spatial)}: O(N²) memory and "
                                             "O(N³/S) work, not a contender")
            cands.append(cand)
    cands.append(Candidate("auto (dispatch by size)", "backend", _train_step(x, strides, grad)))
    if device.type == "cuda":  # the matmul path's GEMMs are torch's: TF32 where the user allows it,
        # as cuDNN's convolution (the floor) uses it by default
        cands.append(Candidate("auto, TF32 allowed", "backend", with_tf32(_train_step(x, strides, grad))))
        if max(spatial) <= MATMUL_BENCH_MAX:  # the candidate products (3xTF32 Triton GEMMs, no copies)
            cands.append(Candidate("triton matmul, Triton products", "backend", with_settings(
                with_backend("triton", _train_step(x, strides, grad, "matmul")),
                {"ops.fourier_crop.PRODUCTS": "triton"})))
        if len(spatial) == 1:  # the output length 8 009 is prime: cuFFT runs it by Bluestein
            fft_step = with_backend("triton", _train_step(x, strides, grad, "fft"))
            # Rader's convolution as FFTs of 16 128 (7-smooth), or of its cyclic length 8 008 = 2³·7·11·13
            for factors, label in ((7, "padded to 16 128"), (13, "cyclic 8 008")):
                cands.append(Candidate(f"triton fft, Rader transforms {label}", "backend", with_settings(
                    fft_step, {"ops.fourier_crop.PRIME_TRANSFORMS": "rader",
                               "ops._prime_fft.SMOOTH_FACTORS": factors})))
    cands.append(compiled("reference, torch.compile", _train_step(x, strides, grad)))
    cands.append(Candidate("floor: conv3x3 C->C stride 1 (fwd+bwd)", "floor", _conv_step(x.detach().clone()
                                                                                          .requires_grad_())))
    shape = "x".join(str(s) for s in spatial)
    return Case(f"fourier_crop.{'1d' if len(spatial) == 1 else '2d'}.fwd+bwd",
                {"B": batch, "C": channels, "size": shape, "stride": STRIDE}, cands)


def cases(device: torch.device, quick: bool) -> list[Case]:
    out = []
    for batch, channels, spatial in SIZES[device.type]:
        if quick:
            batch = min(batch, QUICK_BATCH[device.type])
        out.append(case(device, batch, channels, spatial))
    return out
