// SI-SDR statistics in one sweep over time per batch element: the signals are widened to double
// and centred block by block (the means come from a first, cheap pass), and every product of the
// block (N + M norms, N·M cross terms) is summed from the same L1-resident rows, 4 lanes at a time.
// Everything is accumulated in double, so the statistics are exact to double sums, as the
// reference's float64 route.
#include "si_sdr.h"
#include "target_clones.h"

#include <algorithm>
#include <vector>

namespace pyaudiok::cpu {
namespace {

typedef double v4d __attribute__((vector_size(32)));
typedef double v4d_u __attribute__((vector_size(32), aligned(8)));

constexpr int64_t kBlock = 512;  // samples per block: N + M rows of it stay in L1

inline v4d load4(const double* p) { return *reinterpret_cast<const v4d_u*>(p); }

// Σ_t a[t] b[t] over one block (len a multiple of 4 after zero padding).
// Four accumulators: a multiply-add waits ~4 cycles on its predecessor in the same chain.
PYAUDIOK_CLONES
double dot(const double* a, const double* b, int64_t len) {
  v4d acc0{}, acc1{}, acc2{}, acc3{};
  int64_t t = 0;
  for (; t + 16 <= len; t += 16) {
    acc0 += load4(a + t) * load4(b + t);
    acc1 += load4(a + t + 4) * load4(b + t + 4);
    acc2 += load4(a + t + 8) * load4(b + t + 8);
    acc3 += load4(a + t + 12) * load4(b + t + 12);
  }
  for (; t < len; t += 4) acc0 += load4(a + t) * load4(b + t);
  const v4d acc = (acc0 + acc1) + (acc2 + acc3);
  return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

typedef float v4f_u __attribute__((vector_size(16), aligned(4)));

// Four values widened to double (one instruction; the baseline compiler converts one by one).
inline v4d load4(const float* p) { return __builtin_convertvector(*reinterpret_cast<const v4f_u*>(p), v4d); }

// Σ x over a row in double, four vector accumulators (a single running sum would wait on each
// add's latency: that first pass then cost more than the whole sweep of products).
template <typename T>
PYAUDIOK_CLONES double row_sum(const T* x, int64_t n) {
  v4d acc0{}, acc1{}, acc2{}, acc3{};
  int64_t t = 0;
  for (; t + 16 <= n; t += 16) {
    acc0 += load4(x + t);
    acc1 += load4(x + t + 4);
    acc2 += load4(x + t + 8);
    acc3 += load4(x + t + 12);
  }
  double sum = 0.0;
  for (; t < n; ++t) sum += static_cast<double>(x[t]);
  const v4d acc = (acc0 + acc1) + (acc2 + acc3);
  return sum + (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

template <typename T>
double mean(const T* x, int64_t n_time) {
  return row_sum(x, n_time) / static_cast<double>(n_time);
}

// rows[k] = (src_k[t0 : t0 + len] − shift_k) in double, zero-padded to a multiple of 4.
template <typename T>
PYAUDIOK_CLONES void widen_block(const T* src, int64_t rows, int64_t n_time, int64_t t0, int64_t len,
                                 const double* shift, double* block) {
  const int64_t padded = (len + 3) / 4 * 4;
  for (int64_t k = 0; k < rows; ++k) {
    const T* s = src + k * n_time + t0;
    double* d = block + k * kBlock;
    int64_t t = 0;
    for (; t + 4 <= len; t += 4) *reinterpret_cast<v4d_u*>(d + t) = load4(s + t) - shift[k];
    for (; t < len; ++t) d[t] = static_cast<double>(s[t]) - shift[k];
    std::fill(d + len, d + padded, 0.0);
  }
}

}  // namespace

template <typename T>
void si_sdr_stats_one(const T* estimates, const T* references, int64_t N, int64_t M, int64_t n_time, bool zero_mean,
                      double* ee, double* rr, double* er) {
  std::vector<double> shift_e(N, 0.0), shift_r(M, 0.0);
  if (zero_mean) {
    for (int64_t n = 0; n < N; ++n) shift_e[n] = mean(estimates + n * n_time, n_time);
    for (int64_t m = 0; m < M; ++m) shift_r[m] = mean(references + m * n_time, n_time);
  }
  std::fill(ee, ee + N, 0.0);
  std::fill(rr, rr + M, 0.0);
  std::fill(er, er + N * M, 0.0);
  std::vector<double> e_block(N * kBlock), r_block(M * kBlock);
  for (int64_t t0 = 0; t0 < n_time; t0 += kBlock) {
    const int64_t len = std::min(kBlock, n_time - t0), padded = (len + 3) / 4 * 4;
    widen_block(estimates, N, n_time, t0, len, shift_e.data(), e_block.data());
    widen_block(references, M, n_time, t0, len, shift_r.data(), r_block.data());
    for (int64_t n = 0; n < N; ++n) {
      const double* e = e_block.data() + n * kBlock;
      ee[n] += dot(e, e, padded);
      for (int64_t m = 0; m < M; ++m) er[n * M + m] += dot(e, r_block.data() + m * kBlock, padded);
    }
    for (int64_t m = 0; m < M; ++m) {
      const double* r = r_block.data() + m * kBlock;
      rr[m] += dot(r, r, padded);
    }
  }
}

template void si_sdr_stats_one<float>(const float*, const float*, int64_t, int64_t, int64_t, bool, double*, double*,
                                      double*);
template void si_sdr_stats_one<double>(const double*, const double*, int64_t, int64_t, int64_t, bool, double*,
                                       double*, double*);

}  // namespace pyaudiok::cpu
