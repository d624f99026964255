// Gathered, rotary-encoded rows: one pass that reads a (cache-resident) table row and writes the
// output row, instead of a gather then four passes of elementwise ops over strided channel
// slices; the backward likewise rotates back and accumulates in one pass.
#include "gather_rotary.h"
#include "target_clones.h"

#include <algorithm>

namespace pyaudiok::cpu {
namespace {

inline int64_t angle_row(const GatherRotaryShape& s, int64_t n) {
  return s.batched ? (n / s.rows_per_item) * s.T + n % s.T : n % s.T;
}

}  // namespace

template <typename T>
PYAUDIOK_CLONES void gather_rotary_forward(const T* rows, const int64_t* index, const T* cos, const T* sin,
                                           const GatherRotaryShape& s, int64_t n_begin, int64_t n_end, T* out) {
  const int64_t half = s.dims / 2;
  for (int64_t n = n_begin; n < n_end; ++n) {
    const T* src = rows + index[n] * s.d;
    T* dst = out + n * s.d;
    const T *c = cos + angle_row(s, n) * half, *sn = sin + angle_row(s, n) * half;
    for (int64_t i = 0; i < half; ++i) {
      const T a = src[i], b = src[i + half];
      dst[i] = a * c[i] - b * sn[i];
      dst[i + half] = b * c[i] + a * sn[i];
    }
    std::copy(src + s.dims, src + s.d, dst + s.dims);
  }
}

template <typename T>
PYAUDIOK_CLONES void gather_rotary_backward(const T* grad, const int64_t* index, const T* cos, const T* sin,
                                            const GatherRotaryShape& s, int64_t n_begin, int64_t n_end,
                                            T* grad_rows) {
  const int64_t half = s.dims / 2;
  for (int64_t n = n_begin; n < n_end; ++n) {
    const T* g = grad + n * s.d;
    T* dst = grad_rows + index[n] * s.d;
    const T *c = cos + angle_row(s, n) * half, *sn = sin + angle_row(s, n) * half;
    for (int64_t i = 0; i < half; ++i) {  // a rotation's inverse is its transpose
      const T ga = g[i], gb = g[i + half];
      dst[i] += ga * c[i] + gb * sn[i];
      dst[i + half] += gb * c[i] - ga * sn[i];
    }
    for (int64_t i = s.dims; i < s.d; ++i) dst[i] += g[i];
  }
}

#define PYAUDIOK_GATHER_ROTARY_INSTANTIATE(T)                                                                      \
  template void gather_rotary_forward<T>(const T*, const int64_t*, const T*, const T*, const GatherRotaryShape&,  \
                                         int64_t, int64_t, T*);                                                   \
  template void gather_rotary_backward<T>(const T*, const int64_t*, const T*, const T*, const GatherRotaryShape&, \
                                          int64_t, int64_t, T*);
PYAUDIOK_GATHER_ROTARY_INSTANTIATE(float)
PYAUDIOK_GATHER_ROTARY_INSTANTIATE(double)
#undef PYAUDIOK_GATHER_ROTARY_INSTANTIATE

}  // namespace pyaudiok::cpu
