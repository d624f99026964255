// Latent cross-attention on the CPU, flash-style: blocks of s.query_block queries against blocks
// of s.key_block keys, the scores of one block pair in a tile that stays in cache,
// the products on the caller's GEMM. Compared with PyTorch's CPU flash kernel the blocks are
// larger (its 64-query blocks leave the GEMMs short), and the bottom-right mask is applied per row
// inside the few blocks it cuts, so one call covers every key (no prefix/causal split to merge).
#include "latent_attention.h"
#include "simd.h"
#include "target_clones.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace pyaudiok::cpu {
namespace {

template <typename T>
constexpr T kNegInf = -std::numeric_limits<T>::infinity();

// Row primitives; float runs 8 lanes at a time (AVX2 in the PYAUDIOK_CLONES callers).
PYAUDIOK_INLINE float row_max(const float* x, int64_t n) {
  using namespace simd;
  v8f m = splat(kNegInf<float>);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) m = vmax(m, load8(x + i));
  float r = kNegInf<float>;
  for (int l = 0; l < 8; ++l) r = std::max(r, m[l]);
  for (; i < n; ++i) r = std::max(r, x[i]);
  return r;
}

PYAUDIOK_INLINE double row_max(const double* x, int64_t n) {
  double r = kNegInf<double>;
  for (int64_t i = 0; i < n; ++i) r = std::max(r, x[i]);
  return r;
}

template <typename T>
bool any_nan(const T* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    if (std::isnan(x[i])) return true;
  return false;
}

// A query's output and lse from its summed weights: NaN where a NaN score reached the sum (as the
// reference gives), zeros and −inf where it saw no key.
template <typename T>
void finish_row(T* o, int64_t D, T peak, T sum, T* lse) {
  if (sum > T(0)) {
    const T inv = T(1) / sum;
    for (int64_t d = 0; d < D; ++d) o[d] *= inv;
    *lse = peak + std::log(sum);
  } else if (std::isnan(sum)) {
    std::fill(o, o + D, std::numeric_limits<T>::quiet_NaN());
    *lse = sum;
  } else {
    std::fill(o, o + D, T(0));
    *lse = kNegInf<T>;
  }
}

// x = exp(x − shift) in place over n values; returns their sum.
PYAUDIOK_INLINE float exp_shifted(float* x, int64_t n, float shift) {
  using namespace simd;
  v8f acc = splat(0.f);
  const v8f sh = splat(shift);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const v8f e = exp8(load8(x + i) - sh);
    store8(x + i, e);
    acc += e;
  }
  float sum = 0.f;
  for (int l = 0; l < 8; ++l) sum += acc[l];
  for (; i < n; ++i) sum += (x[i] = std::exp(x[i] - shift));
  return sum;
}

PYAUDIOK_INLINE double exp_shifted(double* x, int64_t n, double shift) {
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) sum += (x[i] = std::exp(x[i] - shift));
  return sum;
}

// One key's row of the transposed tiles, over queries [0, n) that see the key: p = exp(s − lse) in
// place, then, once dP is in, dS = p ⊙ (dP − Δ) · scale written over dP.
PYAUDIOK_INLINE void exp_minus(float* x, const float* lse, int64_t n) {
  using namespace simd;
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    v8f e[2] = {load8(x + i) - load8(lse + i), load8(x + i + 8) - load8(lse + i + 8)};
    exp_n<2>(e);
    store8(x + i, e[0]);
    store8(x + i + 8, e[1]);
  }
  for (; i < n; ++i) x[i] = std::exp(x[i] - lse[i]);
}

PYAUDIOK_INLINE void exp_minus(double* x, const double* lse, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = std::exp(x[i] - lse[i]);
}

template <typename T>
PYAUDIOK_INLINE void softmax_backward_row(const T* p, T* dp, const T* delta, int64_t n, T scale) {
  for (int64_t i = 0; i < n; ++i) dp[i] = p[i] * (dp[i] - delta[i]) * scale;
}

// A sampling step's one query: the block's two products as dot products and row updates. A GEMM
// of one row packs the whole key block before using it (one more pass over it), and its call costs
// more than this work at a block of a few hundred keys.
// s[c] = scale · q · k_c for the block's `cols` key rows (stride D), four keys at a time.
PYAUDIOK_INLINE void one_row_scores(const float* q, const float* k, int64_t cols, int64_t D, float scale, float* s) {
  using namespace simd;
  const int64_t Dv = D / 8 * 8;
  int64_t c = 0;
  for (; c + 4 <= cols; c += 4) {
    const float* kr = k + c * D;
    v8f acc[4] = {splat(0.f), splat(0.f), splat(0.f), splat(0.f)};
    for (int64_t d = 0; d < Dv; d += 8) {
      const v8f qd = load8(q + d);
      for (int u = 0; u < 4; ++u) acc[u] += qd * load8(kr + u * D + d);
    }
    for (int u = 0; u < 4; ++u) {
      float r = 0.f;
      for (int l = 0; l < 8; ++l) r += acc[u][l];
      for (int64_t d = Dv; d < D; ++d) r += q[d] * kr[u * D + d];
      s[c + u] = scale * r;
    }
  }
  for (; c < cols; ++c) {
    float r = 0.f;
    for (int64_t d = 0; d < D; ++d) r += q[d] * k[c * D + d];
    s[c] = scale * r;
  }
}

PYAUDIOK_INLINE void one_row_scores(const double* q, const double* k, int64_t cols, int64_t D, double scale,
                                    double* s) {
  for (int64_t c = 0; c < cols; ++c) {
    double r = 0.0;
    for (int64_t d = 0; d < D; ++d) r += q[d] * k[c * D + d];
    s[c] = scale * r;
  }
}

// o += Σ_c p[c] · v_c over the block's `cols` value rows (stride D): 64 channels at a time held in
// registers while the rows stream past, then 8, then one.
PYAUDIOK_INLINE void one_row_values(const float* p, const float* v, int64_t cols, int64_t D, float* o) {
  using namespace simd;
  int64_t d0 = 0;
  for (; d0 + 64 <= D; d0 += 64) {
    v8f acc[8];
    for (int u = 0; u < 8; ++u) acc[u] = load8(o + d0 + 8 * u);
    for (int64_t c = 0; c < cols; ++c) {
      const v8f pc = splat(p[c]);
      const float* vr = v + c * D + d0;
      for (int u = 0; u < 8; ++u) acc[u] += pc * load8(vr + 8 * u);
    }
    for (int u = 0; u < 8; ++u) store8(o + d0 + 8 * u, acc[u]);
  }
  for (; d0 + 8 <= D; d0 += 8) {
    v8f acc = load8(o + d0);
    for (int64_t c = 0; c < cols; ++c) acc += splat(p[c]) * load8(v + c * D + d0);
    store8(o + d0, acc);
  }
  for (; d0 < D; ++d0)
    for (int64_t c = 0; c < cols; ++c) o[d0] += p[c] * v[c * D + d0];
}

PYAUDIOK_INLINE void one_row_values(const double* p, const double* v, int64_t cols, int64_t D, double* o) {
  for (int64_t c = 0; c < cols; ++c)
    for (int64_t d = 0; d < D; ++d) o[d] += p[c] * v[c * D + d];
}

// Keys of block [i0, i0 + cols) that query j sees: the first `visible` (query j sees keys < shift + j + 1).
inline int64_t visible_keys(int64_t shift, int64_t j, int64_t i0, int64_t cols) {
  return std::clamp<int64_t>(shift + j + 1 - i0, 0, cols);
}

}  // namespace

template <typename T>
PYAUDIOK_CLONES void latent_attention_forward(const T* q, const T* k, const T* v, const AttentionShape& s, T scale,
                                              int64_t q_begin, int64_t q_end, GemmFn<T> gemm, T* out, T* lse) {
  const int64_t N = s.n_queries, D = s.head_dim, L = s.length, shift = L - N, kK = s.key_block;
  // A tile no taller than the queries there are: a sampling step's one query would otherwise
  // allocate and clear a whole block's scores (256 KiB at 128 × 512) on every call.
  const int64_t kQ = std::max<int64_t>(1, std::min(s.query_block, q_end - q_begin));
  std::vector<T> scores(kQ * kK), row_peak(kQ), row_sum(kQ);
  for (int64_t j0 = q_begin; j0 < q_end; j0 += kQ) {
    const int64_t rows = std::min(kQ, q_end - j0);
    T* o = out + j0 * D;
    std::fill(o, o + rows * D, T(0));
    std::fill(row_peak.begin(), row_peak.begin() + rows, kNegInf<T>);
    std::fill(row_sum.begin(), row_sum.begin() + rows, T(0));
    // Keys [0, open) are seen by every row of the block; the last row sees keys [0, end).
    const int64_t open = std::clamp<int64_t>(shift + j0 + 1, 0, L), end = std::clamp<int64_t>(shift + j0 + rows, 0, L);
    for (int64_t i0 = 0; i0 < end; i0 += kK) {
      const int64_t cols = std::min(kK, end - i0);
      if (rows == 1) {
        one_row_scores(q + j0 * D, k + i0 * D, cols, D, scale, scores.data());
      } else {
        gemm(false, true, rows, cols, D, scale, q + j0 * D, D, k + i0 * D, D, T(0), scores.data(), cols);
      }
      for (int64_t r = 0; r < rows; ++r) {
        T* p = scores.data() + r * cols;
        const int64_t visible = i0 + cols <= open ? cols : visible_keys(shift, j0 + r, i0, cols);
        const T peak = std::max(row_peak[r], row_max(p, visible));
        std::fill(p + visible, p + cols, T(0));
        if (peak == kNegInf<T>) {  // nothing visible yet (or no key at all), or only NaN scores
          if (any_nan(p, visible)) row_sum[r] = std::numeric_limits<T>::quiet_NaN();  // stays NaN
          std::fill(p, p + visible, T(0));
          continue;
        }
        const T sum = exp_shifted(p, visible, peak);
        if (peak != row_peak[r]) {  // rescale what the earlier blocks accumulated
          const T factor = std::exp(row_peak[r] - peak);
          row_sum[r] *= factor;
          for (int64_t d = 0; d < D; ++d) o[r * D + d] *= factor;
          row_peak[r] = peak;
        }
        row_sum[r] += sum;
      }
      if (rows == 1) {
        one_row_values(scores.data(), v + i0 * D, cols, D, o);
      } else {
        gemm(false, false, rows, D, cols, T(1), scores.data(), cols, v + i0 * D, D, T(1), o, D);
      }
    }
    for (int64_t r = 0; r < rows; ++r) finish_row(o + r * D, D, row_peak[r], row_sum[r], lse + j0 + r);
  }
}

// The backward forms its tiles transposed, [keys, queries]: the products then take Pᵀ and dSᵀ as
// stored (dV += Pᵀ dO and dK += dSᵀ Q with no transposed operand, the shape BLAS ran ~30 % slower),
// and the per-query lse and Δ become vectors along each key's row.
template <typename T>
PYAUDIOK_CLONES void latent_attention_backward(const T* grad, const T* q, const T* k, const T* v, const T* lse,
                                               const T* delta, const AttentionShape& s, T scale, int64_t k_begin,
                                               int64_t k_end, GemmFn<T> gemm, T* dq, T* dk, T* dv) {
  const int64_t N = s.n_queries, D = s.head_dim, L = s.length, shift = L - N, kQ = s.query_block, kK = s.key_block;
  std::vector<T> probs(kK * kQ), dprobs(kK * kQ);
  for (int64_t i0 = k_begin; i0 < k_end; i0 += kK) {
    const int64_t block = std::min(kK, k_end - i0);
    T *dk_block = dk + i0 * D, *dv_block = dv + i0 * D;
    std::fill(dk_block, dk_block + block * D, T(0));
    std::fill(dv_block, dv_block + block * D, T(0));
    const int64_t cols = std::clamp<int64_t>(L - i0, 0, block);  // keys at and after L: no gradient
    if (cols == 0) continue;
    // Query j sees key i iff j >= i − shift; the queries before i0 − shift see none of this block.
    for (int64_t j0 = std::max<int64_t>(0, i0 - shift); j0 < N; j0 += kQ) {
      const int64_t rows = std::min(kQ, N - j0);
      // The keys of the block that the last of these queries sees (≥ 1); those after it get nothing
      // from these queries (in square causal attention, half of the diagonal blocks).
      const int64_t seen = std::min(cols, shift + j0 + rows - i0);
      T *pt = probs.data(), *dpt = dprobs.data();
      const T *g = grad + j0 * D, *qj = q + j0 * D;
      gemm(false, true, seen, rows, D, scale, k + i0 * D, D, qj, D, T(0), pt, rows);  // Sᵀ = K Qᵀ
      for (int64_t c = 0; c < seen; ++c) {
        T* row = pt + c * rows;
        const int64_t hidden = std::clamp<int64_t>(i0 + c - shift - j0, 0, rows);  // queries before it
        std::fill(row, row + hidden, T(0));
        exp_minus(row + hidden, lse + j0 + hidden, rows - hidden);  // finite: these queries see key i
      }
      gemm(false, false, seen, D, rows, T(1), pt, rows, g, D, T(1), dv_block, D);        // dV += Pᵀ dO
      gemm(false, true, seen, rows, D, T(1), v + i0 * D, D, g, D, T(0), dpt, rows);      // dPᵀ = V dOᵀ
      for (int64_t c = 0; c < seen; ++c)
        softmax_backward_row(pt + c * rows, dpt + c * rows, delta + j0, rows, scale);
      gemm(true, false, rows, D, seen, T(1), dpt, rows, k + i0 * D, D, T(1), dq + j0 * D, D);  // dQ += dS K
      gemm(false, false, seen, D, rows, T(1), dpt, rows, qj, D, T(1), dk_block, D);            // dK += dSᵀ Q
    }
  }
}

// The forward with keys and values that are functions of a token (see the header), on tiles
// transposed as in the backward ([keys, queries]): a key's unrotated share of its scores is a row of
// a [V, queries] table made once per query block, and P V is Σ over tokens of (Σ of P over that
// token's keys) · its table row: the keys' P rows are summed per token into a [V, queries] table,
// rescaled with the running maxima, and multiplied by the value table once per query block. One
// product of Dr channels per tile instead of two of D.
template <typename T>
PYAUDIOK_CLONES void latent_attention_forward_tokens(const T* q, const T* k, const int64_t* tokens, const T* k_table,
                                                     const T* v_table, const TokenTables& t, const AttentionShape& s,
                                                     T scale, int64_t q_begin, int64_t q_end, GemmFn<T> gemm, T* out,
                                                     T* lse) {
  const int64_t N = s.n_queries, D = s.head_dim, L = s.length, shift = L - N, kK = s.key_block;
  const int64_t V = t.vocab, Dr = t.rotary_dims, Dp = D - Dr;
  const int64_t kQ = std::max<int64_t>(1, std::min(s.query_block, q_end - q_begin));
  std::vector<T> scores(kK * kQ), plain(V * kQ), per_token(V * kQ), peak(kQ), block_peak(kQ), factor(kQ), sum(kQ);
  for (int64_t j0 = q_begin; j0 < q_end; j0 += kQ) {
    const int64_t rows = std::min(kQ, q_end - j0);
    const T* qj = q + j0 * D;
    if (Dp > 0) {
      gemm(false, true, V, rows, Dp, scale, k_table + Dr, D, qj + Dr, D, T(0), plain.data(), rows);
    } else {
      std::fill(plain.begin(), plain.begin() + V * rows, T(0));
    }
    std::fill(per_token.begin(), per_token.begin() + V * rows, T(0));
    std::fill(peak.begin(), peak.begin() + rows, kNegInf<T>);
    std::fill(sum.begin(), sum.begin() + rows, T(0));
    const int64_t end = std::clamp<int64_t>(shift + j0 + rows, 0, L);  // the last query sees keys [0, end)
    for (int64_t i0 = 0; i0 < end; i0 += kK) {
      const int64_t cols = std::min(kK, end - i0);
      T* st = scores.data();
      if (Dr > 0) {
        gemm(false, true, cols, rows, Dr, scale, k + i0 * D, D, qj, D, T(0), st, rows);  // Sᵀ, rotated channels
      } else {
        std::fill(st, st + cols * rows, T(0));
      }
      std::fill(block_peak.begin(), block_peak.begin() + rows, kNegInf<T>);
      for (int64_t c = 0; c < cols; ++c) {
        T* row = st + c * rows;
        const T* plain_row = plain.data() + tokens[i0 + c] * rows;
        const int64_t hidden = std::clamp<int64_t>(i0 + c - shift - j0, 0, rows);  // queries before the key
        std::fill(row, row + hidden, kNegInf<T>);
        for (int64_t j = hidden; j < rows; ++j) row[j] += plain_row[j];
        for (int64_t j = 0; j < rows; ++j) block_peak[j] = std::max(block_peak[j], row[j]);
      }
      // Queries whose maximum rose rescale what they summed so far; on the first block nothing is
      // summed yet (each query sees key 0, as M >= N, so every maximum is finite after it).
      bool rescale = false;
      for (int64_t j = 0; j < rows; ++j) {
        const T next = std::max(peak[j], block_peak[j]);
        factor[j] = peak[j] == next ? T(1) : std::exp(peak[j] - next);
        rescale |= factor[j] != T(1) && sum[j] != T(0);
        sum[j] *= factor[j];
        peak[j] = next;
      }
      if (rescale) {
        for (int64_t v = 0; v < V; ++v) {
          T* acc = per_token.data() + v * rows;
          for (int64_t j = 0; j < rows; ++j) acc[j] *= factor[j];
        }
      }
      for (int64_t c = 0; c < cols; ++c) {
        T* row = st + c * rows;
        const int64_t hidden = std::clamp<int64_t>(i0 + c - shift - j0, 0, rows);
        std::fill(row, row + hidden, T(0));
        exp_minus(row + hidden, peak.data() + hidden, rows - hidden);
        T* acc = per_token.data() + tokens[i0 + c] * rows;
        for (int64_t j = 0; j < rows; ++j) {
          acc[j] += row[j];
          sum[j] += row[j];
        }
      }
    }
    T* o = out + j0 * D;
    gemm(true, false, rows, D, V, T(1), per_token.data(), rows, v_table, D, T(0), o, D);  // O = (Σ P per token) V
    for (int64_t r = 0; r < rows; ++r) finish_row(o + r * D, D, peak[r], sum[r], lse + j0 + r);
  }
}

// The backward with keys and values that are functions of a token (see the header). Per tile, as in
// latent_attention_backward (transposed, [keys, queries]), but of the products over the channels
// only the rotated ones remain: a key's other channels are its token's table row, so their part of
// Sᵀ, and all of dPᵀ, are rows of two [V, N] tables made once per (batch, head), and the gradients
// that go to the tables are summed per token (P and dS scattered into [V, N]) and multiplied once
// at the end. Three products of Dr channels per tile instead of five of D.
template <typename T>
PYAUDIOK_CLONES void latent_attention_backward_tokens(const T* grad, const T* q, const T* k, const int64_t* tokens,
                                                      const T* k_table, const T* v_table, const TokenTables& t,
                                                      const T* lse, const T* delta, const AttentionShape& s, T scale,
                                                      int64_t k_begin, int64_t k_end, GemmFn<T> gemm, T* dq, T* dk,
                                                      T* dk_table, T* dv_table) {
  const int64_t N = s.n_queries, D = s.head_dim, L = s.length, shift = L - N, kQ = s.query_block, kK = s.key_block;
  const int64_t V = t.vocab, Dr = t.rotary_dims, Dp = D - Dr;
  // plain[v, j] = scale · k_table[v, Dr:] · q[j, Dr:] and dprobs_of[v, j] = v_table[v] · dO[j]: a key's
  // unrotated share of its scores and its whole dPᵀ row. scattered_p / scattered_ds: Σ over the keys
  // of each token of their Pᵀ and dSᵀ rows.
  std::vector<T> plain(V * N, T(0)), dprobs_of(V * N), scattered_p(V * N, T(0)), scattered_ds(V * N, T(0));
  if (Dp > 0) gemm(false, true, V, N, Dp, scale, k_table + Dr, D, q + Dr, D, T(0), plain.data(), N);
  gemm(false, true, V, N, D, T(1), v_table, D, grad, D, T(0), dprobs_of.data(), N);
  std::vector<T> probs(kK * kQ), dprobs(kK * kQ);
  for (int64_t i0 = k_begin; i0 < k_end; i0 += kK) {
    const int64_t block = std::min(kK, k_end - i0);
    T* dk_block = dk + i0 * D;
    std::fill(dk_block, dk_block + block * D, T(0));
    const int64_t cols = std::clamp<int64_t>(L - i0, 0, block);
    if (cols == 0) continue;
    for (int64_t j0 = std::max<int64_t>(0, i0 - shift); j0 < N; j0 += kQ) {
      const int64_t rows = std::min(kQ, N - j0);
      const int64_t seen = std::min(cols, shift + j0 + rows - i0);
      T *pt = probs.data(), *dpt = dprobs.data();
      const T* qj = q + j0 * D;
      if (Dr > 0) {
        gemm(false, true, seen, rows, Dr, scale, k + i0 * D, D, qj, D, T(0), pt, rows);  // Sᵀ, rotated channels
      } else {
        std::fill(pt, pt + seen * rows, T(0));
      }
      for (int64_t c = 0; c < seen; ++c) {
        T *row = pt + c * rows, *drow = dpt + c * rows;
        const int64_t token = tokens[i0 + c];
        const T *plain_row = plain.data() + token * N + j0, *dprob_row = dprobs_of.data() + token * N + j0;
        for (int64_t j = 0; j < rows; ++j) row[j] += plain_row[j];
        const int64_t hidden = std::clamp<int64_t>(i0 + c - shift - j0, 0, rows);
        std::fill(row, row + hidden, T(0));
        exp_minus(row + hidden, lse + j0 + hidden, rows - hidden);
        std::copy(dprob_row, dprob_row + rows, drow);
        softmax_backward_row(row, drow, delta + j0, rows, scale);
        T *p_sum = scattered_p.data() + token * N + j0, *ds_sum = scattered_ds.data() + token * N + j0;
        for (int64_t j = 0; j < rows; ++j) {
          p_sum[j] += row[j];
          ds_sum[j] += drow[j];
        }
      }
      if (Dr > 0) {
        gemm(true, false, rows, Dr, seen, T(1), dpt, rows, k + i0 * D, D, T(1), dq + j0 * D, D);  // dQ += dS K
        gemm(false, false, seen, Dr, rows, T(1), dpt, rows, qj, D, T(1), dk_block, D);            // dK += dSᵀ Q
      }
    }
  }
  // The tables' shares: dQ[:, Dr:] += Σ_v dSᵀ[v]ᵀ k_table[v, Dr:], dk_table[v, Dr:] += dSᵀ[v] Q[:, Dr:],
  // dv_table[v] += Pᵀ[v] dO.
  if (Dp > 0) {
    gemm(true, false, N, Dp, V, T(1), scattered_ds.data(), N, k_table + Dr, D, T(1), dq + Dr, D);
    gemm(false, false, V, Dp, N, T(1), scattered_ds.data(), N, q + Dr, D, T(1), dk_table + Dr, D);
  }
  gemm(false, false, V, D, N, T(1), scattered_p.data(), N, grad, D, T(1), dv_table, D);
}

#define PYAUDIOK_ATTENTION_INSTANTIATE(T)                                                                           \
  template void latent_attention_forward<T>(const T*, const T*, const T*, const AttentionShape&, T, int64_t,       \
                                            int64_t, GemmFn<T>, T*, T*);                                            \
  template void latent_attention_backward<T>(const T*, const T*, const T*, const T*, const T*, const T*,           \
                                             const AttentionShape&, T, int64_t, int64_t, GemmFn<T>, T*, T*, T*);    \
  template void latent_attention_forward_tokens<T>(const T*, const T*, const int64_t*, const T*, const T*,        \
                                                   const TokenTables&, const AttentionShape&, T, int64_t, int64_t, \
                                                   GemmFn<T>, T*, T*);                                            \
  template void latent_attention_backward_tokens<T>(const T*, const T*, const T*, const int64_t*, const T*,       \
                                                    const T*, const TokenTables&, const T*, const T*,             \
                                                    const AttentionShape&, T, int64_t, int64_t, GemmFn<T>, T*, T*, \
                                                    T*, T*);
PYAUDIOK_ATTENTION_INSTANTIATE(float)
PYAUDIOK_ATTENTION_INSTANTIATE(double)
#undef PYAUDIOK_ATTENTION_INSTANTIATE

}  // namespace pyaudiok::cpu
