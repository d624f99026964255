// Fourier-domain cropping (DiffStride), CPU kernels. Torch-free: raw pointers and sizes; the
// binding (csrc/bindings/fourier_crop_cpu.cpp) validates, allocates and splits the work.
// pyaudiok/ops/fourier_crop.py documents the math. T is float or double; sums are in double.
#pragma once
#include <cstdint>

namespace pyaudiok::cpu {

// A[t, j] = (1/n_in) Σ_{f=0..K} c_f mask[f] cos(2π f (t/n_out − j/n_in)) for rows [t_begin, t_end),
// with c_0 = 1, c_f = 2, and c_f = 1 at f = n_out/2 (n_out even: every bin kept, Nyquist included).
template <typename T>
void fourier_crop_matrix(const T* mask, int64_t K, int64_t n_in, int64_t n_out, int64_t t_begin, int64_t t_end,
                         T* A);

// partial[f] += Σ_{t in [t_begin, t_end), j} grad[t, j] ∂A[t, j]/∂mask[f]  (partial: K+1 doubles).
template <typename T>
void fourier_crop_matrix_backward(const T* grad, int64_t K, int64_t n_in, int64_t n_out, int64_t t_begin,
                                  int64_t t_end, double* partial);

// Y[b, r, n] = mask_rows[r] mask_cols[n] X[b, src(r), n] (complex as pairs) for b in [b_begin, b_end),
// r < H_out, n < Kc; src(r) = r, or r + H − H_out for r past the middle (negative frequencies).
// X is [B, H, F, 2], Y is [B, H_out, Kc, 2].
template <typename T>
void fourier_mask_crop(const T* X, const T* mask_rows, const T* mask_cols, int64_t H, int64_t F, int64_t H_out,
                       int64_t Kc, int64_t b_begin, int64_t b_end, T* Y);

// The adjoint: dX[b] = zero-padded mask ⊙ G[b] (every element of dX[b] written), and
// partial[r * Kc + n] += Σ_b Re(conj(G[b, r, n]) X[b, src(r), n]).
template <typename T>
void fourier_mask_crop_backward(const T* G, const T* X, const T* mask_rows, const T* mask_cols, int64_t H,
                                int64_t F, int64_t H_out, int64_t Kc, int64_t b_begin, int64_t b_end, T* dX,
                                double* partial);

}  // namespace pyaudiok::cpu
