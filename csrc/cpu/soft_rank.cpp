// Soft rank / soft sort on the CPU, one row at a time (rows are spread over threads by the
// binding): sort (key, index) pairs, one stack-based PAV pass (O(n): each merge pops a block),
// then write the outputs through the permutation. Block sums are kept in double.
#include "soft_rank.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

namespace pyaudiok::cpu {
namespace {

// An infinite larger term is the sum itself: log(e^inf + e^inf) = inf, not the NaN of inf − inf.
inline double log_add_exp(double a, double b) {
  const double hi = std::max(a, b), lo = std::min(a, b);
  return std::isinf(hi) ? hi : hi + std::log1p(std::exp(lo - hi));
}

// The key sorted in decreasing order is z = sign * x * scale.
struct Key {
  float sign, scale;
  explicit Key(const SoftSortRankFlags& f)
      : sign(f.rank ? (f.descending ? -1.f : 1.f) : (f.descending ? 1.f : -1.f)),
        scale(f.rank ? 1.f / f.strength : 1.f) {}
  double operator()(float x) const { return static_cast<double>(sign * x * scale); }
};

struct Scratch {
  std::vector<std::pair<float, int32_t>> sorted;  // (key, input index), decreasing key
  std::vector<int32_t> start;                      // block starts, one per block on the stack
  std::vector<double> sy, sw;                      // block sums (L2: Σy, count; KL: LSE y, LSE w)
  explicit Scratch(int64_t n) : sorted(n), start(n), sy(n), sw(n) {}
};

// Decreasing key, ties by index; NaN before everything (above +inf), like torch.sort(descending=True),
// which keeps the order a strict weak one.
bool sorts_before(const std::pair<float, int32_t>& a, const std::pair<float, int32_t>& b) {
  const bool a_nan = std::isnan(a.first), b_nan = std::isnan(b.first);
  if (a_nan != b_nan) return a_nan;
  if (!a_nan && a.first != b.first) return a.first > b.first;
  return a.second < b.second;
}

}  // namespace

void soft_sort_rank_rows(const float* x, int64_t n, SoftSortRankFlags f, int64_t row_begin, int64_t row_end,
                         float* out, int64_t* perm, int32_t* blocks) {
  const Key key(f);
  const double inv_eps = 1.0 / f.strength;
  Scratch s(n);
  for (int64_t row = row_begin; row < row_end; ++row) {
    const float* xr = x + row * n;
    for (int64_t i = 0; i < n; ++i) {
      s.sorted[i] = {static_cast<float>(key(xr[i])), static_cast<int32_t>(i)};
    }
    std::sort(s.sorted.begin(), s.sorted.end(), sorts_before);
    // PAV for v_0 >= v_1 >= ...: push each point as a block, pool while the top two violate it.
    int64_t top = -1;
    for (int64_t j = 0; j < n; ++j) {
      const double sj = key(xr[s.sorted[j].second]);
      const double wj = static_cast<double>(n - j);
      double y, w;  // the isotonic problem's data at sorted position j (see soft_rank.py)
      if (f.rank) {
        y = f.kl ? sj : sj - wj;
        w = f.kl ? std::log(wj) : 1.0;
      } else {
        y = f.kl ? wj * inv_eps : wj * inv_eps - sj;
        w = f.kl ? sj : 1.0;
      }
      ++top;
      s.start[top] = static_cast<int32_t>(j);
      s.sy[top] = y;
      s.sw[top] = w;
      while (top > 0) {
        const double prev = f.kl ? s.sy[top - 1] - s.sw[top - 1] : s.sy[top - 1] / s.sw[top - 1];
        const double last = f.kl ? s.sy[top] - s.sw[top] : s.sy[top] / s.sw[top];
        // Pool only on a proven violation: a NaN block never pools, as in the reference's PAV.
        if (!(prev <= last)) break;
        s.sy[top - 1] = f.kl ? log_add_exp(s.sy[top - 1], s.sy[top]) : s.sy[top - 1] + s.sy[top];
        s.sw[top - 1] = f.kl ? log_add_exp(s.sw[top - 1], s.sw[top]) : s.sw[top - 1] + s.sw[top];
        --top;
      }
    }
    float* o = out + row * n;
    int64_t* p = perm + row * n;
    int32_t* b = blocks + row * n;
    for (int64_t k = 0; k <= top; ++k) {
      const int64_t begin = s.start[k], end = k < top ? s.start[k + 1] : n;
      const double v = f.kl ? s.sy[k] - s.sw[k] : s.sy[k] / s.sw[k];
      for (int64_t j = begin; j < end; ++j) {
        const int32_t idx = s.sorted[j].second;
        p[j] = idx;
        b[j] = static_cast<int32_t>(end - 1);
        if (f.rank) {
          const double sj = key(xr[idx]);
          o[idx] = static_cast<float>(f.kl ? std::exp(sj - v) : sj - v);
        } else {
          o[j] = static_cast<float>(key.sign * (static_cast<double>(n - j) * inv_eps - v));
        }
      }
    }
  }
}

void soft_sort_rank_backward_rows(const float* grad_out, const float* x, const float* out, const int64_t* perm,
                                  const int32_t* blocks, int64_t n, SoftSortRankFlags f, int64_t row_begin,
                                  int64_t row_end, float* grad_x) {
  const Key key(f);
  // d z / d x: the chain rule through the key.
  const double dz = static_cast<double>(key.sign) * key.scale;
  std::vector<double> u(n), soft(n);
  for (int64_t row = row_begin; row < row_end; ++row) {
    const float* g = grad_out + row * n;
    const float* xr = x + row * n;
    const float* o = out + row * n;
    const int64_t* p = perm + row * n;
    const int32_t* b = blocks + row * n;
    float* gx = grad_x + row * n;
    // u: the output gradient in sorted order (rank KL: times the output, d exp = exp).
    for (int64_t j = 0; j < n; ++j) {
      if (f.rank) {
        u[j] = f.kl ? static_cast<double>(g[p[j]]) * o[p[j]] : g[p[j]];
      } else {
        u[j] = key.sign * static_cast<double>(g[j]);
      }
    }
    for (int64_t begin = 0; begin < n;) {
      const int64_t end = static_cast<int64_t>(b[begin]) + 1;
      double sum = 0.0;
      for (int64_t j = begin; j < end; ++j) sum += u[j];
      if (f.kl) {  // block softmax of the sorted keys s
        double mx = -std::numeric_limits<double>::infinity(), z = 0.0;
        for (int64_t j = begin; j < end; ++j) mx = std::max(mx, key(xr[p[j]]));
        for (int64_t j = begin; j < end; ++j) z += (soft[j] = std::exp(key(xr[p[j]]) - mx));
        // A +inf key makes the block's LSE +inf, so its softmax exp(s − LSE) is exp(s − mx) itself: NaN at
        // the +inf keys, 0 elsewhere, as in the reference. Dividing by z (NaN then) would spread the NaN.
        if (mx == std::numeric_limits<double>::infinity()) z = 1.0;
        for (int64_t j = begin; j < end; ++j) soft[j] /= z;
      } else {
        for (int64_t j = begin; j < end; ++j) soft[j] = 1.0 / static_cast<double>(end - begin);
      }
      for (int64_t j = begin; j < end; ++j) {
        // rank: (I − J) u; sort: J u, with J the block Jacobian (mean or softmax rows).
        const double gs = f.rank ? u[j] - sum * soft[j] : sum * soft[j];
        gx[p[j]] = static_cast<float>(gs * dz);
      }
      begin = end;
    }
  }
}

}  // namespace pyaudiok::cpu
