// Soft rank / soft sort by projection onto the permutahedron (sort + pool-adjacent-violators),
// CPU kernels. Torch-free: raw pointers and sizes only. pyaudiok/ops/soft_rank.py states the math.
#pragma once
#include <cstdint>

namespace pyaudiok::cpu {

struct SoftSortRankFlags {
  float strength;   // regularization strength ε > 0
  bool kl;          // KL instead of L2 regularization
  bool rank;        // soft_rank (else soft_sort)
  bool descending;  // rank on −x / sort in decreasing order
};

// Rows [row_begin, row_end) of x[R, n]: out[R, n] (ranks in input order, sorted values in sorted
// order), perm[R, n] (input index of each sorted position, decreasing order of the ranked key, ties
// by index) and blocks[R, n] (last sorted position of each position's PAV block).
void soft_sort_rank_rows(const float* x, int64_t n, SoftSortRankFlags flags, int64_t row_begin,
                         int64_t row_end, float* out, int64_t* perm, int32_t* blocks);

// Vector-Jacobian product of the forward above for the same rows: grad_x from grad_out.
void soft_sort_rank_backward_rows(const float* grad_out, const float* x, const float* out, const int64_t* perm,
                                  const int32_t* blocks, int64_t n, SoftSortRankFlags flags, int64_t row_begin,
                                  int64_t row_end, float* grad_x);

}  // namespace pyaudiok::cpu
