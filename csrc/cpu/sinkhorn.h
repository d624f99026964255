// Batched log-domain Sinkhorn, CPU kernels. Torch-free: raw pointers and sizes only.
// pyaudiok/ops/sinkhorn.py states the iterations, the stopping rule and the backward.
#pragma once
#include <cstdint>

namespace pyaudiok::cpu {

struct SinkhornShape {
  int64_t n, m;     // rows, columns of one cost matrix
  int64_t n_iters;  // most iterations
  int64_t slots;    // potential slots per batch element: n_iters + 1 (history) or 2 (slot k % 2)
  float eps, tol;   // tol <= 0: no early stop
};

// One batch element: cost[n, m], log_a[n], log_b[m] -> plan[n, m], f[n], g[m], *iters, and the
// potentials of each iteration in hist_f[slots, n], hist_g[slots, m].
void sinkhorn_forward_one(const float* cost, const float* log_a, const float* log_b, const SinkhornShape& s,
                          float* plan, float* f, float* g, int64_t* iters, float* hist_f, float* hist_g);

// Unrolled backward of one batch element (history kept): from the gradients of plan, f and g to
// those of cost, log_a and log_b.
void sinkhorn_backward_one(const float* grad_plan, const float* grad_f, const float* grad_g, const float* cost,
                           const float* log_a, const float* log_b, const float* plan, int64_t iters,
                           const float* hist_f, const float* hist_g, const SinkhornShape& s, float* grad_cost,
                           float* grad_log_a, float* grad_log_b);

}  // namespace pyaudiok::cpu
