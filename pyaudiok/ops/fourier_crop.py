"""Fourier-domain cropping with a learnable stride, the DiffStride layer's op (DESIGN §3).

`fourier_crop(x, strides, smoothness=4.0)` for x[B, C, T] (1-D) or x[B, C, H, W] (2-D). Per axis of
size N with stride S (R = smoothness):

    n' = max(N / S, 2),   T = n'/2 (+1 on the rfft axis: W, or T in 1-D)
    m(f) = clip((R + T - f) / R, 0, 1)           for |frequency| f
    K = ceil(R + T) - 1                           the largest f with m(f) > 0
    N_out = 2K + 1, or N when K >= N // 2 (every frequency kept: stride 1 is the identity)

and y = irfft2(crop(rfft2(x) ⊙ m_h ⊙ m_w), s=(H_out, W_out)) · H_out·W_out / (H·W). The sizes are
computed on the host from S (no gradient); the gradient to S flows through the mask values.

Because the mask is symmetric in ±frequency, the op is linear and separable in x:
y = A_h · x · A_wᵀ per (b, c), with the real [N_out, N] matrices

    A[t, j] = (1/N) Σ_{f=0..K} c_f m(f) cos(2π f (t/N_out − j/N)),  c_0 = 1, c_f = 2, c_{N_out/2} = 1

So there are two exact implementations, picked per call by size (`method`):
- "fft": rfft2 → crop → fused mask kernel → irfft2 (FFTs are torch's; the kernel is the backend's),
  a chunk of rows (b, c) per FFT call on the CPU (CPU_CHUNK_BYTES of spectrum) and one on GPUs; on
  the Triton backend `PRIME_TRANSFORMS = "rader"` transforms 1-D prime output lengths by Rader's
  algorithm instead of cuFFT's Bluestein (_prime_fft; a candidate, see PRIME_TRANSFORMS),
- "matmul": A_h, A_w built on the fly by the backend's kernel, then two GEMMs (torch's; on the Triton
  backend `PRODUCTS = "triton"` runs them as Triton GEMMs instead: a candidate, see PRODUCTS).
Backends: `reference` (rfft → mask → crop → irfft in plain torch), `cpu` (csrc/cpu/fourier_crop.cpp),
`triton` (kernels/fourier_crop.py). Raw ops of every fused backend:

    fourier_crop_matrix(mask[K+1], n_in, n_out) -> A[n_out, n_in]
    fourier_crop_matrix_backward(grad_A[n_out, n_in], mask[K+1]) -> grad_mask[K+1]
    fourier_mask_crop(X[BC, H, F, 2], mask_rows[H_out], mask_cols[K_w+1]) -> Y[BC, H_out, K_w+1, 2]
    fourier_mask_crop_backward(G[BC, H_out, K_w+1, 2], X, mask_rows, mask_cols) -> (grad_X, E[H_out, K_w+1])

X is a half spectrum viewed as real pairs; output row r reads input row r, or r + H − H_out past the
middle (negative frequencies); E = Σ_bc Re(conj(G) X_cropped) gives the mask gradients.
"""
from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import numpy as np
import torch

from .. import dispatch
from . import _checks, _prime_fft
from ._library import (HALF_DTYPES, anchor_inputs, cpp_op, eager_under_compile, extension_loaded, first_order,
                       register_autograd, register_backends, triton_op, upcast_half, without_autocast)

__all__ = ["fourier_crop", "fourier_crop_reference", "fourier_crop_output_size", "METHODS"]

METHODS = ("fft", "matmul")


# ----------------------------------------------------------------------------------------------
# Sizes and masks: shared by the reference and every implementation, so all crop the same bins.

class Axis(NamedTuple):
    size: int       # N
    out: int        # N_out
    cutoff: int     # K: the largest |frequency| kept
    rfft: bool      # the half-spectrum axis (threshold + 1)


def _threshold(size: float, stride, rfft: bool):
    """T = max(N / S, 2) / 2 (+1 on the rfft axis); works on floats and on tensors (autograd)."""
    if isinstance(stride, torch.Tensor):
        n = torch.clamp(size / stride, min=2.0)
    else:
        n = max(size / stride, 2.0)
    return n / 2 + (1.0 if rfft else 0.0)


def plan_axis(size: int, stride: float, smoothness: float, rfft: bool) -> Axis:
    cut = math.ceil(smoothness + _threshold(size, float(stride), rfft)) - 1
    if cut >= size // 2:
        return Axis(size, size, size // 2, rfft)
    return Axis(size, 2 * cut + 1, cut, rfft)


def fourier_crop_output_size(size: int, stride: float, smoothness: float = 4.0, rfft: bool = True) -> int:
    """Output length of an axis of `size` at `stride` (rfft=False: the rows axis of a 2-D input)."""
    size = _checks.int_in_range("size", size, 2, 1 << 62)  # as fourier_crop: the mask keeps >= 2 samples
    if isinstance(stride, bool) or not isinstance(stride, numbers.Real):
        raise TypeError(f"stride must be a float >= 1; got {type(stride).__name__}")
    if not (math.isfinite(stride) and stride >= 1.0):
        raise ValueError(f"stride must be finite and >= 1; got {stride}")
    return plan_axis(size, stride, _checks.positive_float("smoothness", smoothness), rfft).out


def stride_values(strides: torch.Tensor) -> list[float]:
    """The strides on the host (the sizes depend on them): the op's one device-to-host copy."""
    return strides.detach().double().cpu().reshape(-1).tolist()


def _plans(x: torch.Tensor, values, smoothness: float) -> tuple[list[Axis], list[float]]:
    """(axes, per-axis stride values) from the host strides: one axis for 1-D input, (rows, columns)
    for 2-D."""
    floats = [values[0]] * (x.dim() - 2) if len(values) == 1 else list(values)
    rfft_flags = (True,) if x.dim() == 3 else (False, True)
    return [plan_axis(n, s, smoothness, r) for n, s, r in zip(x.shape[2:], floats, rfft_flags)], floats


def _ramp(axis: Axis, stride, smoothness: float, f):
    """v(f) = (R + T − f)/R, the mask before clipping to [0, 1]: for a host stride and f a number or a
    float64 numpy array, or (autograd) a stride tensor and f a tensor. The same float64 operations
    in the same order in each case, so every path masks the same bins with the same values."""
    top = smoothness + _threshold(axis.size, stride, axis.rfft)
    return (top - f) / smoothness


def keeps_everything(axis: Axis, stride: float, smoothness: float) -> bool:
    """Whether the axis is neither cropped nor masked (every m(f) = 1: v is smallest at f = K)."""
    return axis.out == axis.size and _ramp(axis, stride, smoothness, axis.cutoff) >= 1.0


def _mask_and_slope(axis: Axis, stride: float, smoothness: float) -> tuple[np.ndarray, np.ndarray]:
    """(m(f), ∂m(f)/∂S) for f = 0..K as float64 arrays, computed on the host from the host stride:
    the reference's mask bit for bit (_ramp: the same float64 operations), and the derivative
    autograd takes of its formula (clamp passes the gradient at its bounds):

        ∂m_f/∂S = [0 ≤ v_f ≤ 1] · (1/R) · ∂T/∂S,   ∂T/∂S = −N/(2S²) where N/S ≥ 2, else 0.

    numpy, not Python floats: a 16 000-sample signal has masks of 4 000 values (1.7 ms as lists)."""
    v = _ramp(axis, stride, smoothness, np.arange(axis.cutoff + 1, dtype=np.float64))
    slope = (-axis.size / (2 * stride * stride) if axis.size / stride >= 2.0 else 0.0) / smoothness
    inside = (v >= 0.0) & (v <= 1.0)
    return np.clip(v, 0.0, 1.0), np.where(inside, slope, 0.0)


class MaskArg(NamedTuple):
    """One mask vector a path's kernels take: axis `axis`'s m(f), f = 0..K, times `scale`, or, with
    `rows`, expanded to that axis's N_out output rows (row r has |frequency| min(r, N_out − r))."""
    axis: int
    rows: bool = False
    scale: float = 1.0


class Masking(NamedTuple):
    """What a path builds its masks from: the axes, their host stride values, R, and whether the
    strides take a gradient."""
    axes: list[Axis]
    values: list[float]
    smoothness: float
    learn: bool

    def build(self, x: torch.Tensor, strides: torch.Tensor,
              args: tuple[MaskArg | None, ...]) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """(masks, weights): the mask vectors of `args` (None: a constant [1.0]) in x's dtype on x's
        device, built on the host (the sizes already are: no device op per mask value) and copied
        over in one transfer; with `learn`, weights [len(strides), Σ len(mask)] float64 maps the
        masks' gradients to the strides': dL/dS = weights @ cat(dL/dmask), each entry's ∂m/∂S under
        the stride its axis uses (_mask_and_slope)."""
        n_strides = strides.numel()
        masks, slopes, owners = [], [], []
        for arg in args:
            if arg is None:
                mask, slope, owner = np.ones(1), np.zeros(1), 0
            else:
                axis, owner = self.axes[arg.axis], arg.axis * (n_strides > 1)
                mask, slope = _mask_and_slope(axis, self.values[arg.axis], self.smoothness)
                if arg.rows:
                    rows = np.arange(axis.out)
                    rows = np.minimum(rows, axis.out - rows)
                    mask, slope = mask[rows], slope[rows]
                if arg.scale != 1.0:
                    mask, slope = mask * arg.scale, slope * arg.scale
            masks.append(mask)
            slopes.append(slope)
            owners.append(owner)
        sizes = [len(m) for m in masks]
        table = np.zeros((1 + n_strides * self.learn, sum(sizes)))
        table[0] = np.concatenate(masks)
        if self.learn:
            at = np.cumsum([0] + sizes)
            for i, (slope, owner) in enumerate(zip(slopes, owners)):
                table[1 + owner, at[i]:at[i + 1]] = slope
        # One transfer, from pinned memory on CUDA (torch's caching host allocator: the block is
        # reused once the copy is done), so it is asynchronous: a pageable one may wait on the stream.
        host = torch.from_numpy(table)
        device = (host.pin_memory() if x.device.type == "cuda" else host).to(x.device, non_blocking=True)
        return list(device[0].to(x.dtype).split(sizes)), device[1:] if self.learn else None


def _stride_grad(weights: torch.Tensor, grad_masks: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """dL/dS from the gradients of all the masks Masking.build built, with its weights."""
    return (weights @ torch.cat(grad_masks).to(weights.dtype)).to(dtype)


# ----------------------------------------------------------------------------------------------
# Reference: the definition.

def fourier_crop_reference(x: torch.Tensor, strides: torch.Tensor, smoothness: float = 4.0) -> torch.Tensor:
    """rfft → mask → crop → irfft, in plain torch (autograd to x and strides)."""
    return _reference(x, strides, smoothness)


def _reference(x, strides, smoothness, values=None):
    if x.dtype in HALF_DTYPES:  # torch's FFTs have no half-precision CPU kernels (cuFFT: fp16 at 2^k only)
        up = strides.float() if strides.dtype in HALF_DTYPES else strides
        return _reference(x.float(), up, smoothness, values).to(x.dtype)
    axes, _ = _plans(x, stride_values(strides) if values is None else values, smoothness)
    per_axis = [strides[0]] * len(axes) if strides.numel() == 1 else list(strides.unbind())
    if x.dim() == 3:
        (ax,), (s,) = axes, per_axis
        spectrum = torch.fft.rfft(x)
        m = _full_mask(ax, s, smoothness, x.dtype, spectrum.shape[-1], half=True)
        cropped = (spectrum * m)[..., :ax.cutoff + 1]
        return torch.fft.irfft(cropped, n=ax.out) * (ax.out / ax.size)
    (ah, aw), (sh, sw) = axes, per_axis
    H, W = x.shape[-2:]
    spectrum = torch.fft.rfft2(x)
    mh = _full_mask(ah, sh, smoothness, x.dtype, H, half=False)
    mw = _full_mask(aw, sw, smoothness, x.dtype, spectrum.shape[-1], half=True)
    masked = spectrum * mh[:, None] * mw
    rows = list(range(H)) if ah.out == H else list(range(ah.cutoff + 1)) + list(range(H - ah.cutoff, H))
    cropped = masked[..., rows, :aw.cutoff + 1]
    return torch.fft.irfft2(cropped, s=(ah.out, aw.out)) * (ah.out * aw.out / (H * W))


def _full_mask(axis: Axis, stride, smoothness, dtype, length, half):
    """The mask over every bin of a spectrum axis: bin i has |frequency| i (half spectrum) or
    min(i, N − i) (full spectrum). Bins past K are cropped away afterwards."""
    idx = torch.arange(length, device=stride.device)
    f = idx if half else torch.minimum(idx, axis.size - idx)
    return torch.clamp(_ramp(axis, stride.double(), smoothness, f.double()), 0.0, 1.0).to(dtype)


# ----------------------------------------------------------------------------------------------
# The fused raw ops' fake and autograd registrations (the same for every backend).

def _register_matrix(qualname: str, backward_op) -> None:
    @torch.library.register_fake(qualname)
    def _(mask, n_in, n_out):
        return mask.new_empty((n_out, n_in))

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        return backward_op()(grad.contiguous(), mask), None, None

    register_autograd(qualname, backward, setup_context=setup_context)


def _register_matrix_backward(qualname: str) -> None:
    @torch.library.register_fake(qualname)
    def _(grad, mask):
        return mask.new_empty(mask.shape)


def _register_mask_crop(qualname: str, backward_op) -> None:
    @torch.library.register_fake(qualname)
    def _(spectrum, mask_rows, mask_cols):
        return spectrum.new_empty((spectrum.shape[0], mask_rows.shape[0], mask_cols.shape[0], 2))

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def backward(ctx, grad):
        spectrum, mask_rows, mask_cols = ctx.saved_tensors
        grad_spectrum, e = backward_op()(grad.contiguous(), spectrum, mask_rows, mask_cols)
        # Y = X ⊙ m_rows[r] m_cols[n]: the mask gradients are E contracted with the other mask.
        return grad_spectrum, e @ mask_cols, mask_rows @ e

    register_autograd(qualname, backward, setup_context=setup_context)


def _register_mask_crop_backward(qualname: str) -> None:
    @torch.library.register_fake(qualname)
    def _(grad, spectrum, mask_rows, mask_cols):
        return spectrum.new_empty(spectrum.shape), grad.new_empty((grad.shape[1], grad.shape[2]))


class _Kernels(NamedTuple):
    matrix: object
    matrix_backward: object
    mask_crop: object
    mask_crop_backward: object
    products: object = None  # strided_products (Triton): the matmul route's products, see PRODUCTS
    prime_transforms: bool = False  # the FFT path's 1-D prime lengths by Rader's algorithm, see PRIME_TRANSFORMS


def _register_products_fake(qualname: str) -> None:
    @torch.library.register_fake(qualname)
    def _(a, b, reduce_batch):
        batches = b.shape[0] if a.shape[0] == 1 else a.shape[0]
        shape = (a.shape[1], b.shape[2]) if reduce_batch else (batches, a.shape[1], b.shape[2])
        return a.new_empty(shape, dtype=torch.float32)


def _cpp_kernels() -> _Kernels:
    return _Kernels(cpp_op("fourier_crop_matrix"), cpp_op("fourier_crop_matrix_backward"), cpp_op("fourier_mask_crop"),
                    cpp_op("fourier_mask_crop_backward"))


if extension_loaded():
    _register_matrix("pyaudiok::fourier_crop_matrix", lambda: cpp_op("fourier_crop_matrix_backward"))
    _register_matrix_backward("pyaudiok::fourier_crop_matrix_backward")
    _register_mask_crop("pyaudiok::fourier_mask_crop", lambda: cpp_op("fourier_mask_crop_backward"))
    _register_mask_crop_backward("pyaudiok::fourier_mask_crop_backward")


def _triton_matrix_backward():
    return triton_op("fourier_crop_matrix_backward_triton", "fourier_crop", "fourier_crop_matrix_backward",
                     _register_matrix_backward)


def _triton_mask_crop_backward():
    return triton_op("fourier_mask_crop_backward_triton", "fourier_crop", "fourier_mask_crop_backward",
                     _register_mask_crop_backward)


def _triton_kernels() -> _Kernels:
    matrix = triton_op("fourier_crop_matrix_triton", "fourier_crop", "fourier_crop_matrix",
                       lambda q: _register_matrix(q, _triton_matrix_backward))
    mask_crop = triton_op("fourier_mask_crop_triton", "fourier_crop", "fourier_mask_crop",
                          lambda q: _register_mask_crop(q, _triton_mask_crop_backward))
    products = triton_op("fourier_crop_products_triton", "fourier_crop", "strided_products", _register_products_fake)
    return _Kernels(matrix, _triton_matrix_backward(), mask_crop, _triton_mask_crop_backward(), products,
                    _checks.one_of("PRIME_TRANSFORMS", PRIME_TRANSFORMS, ("torch", "rader")) == "rader")


# ----------------------------------------------------------------------------------------------
# The two implementations over a backend's kernels.

# Rows (signals, or maps) per FFT call on the CPU: a chunk's spectrum (~8 MiB) is still in cache when
# the mask kernel reads it, and its buffers come back from the heap on the next chunk instead of a
# whole batch's spectrum being allocated (and faulted in) per call. GPUs take the batch in one call.
CPU_CHUNK_BYTES = 8 << 20


def chunk_rows(rows: int, spectrum_row_bytes: int, device: torch.device) -> int:
    """How many rows one FFT call of the FFT path transforms."""
    if device.type != "cpu":
        return max(rows, 1)
    return max(1, min(rows, CPU_CHUNK_BYTES // max(spectrum_row_bytes, 1)))


# How the FFT path transforms a 1-D output length n that _prime_fft.applies to (a prime cuFFT runs by
# Bluestein's algorithm, e.g. 8 009 for T = 16 000 at stride 2) on the Triton backend: "torch"
# (torch.fft) or "rader" (_prime_fft: Rader's algorithm, FFTs of length n − 1 between two Triton
# permutation kernels, two rows per complex transform). "rader" is a candidate, not the default,
# until timed on a GPU (the bench's "triton fft, Rader transforms …" candidates, one per convolution
# length: _prime_fft.SMOOTH_FACTORS).
PRIME_TRANSFORMS = "torch"


def _by_rader(kernels: _Kernels, outs: tuple[int, ...]) -> bool:
    return kernels.prime_transforms and len(outs) == 1 and _prime_fft.applies(outs[0])


def _irfft_into(kernels: _Kernels, spectrum: torch.Tensor, outs, dims, out: torch.Tensor) -> None:
    """out = irfftn(spectrum (a real view), s=outs) over `dims`."""
    if _by_rader(kernels, outs):
        _prime_fft.irfft(spectrum.reshape(-1, spectrum.shape[-2], 2), outs[0], out.view(-1, outs[0]))
    else:
        torch.fft.irfftn(torch.view_as_complex(spectrum), s=outs, dim=dims, out=out)


def _rfft(kernels: _Kernels, signal: torch.Tensor, dims) -> torch.Tensor:
    """rfftn(signal) over `dims`, as a real view."""
    if _by_rader(kernels, tuple(signal.shape[-len(dims):])):
        n = signal.shape[-1]
        return _prime_fft.rfft(signal.reshape(-1, n)).view(*signal.shape[:-1], (n + 1) // 2, 2)
    return torch.view_as_real(torch.fft.rfftn(signal, dim=dims))


def _crop_into(dst: torch.Tensor, spectrum: torch.Tensor) -> None:
    """dst[b, r, n] = spectrum[b, source row of r, n]: the kept bins, unmasked. Output rows past the
    middle are the negative frequencies, the spectrum's last rows."""
    h, h_out, kc = spectrum.shape[1], dst.shape[1], dst.shape[2]
    top = (h_out + 1) // 2
    dst[:, :top] = spectrum[:, :top, :kc]
    if h_out > top:
        dst[:, top:] = spectrum[:, h - (h_out - top):, :kc]


def _pad_into(dst: torch.Tensor, cropped: torch.Tensor) -> None:
    """The adjoint of _crop_into: cropped's bins to their places in the spectrum dst (dst's other
    bins stay as they are: zeros)."""
    h, h_out, kc = dst.shape[1], cropped.shape[1], cropped.shape[2]
    top = (h_out + 1) // 2
    dst[:, :top, :kc] = cropped[:, :top]
    if h_out > top:
        dst[:, h - (h_out - top):, :kc] = cropped[:, top:]


class _FFTPath(torch.autograd.Function):
    """rfftn → crop → fused mask → irfftn, a chunk of rows at a time, with the backward in closed
    form (the adjoint is again one r2c, the fused mask kernel, a zero pad and one c2r):

        dx = irfftn_N(pad(M ⊙ rfftn_out(g))) / scale,   dL/dM[f, n] = c_n Σ_bc Re(conj(G) X) / (H_out W_out)

    where M = m_rows ⊗ m_cols includes scale = H_out W_out / (H W) and c_n is the irfft weight of
    column n (1 for DC and an output Nyquist column, else 2). Only X's kept bins are saved for the
    mask gradient (the kernels take them as a spectrum of H_out rows: each row its own source).
    Autograd through torch's FFTs would run a full-size c2c on a zero-filled spectrum instead.
    The masks are built inside (one node for the whole path: a small call is bound by the host)."""

    @staticmethod
    def forward(ctx, x, strides, masking, args, kernels, sizes, outs):
        dims = tuple(range(-len(sizes), 0))
        n = x.shape[0]
        step = chunk_rows(n, math.prod(sizes[:-1]) * (sizes[-1] // 2 + 1) * 2 * x.element_size(), x.device)
        y = x.new_empty((*x.shape[:-len(sizes)], *outs))
        # The kept bins: the output's rows (one in 1-D) by its half-spectrum columns, the masks' lengths.
        kept = x.new_empty((n, outs[0] if len(outs) == 2 else 1, outs[-1] // 2 + 1, 2))
        chunks = [slice(r, r + step) for r in range(0, n, step)]

        def transform(rows):
            _crop_into(kept[rows], torch.view_as_real(torch.fft.rfftn(x[rows], dim=dims)))
        if chunks:  # the device runs the first transform (it needs no mask) while the host builds the masks
            transform(chunks[0])
        (mask_rows, mask_cols), weights = masking.build(x, strides, args)
        for i, rows in enumerate(chunks):
            if i:
                transform(rows)
            masked = kernels.mask_crop(kept[rows], mask_rows, mask_cols)
            _irfft_into(kernels, masked, outs, dims, y[rows])
        ctx.save_for_backward(kept, mask_rows, mask_cols, weights)
        anchor_inputs(ctx, x)
        ctx.kernels, ctx.sizes, ctx.outs, ctx.dims, ctx.step = kernels, sizes, outs, dims, step
        ctx.stride_dtype = strides.dtype
        return y

    @staticmethod
    @first_order("fourier_crop")
    @without_autocast
    def backward(ctx, grad):
        kept, mask_rows, mask_cols, weights = ctx.saved_tensors
        sizes, outs, dims, step = ctx.sizes, ctx.outs, ctx.dims, ctx.step
        grad = grad.contiguous()
        n = grad.shape[0]
        # The adjoint's 1/scale rides on the (tiny) column mask instead of a pass over dx; e does
        # not depend on the masks.
        scale = math.prod(outs) / math.prod(sizes)
        cols_adjoint = mask_cols / scale
        dx = grad.new_empty((*grad.shape[:-len(outs)], *sizes))
        e = None
        # Bins cropped away get no gradient: a zeroed spectrum whose kept bins each chunk overwrites.
        padded = kept.new_zeros((min(step, n), dx.shape[1], sizes[-1] // 2 + 1, 2))
        for r in range(0, n, step):
            rows = slice(r, r + step)
            g = _rfft(ctx.kernels, grad[rows], dims)
            masked, e_rows = ctx.kernels.mask_crop_backward(g, kept[rows], mask_rows, cols_adjoint)
            e = e_rows if e is None else e + e_rows
            spectrum = padded[:masked.shape[0]]
            _pad_into(spectrum, masked)
            torch.fft.irfftn(torch.view_as_complex(spectrum), s=sizes, dim=dims, out=dx[rows])
        d_strides = None
        if weights is not None:
            c = torch.full((mask_cols.shape[0],), 2.0, dtype=e.dtype, device=e.device)
            c[0] = 1.0
            if outs[-1] % 2 == 0 and mask_cols.shape[0] == outs[-1] // 2 + 1:
                c[-1] = 1.0
            d_mask = e * (c / math.prod(outs))
            d_strides = _stride_grad(weights, [d_mask @ mask_cols, mask_rows @ d_mask], ctx.stride_dtype)
        return dx, d_strides, None, None, None, None, None


def _via_fft(kernels: _Kernels, x, strides, masking: Masking):
    if x.dim() == 3:
        (ax,) = masking.axes
        args = (None, MaskArg(0, scale=ax.out / ax.size))  # one row, masked along time
        y = _FFTPath.apply(x.reshape(-1, 1, ax.size), strides, masking, args, kernels, (ax.size,), (ax.out,))
        return y.reshape(*x.shape[:2], ax.out)
    ah, aw = masking.axes
    args = (MaskArg(0, rows=True), MaskArg(1, scale=ah.out * aw.out / (ah.size * aw.size)))
    y = _FFTPath.apply(x.reshape(-1, ah.size, aw.size), strides, masking, args, kernels, (ah.size, aw.size),
                       (ah.out, aw.out))
    return y.reshape(*x.shape[:2], ah.out, aw.out)


def _separable_matrices(x, strides, masking: Masking, kernels) -> tuple[torch.Tensor | None, list]:
    """(weights, [(mask, A) per axis, the columns' last]): the matmul path's matrices, the masks built
    inside (Masking.build)."""
    masks, weights = masking.build(x, strides, tuple(MaskArg(i) for i in range(len(masking.axes))))
    return weights, [(mask, kernels.matrix(mask, axis.size, axis.out)) for axis, mask in zip(masking.axes, masks)]


def _separable_forward(ctx, x, strides, masking: Masking, kernels, columns, rows):
    """The matmul path's forward around its two products, `columns(x, A_w)` -> z and, for 2-D,
    `rows(A_h, z)` -> (y, z in the layout the backward takes): the matrices built, and what the
    backward needs saved."""
    axes = masking.axes
    weights, matrices = _separable_matrices(x, strides, masking, kernels)
    mask_w, a_w = matrices[-1]
    z = columns(x, a_w)
    ctx.kernels, ctx.axes, ctx.x_shape, ctx.stride_dtype = kernels, axes, x.shape, strides.dtype
    # x is needed only for the columns' mask gradient, z only for the rows': a layer with fixed
    # strides keeps neither alive.
    x_kept = x if masking.learn else None
    if x.dim() == 3:
        ctx.save_for_backward(weights, x_kept, mask_w, a_w)
        return z
    mask_h, a_h = matrices[0]
    y, z_kept = rows(a_h, z)
    ctx.save_for_backward(weights, x_kept, mask_w, a_w, mask_h, a_h, z_kept if masking.learn else None)
    return y


class _Separable(torch.autograd.Function):
    """The matmul path as one node of the graph: y = x · A_wᵀ (1-D) or A_h · x · A_wᵀ per (b, c) (2-D),
    A = kernels.matrix(mask), the masks built inside; the backward is the GEMMs' transposes and the
    matrices' adjoints to the masks (kernels.matrix_backward). One node instead of a dozen keeps
    the host's share of a call small (small maps on a GPU are bound by it)."""

    @staticmethod
    def forward(ctx, x, strides, masking, kernels):
        ah, aw, bc = masking.axes[0], masking.axes[-1], x.shape[0] * x.shape[1]

        def rows(a_h, z):
            # A_h · z[b, c] for every (b, c) as one GEMM: rows first, [H, BC·W_out] (measured faster on
            # the CPU than a batched GEMM with a broadcast A_h or a transposed fold).
            z_rows = z.reshape(bc, ah.size, aw.out).transpose(0, 1).reshape(ah.size, bc * aw.out)
            y = (a_h @ z_rows).reshape(ah.out, bc, aw.out).transpose(0, 1)
            return y.reshape(*x.shape[:2], ah.out, aw.out), z_rows
        # [..., W] @ [W, W_out]: the batch folded into one GEMM
        return _separable_forward(ctx, x, strides, masking, kernels, lambda x, a_w: torch.matmul(x, a_w.T), rows)

    @staticmethod
    @first_order("fourier_crop")
    @without_autocast
    def backward(ctx, grad):
        kernels, axes = ctx.kernels, ctx.axes
        weights, x, mask_w, a_w, *rows_axis = ctx.saved_tensors
        learn = weights is not None
        aw = axes[-1]
        d_masks = []
        if rows_axis:  # 2-D: through A_h first, back to the columns' product dz = A_hᵀ · grad per (b, c)
            mask_h, a_h, z_rows = rows_axis
            ah, bc = axes[0], ctx.x_shape[0] * ctx.x_shape[1]
            g_rows = grad.reshape(bc, ah.out, aw.out).transpose(0, 1).reshape(ah.out, bc * aw.out)
            if learn:
                d_masks.append(kernels.matrix_backward(g_rows @ z_rows.T, mask_h))
            grad = (a_h.T @ g_rows).reshape(ah.size, bc, aw.out).transpose(0, 1)
        dz = grad.reshape(-1, aw.out)
        dx = (dz @ a_w).reshape(ctx.x_shape) if ctx.needs_input_grad[0] else None
        d_strides = None
        if learn:
            d_masks.append(kernels.matrix_backward(dz.T @ x.reshape(-1, aw.size), mask_w))
            d_strides = _stride_grad(weights, d_masks, ctx.stride_dtype)
        return dx, d_strides, None, None


# How the matmul path multiplies on the Triton backend: "torch" (its GEMMs: cuBLAS, SGEMM on the CUDA
# cores for float32 unless TF32 is allowed) or "triton" (kernels.fourier_crop.strided_products: float32
# as 3xTF32 on tensor cores, batches by strides so no transposed copies). "triton" is a candidate, not
# the default, until timed on a GPU (the bench's "triton products" candidate); float32 only.
PRODUCTS = "torch"


class _SeparableProducts(torch.autograd.Function):
    """_Separable with its six products as strided_products calls: y[bc] = A_h · (x[bc] · A_wᵀ), and
    back dz[bc] = A_hᵀ · g[bc], dx = dz · A_w, dA_h = Σ_bc g[bc] · z[bc]ᵀ, dA_w = Σ_rows dzᵀ · x, each
    on its operands' own layout."""

    @staticmethod
    def forward(ctx, x, strides, masking, kernels):
        mul, ah, aw = kernels.products, masking.axes[0], masking.axes[-1]

        def columns(x, a_w):  # x · A_wᵀ, A_wᵀ read through its strides
            lead = x.shape[:-1] if x.dim() == 3 else (x.shape[0] * x.shape[1], ah.size)
            return mul(x.reshape(1, -1, aw.size), a_w.T.unsqueeze(0), False).reshape(*lead, aw.out)

        def rows(a_h, z):  # A_h · z[bc], one A_h for every (b, c); z kept as it is for dA_h
            return mul(a_h.unsqueeze(0), z, False).reshape(*x.shape[:2], ah.out, aw.out), z
        return _separable_forward(ctx, x, strides, masking, kernels, columns, rows)

    @staticmethod
    @first_order("fourier_crop")
    @without_autocast
    def backward(ctx, grad):
        mul, axes = ctx.kernels.products, ctx.axes
        weights, x, mask_w, a_w, *rows_axis = ctx.saved_tensors
        learn = weights is not None
        aw = axes[-1]
        d_masks = []
        if rows_axis:
            mask_h, a_h, z = rows_axis
            g = grad.reshape(-1, axes[0].out, aw.out)
            if learn:
                d_masks.append(ctx.kernels.matrix_backward(mul(g, z.transpose(1, 2), True), mask_h))
            grad = mul(a_h.T.unsqueeze(0), g, False)  # dz[bc] = A_hᵀ · g[bc]
        dz = grad.reshape(1, -1, aw.out)
        dx = mul(dz, a_w.unsqueeze(0), False).reshape(ctx.x_shape) if ctx.needs_input_grad[0] else None
        d_strides = None
        if learn:
            d_masks.append(ctx.kernels.matrix_backward(mul(dz.transpose(1, 2), x.reshape(1, -1, aw.size), True),
                                                       mask_w))
            d_strides = _stride_grad(weights, d_masks, ctx.stride_dtype)
        return dx, d_strides, None, None


def _matmul_path(x: torch.Tensor, kernels: _Kernels) -> type[torch.autograd.Function]:
    """The matmul path's node: with Triton products where PRODUCTS asks for them and they apply."""
    triton_products = _checks.one_of("PRODUCTS", PRODUCTS, ("torch", "triton")) == "triton"
    if triton_products and kernels.products is not None and x.dtype == torch.float32:
        return _SeparableProducts
    return _Separable


# The largest axis up to which the matmul path is used, from forward+backward at stride 2:
# - CPU (2 cores): matmul beat the FFT path at 16², 32², 64² and 128² maps; at T = 16 000 the
#   matrices alone would be [8009, 16000].
# - H200 (bench/results/2026-11-26_h200_all.txt): matmul beat the FFT path at 32², 56², 112² and
#   224² maps (224²: 5.10 against 5.61 ms); larger maps are unmeasured.
MATMUL_MAX_SIZE = {"cpu": 128, "cuda": 224}


def choose_method(x: torch.Tensor) -> str:
    return "matmul" if max(x.shape[2:]) <= MATMUL_MAX_SIZE.get(x.device.type, 64) else "fft"


def _fused(get_kernels):
    def run(x, strides, smoothness, method, values):
        axes, floats = _plans(x, values, smoothness)
        learn = torch.is_grad_enabled() and strides.requires_grad
        if not learn and all(keeps_everything(a, s, smoothness) for a, s in zip(axes, floats)):
            return x.clone()  # nothing cropped and an all-ones mask: the identity
        masking = Masking(axes, floats, smoothness, learn)
        if (method or choose_method(x)) == "matmul":
            kernels = get_kernels()
            return _matmul_path(x, kernels).apply(x, strides, masking, kernels)
        return _via_fft(get_kernels(), x, strides, masking)
    return run


FOURIER_CROP = dispatch.op("fourier_crop")
register_backends(FOURIER_CROP, reference=lambda x, s, r, method, values: _reference(x, s, r, values),
                  cpu=upcast_half(_fused(_cpp_kernels)), triton=upcast_half(_fused(_triton_kernels)),
                  cpu_dtypes=HALF_DTYPES + (torch.float32, torch.float64),
                  gpu_dtypes=HALF_DTYPES + (torch.float32, torch.float64))


# ----------------------------------------------------------------------------------------------
# Public API.

@eager_under_compile  # the output size follows the stride values, read on the host
def fourier_crop(x: torch.Tensor, strides, *, smoothness: float = 4.0, method: str | None = None) -> torch.Tensor:
    """Crop x[B, C, T] or x[B, C, H, W] in the Fourier domain at (learnable) `strides`.

    `strides`: a tensor of 1 value (shared by both axes) or, for 2-D input, 2 values (rows,
    columns), each ≥ 1, on x's device; it receives a gradient. A float is taken as a constant.
    `method`: "fft" or "matmul" (default: chosen by size); both compute the same thing.
    Returns [B, C, T_out] or [B, C, H_out, W_out], sizes from `fourier_crop_output_size`.
    """
    x = _checks.float_tensor("x", x, layout="[B, C, T] or [B, C, H, W]")
    if x.dim() not in (3, 4):
        raise ValueError(f"x must have shape [B, C, T] or [B, C, H, W]; got {_checks.shape_str(x.shape)}")
    if isinstance(strides, (int, float)) and not isinstance(strides, bool):
        # A constant stride in float64: the value as given (the sizes and masks are computed in float64).
        strides = torch.tensor([float(strides)], dtype=torch.float64, device=x.device)
    strides = _checks.float_tensor("strides", strides, layout="[1] or [2]")
    _checks.same_device("strides", strides, "x", x)
    _checks.holds_data("x", x)  # the output sizes are read from the strides' values
    n_axes = x.dim() - 2
    if strides.dim() > 1 or strides.numel() not in {1, n_axes}:
        expected = "[1]" if n_axes == 1 else "[1] or [2]"
        raise ValueError(f"strides must have shape {expected} for {n_axes}-D input; got "
                         f"{_checks.shape_str(strides.shape)}")
    values = stride_values(strides)
    if not all(math.isfinite(v) and v >= 1.0 for v in values):
        raise ValueError(f"strides must be finite and >= 1; got {values}")
    smoothness = _checks.positive_float("smoothness", smoothness)
    small = [n for n in x.shape[2:] if n < 2]
    if small:
        raise ValueError(f"x is smaller than the mask: every transformed axis needs >= 2 samples (the mask "
                         f"keeps at least max(N/S, 2) of them); got {_checks.shape_str(x.shape)}")
    if method is not None and method not in METHODS:
        raise ValueError(f"method must be one of {METHODS} or None; got {method!r}")
    strides = strides.reshape(-1)
    if x.numel() == 0:  # FFT libraries reject empty batches; the result is empty, the gradients zero
        axes, _ = _plans(x, values, smoothness)
        return x.new_zeros((*x.shape[:2], *(a.out for a in axes))) + 0 * (x.sum() + strides.sum())
    return FOURIER_CROP(x, strides, smoothness, method, tuple(values), device=x.device, dtype=x.dtype)
