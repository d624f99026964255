// Rotary-encoded rows, one pass each way: a row is read once and written once, where tensor ops
// make a gather or a head-split copy and then four passes over strided channel slices (and, for
// the table rows, an index_add in the backward).
#include "rotary.h"
#include "target_clones.h"

#include <algorithm>

namespace pyaudiok::cpu {
namespace {

// dst = rotate(src): pairs (i, i + half) turned by (c, s), channels [2·half, d) copied.
template <typename T>
PYAUDIOK_INLINE void rotate_row(const T* src, T* dst, const T* c, const T* s, int64_t half, int64_t d) {
  for (int64_t i = 0; i < half; ++i) {
    const T a = src[i], b = src[i + half];
    dst[i] = a * c[i] - b * s[i];
    dst[i + half] = b * c[i] + a * s[i];
  }
  std::copy(src + 2 * half, src + d, dst + 2 * half);
}

// dst (+)= rotate⁻¹(g): a rotation's inverse is its transpose.
template <bool Accumulate, typename T>
PYAUDIOK_INLINE void unrotate_row(const T* g, T* dst, const T* c, const T* s, int64_t half, int64_t d) {
  for (int64_t i = 0; i < half; ++i) {
    const T ga = g[i], gb = g[i + half];
    const T a = ga * c[i] + gb * s[i], b = gb * c[i] - ga * s[i];
    if constexpr (Accumulate) {
      dst[i] += a;
      dst[i + half] += b;
    } else {
      dst[i] = a;
      dst[i + half] = b;
    }
  }
  for (int64_t i = 2 * half; i < d; ++i) {
    if constexpr (Accumulate) {
      dst[i] += g[i];
    } else {
      dst[i] = g[i];
    }
  }
}

inline int64_t angle_row(const GatherRotaryShape& s, int64_t n) {
  return s.batched ? (n / s.rows_per_item) * s.T + n % s.T : n % s.T;
}

// For each position r = b·T + t in [r_begin, r_end) and each (part p, head h): visit(x row, out row,
// angle offset, half), with the rows' offsets in x[B, T, P, H, d] and out[P, B, H, T, d] and half = 0
// for the parts that are not rotated. The forward and the backward walk the same pairs of rows.
template <typename Visit>
PYAUDIOK_INLINE void each_head_row(const HeadsShape& s, int64_t r_begin, int64_t r_end, Visit visit) {
  const int64_t half = s.dims / 2;
  for (int64_t r = r_begin; r < r_end; ++r) {
    const int64_t b = r / s.T, t = r % s.T, angle = (s.batched ? r : t) * half;
    for (int64_t p = 0; p < s.P; ++p)
      for (int64_t h = 0; h < s.H; ++h)
        visit(((r * s.P + p) * s.H + h) * s.d, (((p * s.B + b) * s.H + h) * s.T + t) * s.d, angle,
              p < s.rotated ? half : 0);
  }
}

}  // namespace

template <typename T>
PYAUDIOK_CLONES void gather_rotary_forward(const T* rows, const int64_t* index, const T* cos, const T* sin,
                                           const GatherRotaryShape& s, int64_t n_begin, int64_t n_end, T* out) {
  const int64_t half = s.dims / 2;
  for (int64_t n = n_begin; n < n_end; ++n) {
    const int64_t a = angle_row(s, n) * half;
    rotate_row(rows + index[n] * s.d, out + n * s.d, cos + a, sin + a, half, s.d);
  }
}

template <typename T>
PYAUDIOK_CLONES void gather_rotary_backward(const T* grad, const int64_t* index, const T* cos, const T* sin,
                                            const GatherRotaryShape& s, int64_t n_begin, int64_t n_end,
                                            T* grad_rows) {
  const int64_t half = s.dims / 2;
  for (int64_t n = n_begin; n < n_end; ++n) {
    const int64_t a = angle_row(s, n) * half;
    unrotate_row<true>(grad + n * s.d, grad_rows + index[n] * s.d, cos + a, sin + a, half, s.d);
  }
}

template <typename T>
PYAUDIOK_CLONES void split_heads_rotary_forward(const T* x, const T* cos, const T* sin, const HeadsShape& s,
                                                int64_t r_begin, int64_t r_end, T* out) {
  each_head_row(s, r_begin, r_end, [&](int64_t x_row, int64_t out_row, int64_t a, int64_t half) {
    rotate_row(x + x_row, out + out_row, cos + a, sin + a, half, s.d);
  });
}

template <typename T>
PYAUDIOK_CLONES void split_heads_rotary_backward(const T* grad, const T* cos, const T* sin, const HeadsShape& s,
                                                 int64_t r_begin, int64_t r_end, T* grad_x) {
  each_head_row(s, r_begin, r_end, [&](int64_t x_row, int64_t out_row, int64_t a, int64_t half) {
    unrotate_row<false>(grad + out_row, grad_x + x_row, cos + a, sin + a, half, s.d);
  });
}

#define PYAUDIOK_ROTARY_INSTANTIATE(T)                                                                              \
  template void gather_rotary_forward<T>(const T*, const int64_t*, const T*, const T*, const GatherRotaryShape&,  \
                                         int64_t, int64_t, T*);                                                   \
  template void gather_rotary_backward<T>(const T*, const int64_t*, const T*, const T*, const GatherRotaryShape&, \
                                          int64_t, int64_t, T*);                                                  \
  template void split_heads_rotary_forward<T>(const T*, const T*, const T*, const HeadsShape&, int64_t, int64_t,  \
                                              T*);                                                                \
  template void split_heads_rotary_backward<T>(const T*, const T*, const T*, const HeadsShape&, int64_t, int64_t, \
                                               T*);
PYAUDIOK_ROTARY_INSTANTIATE(float)
PYAUDIOK_ROTARY_INSTANTIATE(double)
#undef PYAUDIOK_ROTARY_INSTANTIATE

}  // namespace pyaudiok::cpu
