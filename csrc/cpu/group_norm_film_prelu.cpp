// GroupNorm → FiLM → PReLU on the CPU, one (item, group) pair at a time. Float runs in 8-lane
// vectors (the last partial vector of a row through a padded copy), double value by value with the
// same code. Every pass streams the group's rows once; sums run in the vector lanes over blocks of
// kBlock values, each block's sums then added in double.
//
// Forward: the statistics, block by block (each block centred on its own mean, then merged with
// Chan's formula in double: no E[x²] − E[x]² cancellation, whatever the mean), then the output.
// The mean is kept as hi + lo in T, so that x − mean = (x − hi) − lo is as exact in float as in the
// reference's float64. Backward: pass 1 sums, per channel row, ∂v, ∂v·x̂ and the PReLU weight's
// terms; pass 2 writes grad_x = rstd·(∂x̂ − mean(∂x̂) − x̂·mean(∂x̂·x̂)), ∂x̂ = ∂v·gain, x̂ and v recomputed
// exactly as the forward computed them (so that both take the same side of the kink).
#include "group_norm_film_prelu.h"
#include "simd.h"
#include "target_clones.h"

#include <algorithm>
#include <cmath>
#include <type_traits>

namespace pyaudiok::cpu {
namespace {

constexpr int64_t kBlock = 512;  // values a lane sum takes in T before it goes into a double

// How the kernels step along a row: 8-lane vectors for float, one value at a time for double.
template <typename T>
struct Lanes;

template <>
struct Lanes<float> {
  using V = simd::v8f;
  static constexpr int64_t kWidth = 8;
  static PYAUDIOK_INLINE V splat(float v) { return simd::splat(v); }
  static PYAUDIOK_INLINE V load(const float* p) { return simd::load8(p); }
  static PYAUDIOK_INLINE void store(float* p, V v) { simd::store8(p, v); }
  // The k < 8 values at p, the other lanes `fill`.
  static PYAUDIOK_INLINE V load_tail(const float* p, int64_t k, float fill) {
    float buffer[8];
    for (int64_t i = 0; i < 8; ++i) buffer[i] = i < k ? p[i] : fill;
    return simd::load8(buffer);
  }
  static PYAUDIOK_INLINE void store_tail(float* p, int64_t k, V v) {
    for (int64_t i = 0; i < k; ++i) p[i] = v[i];
  }
  // v with lanes k and above set to 0.
  static PYAUDIOK_INLINE V first_lanes(V v, int64_t k) {
    for (int64_t i = k; i < 8; ++i) v[i] = 0.0f;
    return v;
  }
  static PYAUDIOK_INLINE V where_positive(V v, V a, V b) { return v > splat(0.0f) ? a : b; }
  static PYAUDIOK_INLINE double sum(V v) {
    double s = 0;
    for (int i = 0; i < 8; ++i) s += v[i];
    return s;
  }
};

template <>
struct Lanes<double> {
  using V = double;
  static constexpr int64_t kWidth = 1;
  static PYAUDIOK_INLINE V splat(double v) { return v; }
  static PYAUDIOK_INLINE V load(const double* p) { return *p; }
  static PYAUDIOK_INLINE void store(double* p, V v) { *p = v; }
  static PYAUDIOK_INLINE V load_tail(const double* p, int64_t, double) { return *p; }  // never partial
  static PYAUDIOK_INLINE void store_tail(double* p, int64_t, V v) { *p = v; }
  static PYAUDIOK_INLINE V first_lanes(V v, int64_t) { return v; }
  static PYAUDIOK_INLINE V where_positive(V v, V a, V b) { return v > 0 ? a : b; }
  static PYAUDIOK_INLINE double sum(V v) { return v; }
};

// A (possibly partial) vector at p: `full` is std::true_type for whole vectors.
template <typename T, typename Full>
PYAUDIOK_INLINE typename Lanes<T>::V load_at(const T* p, int64_t k, T fill, Full) {
  if constexpr (Full::value) return Lanes<T>::load(p);
  else return Lanes<T>::load_tail(p, k, fill);
}

template <typename T, typename Full>
PYAUDIOK_INLINE void store_at(T* p, int64_t k, typename Lanes<T>::V v, Full) {
  if constexpr (Full::value) Lanes<T>::store(p, v);
  else Lanes<T>::store_tail(p, k, v);
}

// step(t, k, u, full) over [0, n) in vectors of k values (k = the width but for the last), U whole
// vectors per iteration (u = 0..U−1: which of U independent accumulators to use).
template <typename T, int U, typename Step>
PYAUDIOK_INLINE void along(int64_t n, Step&& step) {
  constexpr int64_t W = Lanes<T>::kWidth;
  int64_t t = 0;
  for (; t + U * W <= n; t += U * W)
    for (int u = 0; u < U; ++u) step(t + u * W, W, u, std::true_type{});
  for (; t + W <= n; t += W) step(t, W, 0, std::true_type{});
  if (t < n) step(t, n - t, 0, std::false_type{});
}

constexpr int kChains = 4;  // independent accumulators: the adds' latency, not their rate, would bound one

template <typename V>
PYAUDIOK_INLINE V chain_total(const V (&chains)[kChains]) {
  V total = chains[0];
  for (int u = 1; u < kChains; ++u) total += chains[u];
  return total;
}

// Count, mean and sum of squared deviations of the values seen so far, merged block by block.
struct Moments {
  double n = 0, mean = 0, m2 = 0;

  void merge(double n_b, double mean_b, double m2_b) {
    const double total = n + n_b, delta = mean_b - mean;
    mean += delta * (n_b / total);
    m2 += m2_b + delta * delta * (n * n_b / total);
    n = total;
  }
};

// The moments of the m values at p (m ≥ 1, in cache): their mean in T's lanes as a centre, then the
// centred sums.
template <typename T>
PYAUDIOK_INLINE void add_block(const T* p, int64_t m, Moments& acc) {
  using L = Lanes<T>;
  using V = typename L::V;
  V s[kChains] = {};
  along<T, kChains>(m, [&](int64_t t, int64_t k, int u, auto full) { s[u] += load_at(p + t, k, T(0), full); });
  const T centre = static_cast<T>(L::sum(chain_total(s)) / static_cast<double>(m));
  const V c = L::splat(centre);
  V d1[kChains] = {}, d2[kChains] = {};
  along<T, kChains>(m, [&](int64_t t, int64_t k, int u, auto full) {
    const V d = load_at(p + t, k, centre, full) - c;
    d1[u] += d;
    d2[u] += d * d;
  });
  const double n_b = static_cast<double>(m), s1 = L::sum(chain_total(d1));
  acc.merge(n_b, centre + s1 / n_b, std::max(0.0, L::sum(chain_total(d2)) - s1 * s1 / n_b));
}

// A pair's mean as hi + lo in T, and its rstd: what both passes of either direction use.
template <typename T>
struct Centre {
  T hi, lo, rstd;
};

template <typename T>
PYAUDIOK_INLINE Centre<T> group_centre(const T* group, int64_t n, double eps) {
  Moments acc;
  for (int64_t b = 0; b < n; b += kBlock) add_block(group + b, std::min(kBlock, n - b), acc);
  if (n == 0) return {T(0), T(0), static_cast<T>(1 / std::sqrt(eps))};
  const T hi = static_cast<T>(acc.mean);
  return {hi, static_cast<T>(acc.mean - hi), static_cast<T>(1 / std::sqrt(acc.m2 / acc.n + eps))};
}

// One channel row's constants: v = (x − hi − lo)·a + o, a = rstd·gain; PReLU slope alpha.
template <typename T>
struct Row {
  typename Lanes<T>::V hi, lo, a, o, alpha;

  Row(const Centre<T>& m, T a_, T o_, T alpha_)
      : hi(Lanes<T>::splat(m.hi)), lo(Lanes<T>::splat(m.lo)), a(Lanes<T>::splat(a_)), o(Lanes<T>::splat(o_)),
        alpha(Lanes<T>::splat(alpha_)) {}

  // x − mean (what x̂ is before the rstd) of a vector at x; the padding of a partial one gives −lo.
  template <typename Full>
  PYAUDIOK_INLINE typename Lanes<T>::V centred(const T* x, int64_t k, T fill, Full full) const {
    return (load_at(x, k, fill, full) - hi) - lo;
  }
};

template <typename T>
PYAUDIOK_INLINE T slope(const T* prelu, const GroupShape& s, int64_t c) {
  return prelu[s.n_prelu == 1 ? 0 : c];
}

template <typename T>
PYAUDIOK_INLINE void forward_row(const T* x, const Row<T>& r, T fill, int64_t n, T* y) {
  using L = Lanes<T>;
  along<T, 1>(n, [&](int64_t t, int64_t k, int, auto full) {
    const auto v = r.centred(x + t, k, fill, full) * r.a + r.o;
    store_at(y + t, k, L::where_positive(v, v, v * r.alpha), full);
  });
}

// Pass 1 of the backward over one row: Σ ∂v, Σ ∂v·(x − mean), Σ [v ≤ 0]·v·grad, into sums[0..2].
template <typename T>
PYAUDIOK_INLINE void row_sums(const T* g, const T* x, const Row<T>& r, T fill, int64_t n, double* sums) {
  using L = Lanes<T>;
  using V = typename L::V;
  for (int64_t b = 0; b < n; b += kBlock) {
    V s1[2] = {}, s2[2] = {}, s3[2] = {};
    along<T, 2>(std::min(kBlock, n - b), [&](int64_t t, int64_t k, int u, auto full) {
      const V xc = r.centred(x + b + t, k, fill, full), v = xc * r.a + r.o, gv = load_at(g + b + t, k, T(0), full);
      V dv = L::where_positive(v, gv, r.alpha * gv), dw = L::where_positive(v, L::splat(T(0)), v * gv);
      if constexpr (!decltype(full)::value) {  // padded lanes: no terms (0·α is NaN for α = ±∞)
        dv = L::first_lanes(dv, k);
        dw = L::first_lanes(dw, k);
      }
      s1[u] += dv;
      s2[u] += dv * xc;
      s3[u] += dw;
    });
    sums[0] += L::sum(s1[0] + s1[1]);
    sums[1] += L::sum(s2[0] + s2[1]);
    sums[2] += L::sum(s3[0] + s3[1]);
  }
}

// Pass 2 over one row: grad_x = (∂v·gain − (m1 + (x − mean)·m2))·rstd, with m1 = mean(∂x̂) and
// m2 = rstd·mean(∂x̂·x̂). ∂v·gain and m1 are rounded alike: a group of one value gets exactly 0.
template <typename T>
PYAUDIOK_INLINE void grad_row(const T* g, const T* x, const Row<T>& r, T fill, T gain, T m1, T m2, T rstd, int64_t n,
                              T* grad_x) {
  using L = Lanes<T>;
  using V = typename L::V;
  const V gain_v = L::splat(gain), m1_v = L::splat(m1), m2_v = L::splat(m2), rstd_v = L::splat(rstd);
  along<T, 1>(n, [&](int64_t t, int64_t k, int, auto full) {
    const V xc = r.centred(x + t, k, fill, full), v = xc * r.a + r.o, gv = load_at(g + t, k, T(0), full);
    const V dv = L::where_positive(v, gv, r.alpha * gv);
    const V dxhat = dv * gain_v + T(0);  // rounded on its own (+ 0 ends the multiply-add), as m1's terms were
    store_at(grad_x + t, k, (dxhat - (m1_v + xc * m2_v)) * rstd_v, full);
  });
}

}  // namespace

template <typename T>
PYAUDIOK_CLONES void group_norm_film_prelu_forward(const T* x, const T* gain, const T* offset, const T* prelu,
                                                   GroupShape s, double eps, int64_t pair_begin, int64_t pair_end,
                                                   T* y, T* stats) {
  const int64_t per_group = s.channels / s.groups, n = per_group * s.n_time;
  for (int64_t pair = pair_begin; pair < pair_end; ++pair) {
    const int64_t b = pair / s.groups, c0 = (pair % s.groups) * per_group, first = pair * n;
    const Centre<T> m = group_centre(x + first, n, eps);
    stats[3 * pair] = m.hi;
    stats[3 * pair + 1] = m.lo;
    stats[3 * pair + 2] = m.rstd;
    for (int64_t j = 0; j < per_group; ++j) {
      const int64_t c = c0 + j, bc = b * s.channels + c, row = first + j * s.n_time;
      const Row<T> r(m, static_cast<T>(static_cast<double>(m.rstd) * gain[bc]), offset[bc], slope(prelu, s, c));
      forward_row(x + row, r, m.hi, s.n_time, y + row);
    }
  }
}

template <typename T>
PYAUDIOK_CLONES void group_norm_film_prelu_backward(const T* grad, const T* x, const T* gain, const T* offset,
                                                    const T* prelu, const T* stats, GroupShape s,
                                                    int64_t pair_begin, int64_t pair_end, T* grad_x, T* d_gain,
                                                    T* d_offset, T* d_prelu) {
  const int64_t per_group = s.channels / s.groups, n = per_group * s.n_time;
  for (int64_t pair = pair_begin; pair < pair_end; ++pair) {
    const int64_t b = pair / s.groups, c0 = (pair % s.groups) * per_group, first = pair * n;
    const Centre<T> m{stats[3 * pair], stats[3 * pair + 1], stats[3 * pair + 2]};
    const double r = m.rstd;
    auto row_of = [&](int64_t j) {
      const int64_t c = c0 + j, bc = b * s.channels + c;
      return Row<T>(m, static_cast<T>(r * gain[bc]), offset[bc], slope(prelu, s, c));
    };
    double k1 = 0, k2 = 0;  // Σ ∂x̂ and Σ ∂x̂·x̂ over the group, ∂x̂ = ∂v·gain
    for (int64_t j = 0; j < per_group; ++j) {
      const int64_t bc = b * s.channels + c0 + j, row = first + j * s.n_time;
      double sums[3] = {};
      row_sums(grad + row, x + row, row_of(j), m.hi, s.n_time, sums);
      const double dv_xhat = sums[1] * r;
      k1 += static_cast<double>(gain[bc]) * sums[0];
      k2 += static_cast<double>(gain[bc]) * dv_xhat;
      d_offset[bc] = static_cast<T>(sums[0]);
      d_gain[bc] = static_cast<T>(dv_xhat);
      d_prelu[bc] = static_cast<T>(sums[2]);
    }
    const double inv_n = n > 0 ? 1.0 / static_cast<double>(n) : 0.0;
    const T m1 = static_cast<T>(k1 * inv_n), m2 = static_cast<T>(r * k2 * inv_n);
    for (int64_t j = 0; j < per_group; ++j) {
      const int64_t row = first + j * s.n_time;
      grad_row(grad + row, x + row, row_of(j), m.hi, gain[b * s.channels + c0 + j], m1, m2, m.rstd, s.n_time,
               grad_x + row);
    }
  }
}

#define PYAUDIOK_GNFP_INSTANTIATE(T)                                                                            \
  template void group_norm_film_prelu_forward<T>(const T*, const T*, const T*, const T*, GroupShape, double,   \
                                                 int64_t, int64_t, T*, T*);                                    \
  template void group_norm_film_prelu_backward<T>(const T*, const T*, const T*, const T*, const T*, const T*,  \
                                                  GroupShape, int64_t, int64_t, T*, T*, T*, T*);
PYAUDIOK_GNFP_INSTANTIATE(float)
PYAUDIOK_GNFP_INSTANTIATE(double)
#undef PYAUDIOK_GNFP_INSTANTIATE

}  // namespace pyaudiok::cpu
