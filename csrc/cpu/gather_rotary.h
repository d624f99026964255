// Rows of a small table gathered per position, the first `dims` channels of each rotated by the
// position's rotary angle (Perceiver AR's cross-attention keys: pyaudiok/ops/gather_rotary.py states
// the contract). Torch-free: raw pointers and sizes.
#pragma once
#include <cstdint>

namespace pyaudiok::cpu {

// Output rows n in [n_begin, n_end) of out[N, d]: out[n] = rotate(rows[index[n]], angle row a(n)),
// with a(n) = (n / per_angle_block) * T + n % T when the angles are per batch item (batched),
// else n % T. cos/sin are [·, T, dims/2]; channel pairs (i, i + dims/2), i < dims/2, rotate; the
// rest are copied.
struct GatherRotaryShape {
  int64_t d, dims, T;
  int64_t rows_per_item;  // H·T: output rows of one batch item (for per-item angles)
  bool batched;
};

template <typename T>
void gather_rotary_forward(const T* rows, const int64_t* index, const T* cos, const T* sin,
                           const GatherRotaryShape& s, int64_t n_begin, int64_t n_end, T* out);

// grad_rows[index[n]] += rotate⁻¹(grad[n]) for n in [n_begin, n_end): the caller gives each thread
// its own grad_rows (rows may repeat across n) and sums them.
template <typename T>
void gather_rotary_backward(const T* grad, const int64_t* index, const T* cos, const T* sin,
                            const GatherRotaryShape& s, int64_t n_begin, int64_t n_end, T* grad_rows);

}  // namespace pyaudiok::cpu
