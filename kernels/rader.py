"""Triton kernels around Rader's algorithm for the real transforms of a prime length n. The math, the
tables and the transforms in between are in pyaudiok/ops/_prime_fft.py; these kernels are the passes
before and after torch's FFTs, each one read and one write of the data. The permuted sequences
have L = n − 1 values in rows of Lp ≥ L (zeros past L: a cyclic convolution of length L computed
as one of length Lp, see _prime_fft):

* ``pack_half_spectra(Y[R, K+1, 2], gather, n, Lp) -> a[P, Lp, 2]``: two rows' half spectra
  (K = (n − 1)/2) become one complex sequence Z = Y_a + i·Y_b (each Hermitian-extended to n bins),
  permuted: a[q] = Z[gather[q]], gather[q] = g^(−q) mod n.
* ``unpack_signals(conv, a0, Y, place, out[R, n])``: z[m] = Z[0] + conv[place[m]] (m ≥ 1) and
  z[0] = Z[0] + a0, divided by n; the real part is row a's signal, the imaginary part row b's.
* ``pack_signals(x[R, n], gather, Lp) -> a[P, Lp, 2]``: z = x_a + i·x_b, permuted as above.
* ``unpack_half_spectra(conv, a0, x, place, out[R, K+1, 2])``: Z[k] as above, then the two rows'
  spectra Y_a[k] = (Z[k] + conj Z[n−k]) / 2 and Y_b[k] = (Z[k] − conj Z[n−k]) / 2i.

Rows come in pairs p = (2p, 2p + 1); an odd last row pairs with zeros. Tensors are contiguous,
float32 or float64 (arithmetic in their own dtype).
"""
from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

from .gpu import cdiv, launchable

BLOCK = 1024  # positions of one row per program


@triton.jit
def _has_b(p, R, positions):
    """Whether pair p has a row b, as a block over `positions` (masks mixing a block and a scalar
    condition fail in Triton's interpreter)."""
    return (tl.zeros_like(positions) + 2 * p + 1) < R


@triton.jit
def _first_values(ptr, p, R, row_len):
    """Element 0 of pair p's rows a and b (0 without a row b), as scalars."""
    row_a = (2 * p).to(tl.int64) * row_len
    row_b = tl.minimum(2 * p + 1, R - 1).to(tl.int64) * row_len  # a row that exists
    return tl.load(ptr + row_a), tl.where(2 * p + 1 < R, tl.load(ptr + row_b), 0.0)


@triton.jit
def _pair(ptr, row_a, has_b, row_len, offsets, ok):
    """The values at `offsets` of row a and of row b (zeros where the pair has no row b)."""
    first = tl.load(ptr + row_a + offsets, mask=ok, other=0.0)
    second = tl.load(ptr + row_a + row_len + offsets, mask=ok & has_b, other=0.0)
    return first, second


@triton.jit
def _permuted(gather_ptr, L, BLOCK: tl.constexpr):
    """This program's pair p, its block of permuted positions q (ok: q < L: a value, else a zero of
    the padding) and their sources g^(−q)."""
    p = tl.program_id(0)
    q = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = q < L
    return p, q, ok, tl.load(gather_ptr + q, mask=ok, other=1)


@triton.jit
def _store_permuted(a_ptr, p, q, Lp, re, im):
    """Row p's positions q < Lp; the values are loaded as 0 where q ≥ L."""
    dst = a_ptr + p.to(tl.int64) * 2 * Lp + 2 * q
    tl.store(dst, re, mask=q < Lp)
    tl.store(dst + 1, im, mask=q < Lp)


@triton.jit
def _pack_half_spectra_kernel(y_ptr, gather_ptr, a_ptr, R, n, L, Lp, BLOCK: tl.constexpr):
    p, q, ok, k = _permuted(gather_ptr, L, BLOCK)
    K = (n - 1) // 2
    upper = k > K  # bin n − k's conjugate: Y[k] = conj(Y[n − k]) for a real signal
    src = 2 * tl.where(upper, n - k, k)
    row_len = 2 * (K + 1)
    row_a, has_b = (2 * p).to(tl.int64) * row_len, _has_b(p, R, q)
    re_a, re_b = _pair(y_ptr, row_a, has_b, row_len, src, ok)
    im_a, im_b = _pair(y_ptr, row_a, has_b, row_len, src + 1, ok)
    im_a, im_b = tl.where(upper, -im_a, im_a), tl.where(upper, -im_b, im_b)
    _store_permuted(a_ptr, p, q, Lp, re_a - im_b, im_a + re_b)  # Y_a + i·Y_b


@triton.jit
def _rotated(conv_ptr, a0_ptr, place_ptr, p, m, ok, Lp):
    """The convolution's value for output index m (m ≥ 1), or a0 (the permuted sum) for m = 0, as
    (re, im)."""
    pos = tl.load(place_ptr + m, mask=ok, other=0)
    base = p.to(tl.int64) * 2 * Lp
    re = tl.load(conv_ptr + base + 2 * pos, mask=ok & (m > 0), other=0.0)
    im = tl.load(conv_ptr + base + 2 * pos + 1, mask=ok & (m > 0), other=0.0)
    re0 = tl.load(a0_ptr + 2 * p)
    im0 = tl.load(a0_ptr + 2 * p + 1)
    return tl.where(m == 0, re0, re), tl.where(m == 0, im0, im)


@triton.jit
def _unpack_signals_kernel(conv_ptr, a0_ptr, y_ptr, place_ptr, out_ptr, R, n, Lp, BLOCK: tl.constexpr):
    p = tl.program_id(0)
    m = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = m < n
    dc_a, dc_b = _first_values(y_ptr, p, R, 2 * ((n - 1) // 2 + 1))  # Re Y[0]: c2r ignores Im Y[0]
    re, im = _rotated(conv_ptr, a0_ptr, place_ptr, p, m, ok, Lp)
    size = n.to(re.dtype)
    out = out_ptr + (2 * p).to(tl.int64) * n + m
    tl.store(out, (re + dc_a) / size, mask=ok)
    tl.store(out + n, (im + dc_b) / size, mask=ok & _has_b(p, R, m))


@triton.jit
def _pack_signals_kernel(x_ptr, gather_ptr, a_ptr, R, n, L, Lp, BLOCK: tl.constexpr):
    p, q, ok, k = _permuted(gather_ptr, L, BLOCK)
    re, im = _pair(x_ptr, (2 * p).to(tl.int64) * n, _has_b(p, R, q), n, k, ok)
    _store_permuted(a_ptr, p, q, Lp, re, im)  # x_a + i·x_b


@triton.jit
def _unpack_half_spectra_kernel(conv_ptr, a0_ptr, x_ptr, place_ptr, out_ptr, R, n, Lp, BLOCK: tl.constexpr):
    p = tl.program_id(0)
    k = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    K = (n - 1) // 2
    ok = k <= K
    z0_re, z0_im = _first_values(x_ptr, p, R, n)
    re, im = _rotated(conv_ptr, a0_ptr, place_ptr, p, k, ok, Lp)  # Z[k] − z[0]
    mirror = tl.where(k == 0, 0, n - k)
    re_m, im_m = _rotated(conv_ptr, a0_ptr, place_ptr, p, mirror, ok, Lp)  # Z[n − k] − z[0]
    re, im = re + z0_re, im + z0_im
    re_m, im_m = re_m + z0_re, im_m + z0_im
    row_len, has_b = 2 * (K + 1), _has_b(p, R, k)
    out = out_ptr + (2 * p).to(tl.int64) * row_len + 2 * k
    tl.store(out, (re + re_m) * 0.5, mask=ok)  # Y_a = (Z[k] + conj Z[n−k]) / 2
    tl.store(out + 1, (im - im_m) * 0.5, mask=ok)
    tl.store(out + row_len, (im + im_m) * 0.5, mask=ok & has_b)  # Y_b = (Z[k] − conj Z[n−k]) / 2i
    tl.store(out + row_len + 1, (re_m - re) * 0.5, mask=ok & has_b)


def _grid(pairs: int, positions: int) -> tuple[int, int]:
    return pairs, cdiv(positions, BLOCK)


def pack_half_spectra(spectra: Tensor, gather: Tensor, n: int, Lp: int) -> Tensor:
    """[R, K+1, 2] half spectra (real view) -> [⌈R/2⌉, Lp, 2], the permuted pair sequences."""
    rows = spectra.shape[0]
    a = spectra.new_empty(((rows + 1) // 2, Lp, 2))
    launchable(_pack_half_spectra_kernel)[_grid(a.shape[0], Lp)](spectra, gather, a, rows, n, n - 1, Lp, BLOCK=BLOCK)
    return a


def unpack_signals(conv: Tensor, a0: Tensor, spectra: Tensor, place: Tensor, out: Tensor) -> None:
    """out[R, n] = the rows' inverse transforms, from the pair convolutions conv[P, Lp, 2], their
    permuted sums a0[P, 2] and the half spectra (for the DC bins)."""
    rows, n = out.shape
    launchable(_unpack_signals_kernel)[_grid(conv.shape[0], n)](conv, a0, spectra, place, out, rows, n,
                                                                conv.shape[1], BLOCK=BLOCK)


def pack_signals(x: Tensor, gather: Tensor, Lp: int) -> Tensor:
    """[R, n] real signals -> [⌈R/2⌉, Lp, 2], the permuted pair sequences."""
    rows, n = x.shape
    a = x.new_empty(((rows + 1) // 2, Lp, 2))
    launchable(_pack_signals_kernel)[_grid(a.shape[0], Lp)](x, gather, a, rows, n, n - 1, Lp, BLOCK=BLOCK)
    return a


def unpack_half_spectra(conv: Tensor, a0: Tensor, x: Tensor, place: Tensor) -> Tensor:
    """[R, K+1, 2] = the rows' half spectra, from the pair convolutions, their permuted sums and the
    signals (for z[0])."""
    rows, n = x.shape
    out = x.new_empty((rows, (n - 1) // 2 + 1, 2))
    launchable(_unpack_half_spectra_kernel)[_grid(conv.shape[0], out.shape[1])](conv, a0, x, place, out, rows, n,
                                                                                  conv.shape[1], BLOCK=BLOCK)
    return out

