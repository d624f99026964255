// GroupNorm → per-item channel affine (FiLM) → PReLU, CPU kernels. Torch-free: raw pointers and sizes;
// the binding (csrc/bindings/group_norm_film_prelu_cpu.cpp) validates, allocates and splits the
// (item, group) pairs over threads. pyaudiok/ops/group_norm_film_prelu.py documents the math.
//
// x[B, C, T] is contiguous, so group g of item b is the contiguous block of C/G channel rows from
// (b·C + g·C/G)·T. gain, offset [B, C]: v = x̂·gain + offset with x̂ = (x − mean)·rstd; prelu[P]
// (P = 1 or C): y = v > 0 ? v : prelu·v. T is float or double. stats[B, G, 3] = (mean_hi, mean_lo, rstd)
// in T, the mean as the unevaluated sum hi + lo (x − mean = (x − hi) − lo keeps float's precision for
// inputs whose mean is large against their spread).
#pragma once
#include <cstdint>

namespace pyaudiok::cpu {

struct GroupShape {
  int64_t channels;  // C
  int64_t groups;    // G (divides C)
  int64_t n_time;    // T
  int64_t n_prelu;   // P: 1 or C
};

// y for the (item, group) pairs [pair_begin, pair_end) (pair = b·G + g), and their stats.
template <typename T>
void group_norm_film_prelu_forward(const T* x, const T* gain, const T* offset, const T* prelu, GroupShape shape,
                                   double eps, int64_t pair_begin, int64_t pair_end, T* y, T* stats);

// For the same pairs: grad_x, and per (b, c) the sums d_gain = Σ_t ∂v·x̂, d_offset = Σ_t ∂v (∂v the
// gradient reaching v) and d_prelu = Σ_t [v ≤ 0]·v·grad, from which the caller sums the
// parameters' gradients over the batch.
template <typename T>
void group_norm_film_prelu_backward(const T* grad, const T* x, const T* gain, const T* offset, const T* prelu,
                                    const T* stats, GroupShape shape, int64_t pair_begin,
                                    int64_t pair_end, T* grad_x, T* d_gain, T* d_offset, T* d_prelu);

}  // namespace pyaudiok::cpu
