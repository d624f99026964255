// SI-SDR of every estimate/reference pair in one sweep over time (pyaudiok/ops/si_sdr.py has the math).
//
// The signals are read once. Each block of samples is shifted by a per-row constant c (the mean of
// the row's first samples: a cheap centre) into an L1-resident buffer, and register-tiled
// micro-kernels sum every product a pair needs plus each row's plain sum. The exact centring comes
// at the end from those sums, an identity for any shift:
//     Σ (e − ē)(r − r̄) = Σ (e − c_e)(r − c_r) − S_e S_r / T,   S_x = Σ (x − c_x).
// Products are taken in the input's precision and every block's sums are added in double: float64
// inputs get statistics as exact as the reference's float64 route; float32 inputs get float32
// products summed over at most 32 terms per lane before they reach double (the Triton backend's
// accuracy class), at twice the lanes per instruction. A run over [t_begin, t_end) writes partial
// sums, so one long item can be split over threads.
#include "si_sdr.h"
#include "target_clones.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace pyaudiok::cpu {
namespace {

// Blocks hold the shifted rows in the input's own precision: float inputs are multiplied in float,
// eight lanes at a time, and each block's sums (at most 256 / 8 = 32 products per lane) are added
// into double; double inputs stay double throughout.
template <typename S>
struct Lanes {
  typedef S vec __attribute__((vector_size(32)));
  typedef S vec_u __attribute__((vector_size(32), aligned(alignof(S))));
  static constexpr int n = 32 / sizeof(S);
  static PYAUDIOK_INLINE vec load(const S* p) { return *reinterpret_cast<const vec_u*>(p); }
  static PYAUDIOK_INLINE double sum(vec v) {
    double total = 0.0;
    for (int i = 0; i < n; ++i) total += static_cast<double>(v[i]);
    return total;
  }
};

constexpr int64_t kBlock = 256;  // samples per block: up to 16 rows of it stay in L1
constexpr int64_t kStep = 32;    // the longest unrolled step of the micro-kernels (4 × 8 float lanes)
constexpr int64_t kShiftSamples = 256;

// Unroll over time so that about 6–8 sums are in flight: a multiply-add waits ~4 cycles on the
// previous one into the same sum, and the core starts two per cycle (more would spill registers).
constexpr int unroll_for(int sums) { return sums >= 6 ? 1 : sums >= 3 ? 2 : 4; }

// cross[a·ld + c] += Σ_t e_a[t] r_c[t] for A estimate rows and C reference rows of one block.
template <int A, int C, typename S>
PYAUDIOK_INLINE void cross_tile(const S* e, const S* r, int64_t len, double* cross, int64_t ld) {
  using L = Lanes<S>;
  constexpr int U = unroll_for(A * C);
  typename L::vec acc[U][A][C] = {};
  for (int64_t t = 0; t < len; t += L::n * U)
    for (int u = 0; u < U; ++u) {
      typename L::vec ev[A];
      for (int a = 0; a < A; ++a) ev[a] = L::load(e + a * kBlock + t + L::n * u);
      for (int c = 0; c < C; ++c) {
        const typename L::vec rv = L::load(r + c * kBlock + t + L::n * u);
        for (int a = 0; a < A; ++a) acc[u][a][c] += ev[a] * rv;
      }
    }
  for (int a = 0; a < A; ++a)
    for (int c = 0; c < C; ++c) {
      typename L::vec sum = acc[0][a][c];
      for (int u = 1; u < U; ++u) sum += acc[u][a][c];
      cross[a * ld + c] += L::sum(sum);
    }
}

// sums[k] += Σ_t x_k[t] and squares[k] += Σ_t x_k[t]² for K rows of one block.
template <int K, typename S>
PYAUDIOK_INLINE void moment_tile(const S* x, int64_t len, double* sums, double* squares) {
  using L = Lanes<S>;
  constexpr int U = unroll_for(2 * K);
  typename L::vec s1[U][K] = {}, s2[U][K] = {};
  for (int64_t t = 0; t < len; t += L::n * U)
    for (int u = 0; u < U; ++u)
      for (int k = 0; k < K; ++k) {
        const typename L::vec v = L::load(x + k * kBlock + t + L::n * u);
        s1[u][k] += v;
        s2[u][k] += v * v;
      }
  for (int k = 0; k < K; ++k) {
    typename L::vec a = s1[0][k], b = s2[0][k];
    for (int u = 1; u < U; ++u) a += s1[u][k], b += s2[u][k];
    sums[k] += L::sum(a);
    squares[k] += L::sum(b);
  }
}

template <int A, typename S>
PYAUDIOK_INLINE void cross_rows(const S* e, const S* r, int64_t M, int64_t len, double* cross) {
  int64_t m = 0;
  for (; m + 4 <= M; m += 4) cross_tile<A, 4>(e, r + m * kBlock, len, cross + m, M);
  switch (M - m) {
    case 3: cross_tile<A, 3>(e, r + m * kBlock, len, cross + m, M); break;
    case 2: cross_tile<A, 2>(e, r + m * kBlock, len, cross + m, M); break;
    case 1: cross_tile<A, 1>(e, r + m * kBlock, len, cross + m, M); break;
  }
}

template <typename S>
PYAUDIOK_INLINE void moments(const S* x, int64_t rows, int64_t len, double* sums, double* squares) {
  int64_t k = 0;
  for (; k + 4 <= rows; k += 4) moment_tile<4>(x + k * kBlock, len, sums + k, squares + k);
  switch (rows - k) {
    case 3: moment_tile<3>(x + k * kBlock, len, sums + k, squares + k); break;
    case 2: moment_tile<2>(x + k * kBlock, len, sums + k, squares + k); break;
    case 1: moment_tile<1>(x + k * kBlock, len, sums + k, squares + k); break;
  }
}

// block[k] = src_k[t0 : t0 + len] − shift[k], zero-padded to `padded`; the shifts are values of
// the input type (si_sdr_shifts rounds them), so the subtraction is the only rounding.
template <typename T>
PYAUDIOK_INLINE void shift_block(const T* __restrict src, int64_t rows, int64_t n_time, int64_t t0, int64_t len,
                        int64_t padded, const double* shift, T* __restrict block) {
  for (int64_t k = 0; k < rows; ++k) {
    const T* __restrict s = src + k * n_time + t0;
    T* __restrict d = block + k * kBlock;
    const T c = static_cast<T>(shift[k]);
    for (int64_t t = 0; t < len; ++t) d[t] = s[t] - c;
    for (int64_t t = len; t < padded; ++t) d[t] = T(0);
  }
}

}  // namespace

template <typename T>
PYAUDIOK_CLONES void si_sdr_shifts(const T* rows, int64_t n_rows, int64_t n_time, double* shift) {
  const int64_t n = std::min(n_time, kShiftSamples);
  for (int64_t k = 0; k < n_rows; ++k) {
    double sum = 0.0;
    for (int64_t t = 0; t < n; ++t) sum += static_cast<double>(rows[k * n_time + t]);
    shift[k] = static_cast<T>(sum / static_cast<double>(n));  // a value of T: exact in every block
  }
}

template <typename T>
PYAUDIOK_CLONES void si_sdr_partial(const T* estimates, const T* references, int64_t N, int64_t M, int64_t n_time,
                                    int64_t t_begin, int64_t t_end, const double* shift, double* partial) {
  const int64_t K = N + M;
  double* sums = partial;
  double* squares = partial + K;
  double* cross = partial + 2 * K;
  std::fill(partial, partial + si_sdr_partial_size(N, M), 0.0);
  std::vector<T> block(K * kBlock);
  for (int64_t t0 = t_begin; t0 < t_end; t0 += kBlock) {
    const int64_t len = std::min(kBlock, t_end - t0), padded = (len + kStep - 1) / kStep * kStep;
    shift_block(estimates, N, n_time, t0, len, padded, shift, block.data());
    shift_block(references, M, n_time, t0, len, padded, shift + N, block.data() + N * kBlock);
    const T* r = block.data() + N * kBlock;
    int64_t n = 0;
    for (; n + 2 <= N; n += 2) cross_rows<2>(block.data() + n * kBlock, r, M, padded, cross + n * M);
    if (n < N) cross_rows<1>(block.data() + n * kBlock, r, M, padded, cross + n * M);
    moments(block.data(), K, padded, sums, squares);
  }
}

template <typename T>
void si_sdr_finish(const double* partial, int64_t N, int64_t M, int64_t n_time, bool zero_mean, double eps,
                   double* ee, double* rr, double* er, T* matrix) {
  const int64_t K = N + M;
  const double* sums = partial;
  const double* squares = partial + K;
  const double* cross = partial + 2 * K;
  // With zero_mean the shifts were near-means and the sums restore the exact centring; without
  // it the shifts were zero and the sums are not used.
  const double inv_t = zero_mean ? 1.0 / static_cast<double>(n_time) : 0.0;
  for (int64_t n = 0; n < N; ++n) ee[n] = std::max(squares[n] - sums[n] * sums[n] * inv_t, 0.0);
  for (int64_t m = 0; m < M; ++m) rr[m] = std::max(squares[N + m] - sums[N + m] * sums[N + m] * inv_t, 0.0);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t m = 0; m < M; ++m) {
      const double dot = cross[n * M + m] - sums[n] * sums[N + m] * inv_t;
      er[n * M + m] = dot;
      // SI-SDR from the statistics, as _si_sdr_from_stats in pyaudiok/ops/si_sdr.py.
      const double alpha = dot / (rr[m] + eps), target = alpha * alpha * rr[m];
      const double noise = std::max(ee[n] - 2.0 * alpha * dot + target, 0.0);
      matrix[n * M + m] = static_cast<T>(10.0 * std::log10((target + eps) / (noise + eps)));
    }
}

// A score's class: NaN and −inf (a diverged estimate) rank below every finite score, +inf above.
// Totals compare by their summed classes first, then by the sum of their finite scores, so one NaN
// pair does not make every assignment's total NaN and the other pairs still decide.
inline int64_t score_class(double score) {
  return std::isnan(score) || score == -INFINITY ? -1 : score == INFINITY ? 1 : 0;
}

template <typename T>
void best_assignment(const T* scores, int64_t N, int64_t M, int64_t* perm) {
  // Depth-first over partial assignments, columns tried in increasing order, so leaves come in
  // lexicographic order and a strictly larger total is needed to replace the best so far.
  int64_t current[kMaxExhaustiveSources];
  double partial[kMaxExhaustiveSources + 1] = {0.0};
  int64_t classes[kMaxExhaustiveSources + 1] = {0};
  bool used[kMaxExhaustiveSources] = {};
  double best = -INFINITY;
  int64_t best_class = 0;
  bool found = false;
  int64_t depth = 0;
  current[0] = -1;
  while (depth >= 0) {
    if (current[depth] >= 0) used[current[depth]] = false;  // leave the column tried last
    int64_t col = current[depth] + 1;
    while (col < M && used[col]) ++col;
    if (col == M) {  // this row has no column left: back up
      --depth;
      continue;
    }
    current[depth] = col;
    used[col] = true;
    const double score = static_cast<double>(scores[depth * M + col]);
    const int64_t cls = score_class(score);
    classes[depth + 1] = classes[depth] + cls;
    partial[depth + 1] = partial[depth] + (cls == 0 ? score : 0.0);
    if (depth + 1 < N) {
      current[++depth] = -1;
    } else if (!found || classes[N] > best_class || (classes[N] == best_class && partial[N] > best)) {
      best = partial[N];
      best_class = classes[N];
      found = true;
      std::copy(current, current + N, perm);
    }
  }
}

#define PYAUDIOK_SI_SDR_INSTANTIATE(T)                                                                          \
  template void si_sdr_shifts<T>(const T*, int64_t, int64_t, double*);                                         \
  template void si_sdr_partial<T>(const T*, const T*, int64_t, int64_t, int64_t, int64_t, int64_t, const double*, \
                                  double*);                                                                    \
  template void si_sdr_finish<T>(const double*, int64_t, int64_t, int64_t, bool, double, double*, double*,      \
                                 double*, T*);                                                                 \
  template void best_assignment<T>(const T*, int64_t, int64_t, int64_t*);
PYAUDIOK_SI_SDR_INSTANTIATE(float)
PYAUDIOK_SI_SDR_INSTANTIATE(double)
#undef PYAUDIOK_SI_SDR_INSTANTIATE

}  // namespace pyaudiok::cpu
