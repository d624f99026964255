// sPCEN (LEAF's compression), CPU kernels. Torch-free: raw pointers and sizes; the binding
// (csrc/bindings/pcen_cpu.cpp) validates, allocates and splits the rows over threads.
// pyaudiok/ops/pcen.py documents the math. Rows are the B·F channels of E[B, F, T] (time
// contiguous); params is [4, F] = (alpha, delta, r, smooth). T is float or double (the state type).
#pragma once
#include <cstdint>

namespace pyaudiok::cpu {

// y for rows [row_begin, row_end). The smoother state is kept per group of rows, not written out:
// the backward recomputes it (the recurrence is a small part of the backward, cheaper than writing
// [B, F, T] out in the forward and reading it back).
template <typename T>
void pcen_forward(const T* E, const T* params, int64_t F, int64_t n_time, double eps, int64_t row_begin,
                  int64_t row_end, T* y);

// grad_E for rows [row_begin, row_end), and partial[row * 4 + k] = that row's ∂/∂params[k] sum. y is
// the forward's output: z^(1/r) = y + δ^(1/r) spares the backward one of its powers.
template <typename T>
void pcen_backward(const T* grad, const T* E, const T* y, const T* params, int64_t F, int64_t n_time, double eps,
                   int64_t row_begin, int64_t row_end, T* grad_E, T* partial);

}  // namespace pyaudiok::cpu
