// Rotary-encoded rows in one pass each way (pyaudiok/ops/rotary.py states the contracts): rows of a
// small table gathered per position (Perceiver AR's cross-attention keys), and a projection's
// output split into heads (the latent queries and keys). Channel pairs (i, i + dims/2), i < dims/2,
// rotate by a position's angle (cos, sin [·, dims/2]); the other channels are copied. Torch-free:
// raw pointers and sizes.
#pragma once
#include <cstdint>

namespace pyaudiok::cpu {

// Output rows n of out[N, d] (N = B·H·T): out[n] = rotate(rows[index[n]]) at angle row
// (n / rows_per_item) * T + n % T when the angles are per batch item (batched), else n % T.
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

// x[B, T, P, H, d] -> out[P, B, H, T, d], parts p < rotated rotary-encoded at angle row b·T + t
// (batched) or t; positions (b, t) = r in [r_begin, r_end) of B·T.
struct HeadsShape {
  int64_t B, T, P, H, d, dims, rotated;
  bool batched;
};

template <typename T>
void split_heads_rotary_forward(const T* x, const T* cos, const T* sin, const HeadsShape& s, int64_t r_begin,
                                int64_t r_end, T* out);

// grad[P, B, H, T, d] -> grad_x[B, T, P, H, d] (the inverse rotation and layout) at positions [r_begin, r_end).
template <typename T>
void split_heads_rotary_backward(const T* grad, const T* cos, const T* sin, const HeadsShape& s, int64_t r_begin,
                                 int64_t r_end, T* grad_x);

}  // namespace pyaudiok::cpu
