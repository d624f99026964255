// DIVE's collar-aware VAD loss, one batch item at a time (collar_vad.h).
#include "collar_vad.h"
#include "simd.h"
#include "target_clones.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace pyaudiok::cpu {

template <typename T>
void collar_keep(const T* reference, const CollarVadShape& s, int32_t* edges, uint8_t* keep) {
  if (s.hi < s.lo) {  // no collar: every frame counts
    std::fill(keep, keep + s.T, uint8_t{1});
    return;
  }
  // edges[e + 1] = boundaries among edges 0..e (a prefix count, so any window is two reads).
  edges[0] = 0;
  for (int64_t e = 0; e <= s.T; ++e) {
    bool boundary = false;
    for (int64_t r = 0; r < s.S && !boundary; ++r) {
      const T* row = reference + r * s.T;
      const T before = e > 0 ? row[e - 1] : T(0), after = e < s.T ? row[e] : T(0);
      boundary = before != after;
    }
    edges[e + 1] = edges[e] + (boundary ? 1 : 0);
  }
  for (int64_t t = 0; t < s.T; ++t) {
    const int64_t first = std::max<int64_t>(t + s.lo, 0), last = std::min<int64_t>(t + s.hi, s.T);
    keep[t] = first > last || edges[last + 1] == edges[first];
  }
}

namespace {

using namespace simd;

// BCE with logits, stably: max(x, 0) − x·y + log(1 + exp(−|x|)) (PyTorch's formula).
inline double bce(double x, double y) { return std::max(x, 0.0) - x * y + std::log1p(std::exp(-std::abs(x))); }

inline double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

// One row's Σ of BCE over the kept frames (keep: 1 or 0 per frame, in the row's type).
template <typename T>
double row_sum(const T* x, const T* y, const T* keep, int64_t n) {
  double total = 0.0;
  for (int64_t t = 0; t < n; ++t) {
    if (keep[t] != T(0)) total += bce(static_cast<double>(x[t]), static_cast<double>(y[t]));
  }
  return total;
}

template <typename T>
void row_grad(const T* x, const T* y, const T* keep, int64_t n, double scale, T* g) {
  for (int64_t t = 0; t < n; ++t) {
    g[t] = keep[t] != T(0) ? static_cast<T>(scale * (sigmoid(static_cast<double>(x[t])) - static_cast<double>(y[t])))
                           : T(0);
  }
}

// float rows 8 frames at a time, with the vector exp and log of simd.h (~2 ulp): the scalar
// transcendentals bound the loss at ~10 ns a frame. Sums per vector in float, per row in double.
template <>
PYAUDIOK_CLONES double row_sum<float>(const float* x, const float* y, const float* keep, int64_t n) {
  const v8f zero = splat(0.0f), one = splat(1.0f);
  v8f acc = zero;
  int64_t t = 0;
  for (; t + 8 <= n; t += 8) {
    const v8f xv = load8(x + t), yv = load8(y + t);
    const v8f l = vmax(xv, zero) - xv * yv + log8(one + exp8(-vmax(xv, -xv)));
    acc += load8(keep + t) != zero ? l : zero;
  }
  double total = 0.0;
  for (int i = 0; i < 8; ++i) total += acc[i];
  for (; t < n; ++t) {
    if (keep[t] != 0.0f) total += bce(x[t], y[t]);
  }
  return total;
}

template <>
PYAUDIOK_CLONES void row_grad<float>(const float* x, const float* y, const float* keep, int64_t n, double scale,
                                     float* g) {
  const v8f zero = splat(0.0f), one = splat(1.0f), sv = splat(static_cast<float>(scale));
  int64_t t = 0;
  for (; t + 8 <= n; t += 8) {
    const v8f xv = load8(x + t);
    const v8f grad = (one / (one + exp8(-xv)) - load8(y + t)) * sv;
    store8(g + t, load8(keep + t) != zero ? grad : zero);
  }
  for (; t < n; ++t) g[t] = keep[t] != 0.0f ? static_cast<float>(scale * (sigmoid(x[t]) - y[t])) : 0.0f;
}

// The kept frames as 1 / 0 in the rows' type, for vector loads next to the rows.
template <typename T>
std::vector<T> weights_of(const uint8_t* keep, int64_t n) {
  std::vector<T> weights(n);
  for (int64_t t = 0; t < n; ++t) weights[t] = keep[t] ? T(1) : T(0);
  return weights;
}

}  // namespace

template <typename T>
void collar_vad_sum(const T* logits, const T* reference, const int64_t* order, const uint8_t* keep,
                    const CollarVadShape& s, double* sum, int64_t* count) {
  const std::vector<T> weights = weights_of<T>(keep, s.T);
  const int64_t kept = std::count(keep, keep + s.T, uint8_t{1});
  double total = 0.0;
  int64_t rows = 0;
  for (int64_t n = 0; n < s.N; ++n) {
    if (order[n] < 0) continue;
    total += row_sum<T>(logits + n * s.T, reference + order[n] * s.T, weights.data(), s.T);
    ++rows;
  }
  *sum = total;
  *count = rows * kept;
}

template <typename T>
void collar_vad_grad(const T* logits, const T* reference, const int64_t* order, const uint8_t* keep,
                     const CollarVadShape& s, double scale, T* grad) {
  const std::vector<T> weights = weights_of<T>(keep, s.T);
  for (int64_t n = 0; n < s.N; ++n) {
    T* g = grad + n * s.T;
    if (order[n] < 0) {
      std::fill(g, g + s.T, T(0));
      continue;
    }
    row_grad<T>(logits + n * s.T, reference + order[n] * s.T, weights.data(), s.T, scale, g);
  }
}

#define PYAUDIOK_COLLAR_VAD(T)                                                                                     \
  template void collar_keep<T>(const T*, const CollarVadShape&, int32_t*, uint8_t*);                             \
  template void collar_vad_sum<T>(const T*, const T*, const int64_t*, const uint8_t*, const CollarVadShape&,     \
                                  double*, int64_t*);                                                              \
  template void collar_vad_grad<T>(const T*, const T*, const int64_t*, const uint8_t*, const CollarVadShape&,    \
                                   double, T*);
PYAUDIOK_COLLAR_VAD(float)
PYAUDIOK_COLLAR_VAD(double)
#undef PYAUDIOK_COLLAR_VAD

}  // namespace pyaudiok::cpu
