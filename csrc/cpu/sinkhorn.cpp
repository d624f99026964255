// Sinkhorn on the CPU, one batch element per task (the binding spreads the batch over threads).
//
// The iterations are those of the log domain (pyaudiok/ops/sinkhorn.py), run in the stabilised
// scaling domain where that is safe: with potentials (f̂, ĝ) absorbed into a kernel
// K̂_ij = e^{(f̂_i + ĝ_j − C_ij)/ε} (kept in both layouts), an f-update is one matrix-vector product,
// f_i = f̂_i + ε (log a_i − log Σ_j K̂_ij e^{(g_j − ĝ_j)/ε}), and the g-update likewise: no
// exponential per element per iteration. When a scaling e^{(p − p̂)/ε} leaves [e^−30, e^30] or a
// sum leaves its safe range, that update runs in the log domain instead (row-wise log-sum-exp, a
// max pass then an exp-sum pass) and the current potentials are absorbed into a fresh kernel (one
// exponential per element), retried with a growing back-off when it keeps failing. The unrolled
// backward does the same per reversed iteration. All exponentials go through a polynomial 8-wide
// exp (Cephes' expf, ~2 ulp) compiled for AVX2 where the CPU has it.
#include "sinkhorn.h"
#include "simd.h"
#include "target_clones.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>
#if defined(__SSE__)
#include <xmmintrin.h>
#endif

namespace pyaudiok::cpu {
namespace {

using namespace simd;

constexpr float kInf = std::numeric_limits<float>::infinity();

PYAUDIOK_INLINE float exp1(float x) {
  v8f v = splat(x);
  return exp8(v)[0];
}

PYAUDIOK_INLINE float hmax(v8f v) {
  float r = v[0];
  for (int k = 1; k < 8; ++k) r = std::max(r, v[k]);
  return r;
}
PYAUDIOK_INLINE float hsum(v8f v) {
  float r = 0.f;
  for (int k = 0; k < 8; ++k) r += v[k];
  return r;
}

// The shift of a log-sum-exp whose largest term is mx: 0 for an infinite mx, as in torch.logsumexp,
// so that a +inf term gives +inf (from a −inf cost), no term above −inf gives −inf, and a NaN term
// gives NaN instead of vanishing into a ±inf shift.
PYAUDIOK_INLINE float lse_shift(float mx) { return std::isinf(mx) ? 0.f : mx; }

// LSE_j (g_j − c_j) / ε, returned as ε · LSE (the shift mx is in cost units).
PYAUDIOK_INLINE float row_lse(const float* g, const float* c, int64_t m, float inv_eps, float eps) {
  int64_t j = 0;
  v8f vm = splat(-kInf);
  for (; j + 8 <= m; j += 8) vm = vmax(vm, load8(g + j) - load8(c + j));
  float mx = hmax(vm);
  for (; j < m; ++j) mx = std::max(mx, g[j] - c[j]);
  mx = lse_shift(mx);
  v8f vs = splat(0.f);
  j = 0;
  for (; j + 8 <= m; j += 8) vs += exp8((load8(g + j) - load8(c + j) - mx) * inv_eps);
  float sum = hsum(vs);
  for (; j < m; ++j) sum += exp1((g[j] - c[j] - mx) * inv_eps);
  return mx + eps * std::log(sum);
}

// f_new = ε log a − ε LSE_j((g − C_i·)/ε), in the log domain.
PYAUDIOK_CLONES
void f_update(const float* cost, const float* log_a, const float* g, float* f_new, const SinkhornShape& s) {
  const float inv_eps = 1.f / s.eps;
  for (int64_t i = 0; i < s.n; ++i) f_new[i] = s.eps * log_a[i] - row_lse(g, cost + i * s.m, s.m, inv_eps, s.eps);
}

// Σ_i |a_i e^{(f_old_i − f_new_i)/ε} − a_i|: the row-marginal error of the plan before f_new.
PYAUDIOK_CLONES
float marginal_error(const float* log_a, const float* f_old, const float* f_new, const SinkhornShape& s) {
  const float inv_eps = 1.f / s.eps;
  float err = 0.f;
  for (int64_t i = 0; i < s.n; ++i)
    if (log_a[i] != -kInf) err += std::fabs(exp1(log_a[i] + (f_old[i] - f_new[i]) * inv_eps) - exp1(log_a[i]));
  return err;
}

// g = ε log b − ε LSE_i((f − C_·j)/ε), column-wise through row passes.
PYAUDIOK_CLONES
void g_update(const float* cost, const float* log_b, const float* f, float* g, float* colmax, float* colsum,
              const SinkhornShape& s) {
  const float inv_eps = 1.f / s.eps;
  const int64_t m = s.m, m8 = m - m % 8;
  std::fill(colmax, colmax + m, -kInf);
  std::fill(colsum, colsum + m, 0.f);
  for (int64_t i = 0; i < s.n; ++i) {
    const float* c = cost + i * m;
    const v8f fi = splat(f[i]);
    for (int64_t j = 0; j < m8; j += 8) store8(colmax + j, vmax(load8(colmax + j), fi - load8(c + j)));
    for (int64_t j = m8; j < m; ++j) colmax[j] = std::max(colmax[j], f[i] - c[j]);
  }
  for (int64_t j = 0; j < m; ++j) colmax[j] = lse_shift(colmax[j]);
  for (int64_t i = 0; i < s.n; ++i) {
    const float* c = cost + i * m;
    const v8f fi = splat(f[i]);
    for (int64_t j = 0; j < m8; j += 8)
      store8(colsum + j, load8(colsum + j) + exp8((fi - load8(c + j) - load8(colmax + j)) * inv_eps));
    for (int64_t j = m8; j < m; ++j) colsum[j] += exp1((f[i] - c[j] - colmax[j]) * inv_eps);
  }
  // A column with no term above −inf (colsum 0) gets −inf.
  for (int64_t j = 0; j < m; ++j)
    g[j] = colsum[j] == 0.f ? -kInf : s.eps * log_b[j] - (colmax[j] + s.eps * std::log(colsum[j]));
}

// plan_ij = exp((f_i + g_j − C_ij)/ε), the exponent formed in double: rounding f + g − C in float
// would put a relative error of ~ulp(1)/ε on each entry, and the scaling domain reuses these
// entries (as its kernel) for many iterations, where such errors would add up coherently.
PYAUDIOK_CLONES
void make_plan(const float* cost, const float* f, const float* g, float* plan, const SinkhornShape& s) {
  typedef double v8d __attribute__((vector_size(64)));
  const double inv_eps = 1.0 / s.eps;
  const int64_t m = s.m, m8 = m - m % 8;
  for (int64_t i = 0; i < s.n; ++i) {
    const float* c = cost + i * m;
    float* p = plan + i * m;
    const v8d fi = v8d{} + static_cast<double>(f[i]);
    for (int64_t j = 0; j < m8; j += 8) {
      const v8d e = (fi + __builtin_convertvector(load8(g + j), v8d) - __builtin_convertvector(load8(c + j), v8d)) *
                    inv_eps;
      store8(p + j, exp8(__builtin_convertvector(e, v8f)));
    }
    for (int64_t j = m8; j < m; ++j)
      p[j] = exp1(static_cast<float>((static_cast<double>(f[i]) + g[j] - c[j]) * inv_eps));
  }
}

// One reversed iteration k (see sinkhorn.py): with T = e^{(f + g − C)/ε − log b} and
// S = e^{(f + g_prev − C)/ε − log a}: f̄ = f̄0 − T ḡ, C̄ += ḡ T + f̄ S, ḡ_prev = −Sᵀ f̄, (log a)̄ += ε f̄.
PYAUDIOK_CLONES
void backward_step(const float* cost, const float* la, const float* lb, const float* f, const float* g,
                   const float* g_prev, const float* fbar0, const float* gbar, float* gbar_prev, float* grad_cost,
                   float* grad_log_a, const SinkhornShape& s) {
  const float inv_eps = 1.f / s.eps;
  const int64_t m = s.m, m8 = m - m % 8;
  std::fill(gbar_prev, gbar_prev + m, 0.f);
  for (int64_t i = 0; i < s.n; ++i) {
    const float* c = cost + i * m;
    float* dc = grad_cost + i * m;
    const v8f fi = splat(f[i]);
    v8f acc = splat(0.f);
    float tail = 0.f;
    for (int64_t j = 0; j < m8; j += 8)
      acc += load8(gbar + j) * exp8((fi + load8(g + j) - load8(c + j)) * inv_eps - load8(lb + j));
    for (int64_t j = m8; j < m; ++j) tail += gbar[j] * exp1((f[i] + g[j] - c[j]) * inv_eps - lb[j]);
    const float fb = (fbar0 ? fbar0[i] : 0.f) - hsum(acc) - tail;
    grad_log_a[i] += s.eps * fb;
    const v8f vfb = splat(fb), lai = splat(la[i]);
    for (int64_t j = 0; j < m8; j += 8) {
      const v8f cj = load8(c + j);
      const v8f t = exp8((fi + load8(g + j) - cj) * inv_eps - load8(lb + j));
      const v8f sv = exp8((fi + load8(g_prev + j) - cj) * inv_eps - lai);
      store8(dc + j, load8(dc + j) + load8(gbar + j) * t + vfb * sv);
      store8(gbar_prev + j, load8(gbar_prev + j) - vfb * sv);
    }
    for (int64_t j = m8; j < m; ++j) {
      const float t = exp1((f[i] + g[j] - c[j]) * inv_eps - lb[j]);
      const float sv = exp1((f[i] + g_prev[j] - c[j]) * inv_eps - la[i]);
      dc[j] += gbar[j] * t + fb * sv;
      gbar_prev[j] -= fb * sv;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The scaling domain.

// |(p − p̂)/ε| beyond this gives the log domain (or a fresh absorption): e^30 ≈ 1e13 keeps
// products of scalings and kernel entries far from float32's range limits.
constexpr float kMaxLogScale = 30.f;
// A kernel-vector sum outside this range is too close to underflow (kernel entries below e^−87
// are already flushed to zero) or overflow to be trusted.
constexpr float kMinSum = 1e-15f, kMaxSum = 1e30f;

// Flush denormals to zero while a kernel runs: products of tiny kernel entries and scalings land
// there, where x86 arithmetic is ~100× slower, and they are far below anything that moves a sum.
class FlushDenormals {
#if defined(__SSE__)
 public:
  FlushDenormals() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ | 0x8040); }
  ~FlushDenormals() { _mm_setcsr(saved_); }

 private:
  unsigned saved_;
#endif
};

// out[r] = Σ_c mat[r, c] x[c]: dot products along the contiguous axis, eight rows at a time. One
// row alone is a chain of dependent multiply-adds (each waits for the last) and a horizontal sum;
// eight rows keep eight chains in flight, and one 8×8 transpose sums all eight.
PYAUDIOK_CLONES
void matvec_dot(const float* mat, int64_t rows, int64_t cols, const float* x, float* out) {
  const int64_t c8 = cols - cols % 8;
  int64_t r = 0;
  for (; r + 8 <= rows; r += 8) {
    const float* block = mat + r * cols;
    v8f acc[8];
    for (auto& a : acc) a = splat(0.f);
    for (int64_t c = 0; c < c8; c += 8) {
      const v8f xc = load8(x + c);
      for (int k = 0; k < 8; ++k) acc[k] += load8(block + k * cols + c) * xc;
    }
    transpose8x8(acc);  // acc[l] holds lane l of every row's partial sums
    v8f sum = acc[0];
    for (int l = 1; l < 8; ++l) sum += acc[l];
    for (int64_t c = c8; c < cols; ++c)
      for (int k = 0; k < 8; ++k) sum[k] += block[k * cols + c] * x[c];
    store8(out + r, sum);
  }
  for (; r < rows; ++r) {
    const float* row = mat + r * cols;
    v8f acc = splat(0.f);
    for (int64_t c = 0; c < c8; c += 8) acc += load8(row + c) * load8(x + c);
    float sum = hsum(acc);
    for (int64_t c = c8; c < cols; ++c) sum += row[c] * x[c];
    out[r] = sum;
  }
}

// out[c] = Σ_r x[r] mat[r, c]: scaled rows summed, vectorised along the contiguous axis.
PYAUDIOK_CLONES
void matvec_axpy(const float* mat, int64_t rows, int64_t cols, const float* x, float* out) {
  const int64_t c8 = cols - cols % 8;
  std::fill(out, out + cols, 0.f);
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = mat + r * cols;
    const v8f xr = splat(x[r]);
    for (int64_t c = 0; c < c8; c += 8) store8(out + c, load8(out + c) + xr * load8(row + c));
    for (int64_t c = c8; c < cols; ++c) out[c] += x[r] * row[c];
  }
}

// d[r, c] += x[r] y[c] + z[r] w[c]
PYAUDIOK_CLONES
void rank2_update(float* d, const float* x, const float* y, const float* z, const float* w, int64_t rows,
                  int64_t cols) {
  const int64_t c8 = cols - cols % 8;
  for (int64_t r = 0; r < rows; ++r) {
    float* row = d + r * cols;
    const v8f xr = splat(x[r]), zr = splat(z[r]);
    for (int64_t c = 0; c < c8; c += 8) store8(row + c, load8(row + c) + xr * load8(y + c) + zr * load8(w + c));
    for (int64_t c = c8; c < cols; ++c) row[c] += x[r] * y[c] + z[r] * w[c];
  }
}

// K̂ = e^{(f̂ ⊕ ĝ − C)/ε} in both layouts, so that K̂x and K̂ᵀy each take the better loop form.
struct AbsorbedKernel {
  int64_t n, m;
  std::vector<float> k, kt, f_hat, g_hat;  // [n, m], [m, n], [n], [m]

  AbsorbedKernel(int64_t n_, int64_t m_) : n(n_), m(m_), k(n_ * m_), kt(n_ * m_), f_hat(n_), g_hat(m_) {}

  void absorb(const float* cost, const float* f, const float* g, const SinkhornShape& s) {
    std::copy(f, f + n, f_hat.begin());
    std::copy(g, g + m, g_hat.begin());
    make_plan(cost, f, g, k.data(), s);
    transpose();
  }
  void transpose() {
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < m; ++j) kt[j * n + i] = k[i * m + j];
  }
  // The dot form when the reduction is at least as long as the output, else the axpy form.
  void times(const float* x, float* out) const {  // out[n] = K̂ x
    m >= n ? matvec_dot(k.data(), n, m, x, out) : matvec_axpy(kt.data(), m, n, x, out);
  }
  void times_transposed(const float* y, float* out) const {  // out[m] = K̂ᵀ y
    n >= m ? matvec_dot(kt.data(), m, n, y, out) : matvec_axpy(k.data(), n, m, y, out);
  }
};

// out = e^{(p − p̂)/ε} (0 where p = −inf: zero mass); false if some exponent leaves ±kMaxLogScale.
// Eight at a time, the range check included: the unrolled backward takes n + 2m of these per
// iteration, as many as its two matrix-vector products take multiply-add vectors.
PYAUDIOK_CLONES
bool scalings(const float* p, const float* p_hat, int64_t len, float inv_eps, float* out) {
  const v8f scale = splat(inv_eps), limit = splat(kMaxLogScale), zero_mass = splat(-kInf);
  v8i out_of_range = splat_i(0);
  int64_t i = 0;
  for (; i + 8 <= len; i += 8) {
    const v8f pv = load8(p + i), e = (pv - load8(p_hat + i)) * scale;
    const v8i massive = pv != zero_mass;
    out_of_range |= massive & ~(vmax(e, -e) <= limit);  // NaN fails the comparison too
    store8(out + i, exp8(massive ? e : zero_mass));    // e^−inf = 0
  }
  for (; i < len; ++i) {
    if (p[i] == -kInf) {
      out[i] = 0.f;
      continue;
    }
    const float e = (p[i] - p_hat[i]) * inv_eps;
    if (!(std::fabs(e) <= kMaxLogScale)) return false;
    out[i] = exp1(e);
  }
  return !any(out_of_range);
}

// out = p̂ + ε log(scale), −inf where the scale is 0; 8 logarithms at a time (with the backward's
// history every forward iteration forms n + m of them).
PYAUDIOK_CLONES
void potentials_from_scalings(const float* scale, const float* hat, int64_t len, float eps, float* out) {
  int64_t i = 0;
  for (; i + 8 <= len; i += 8) {
    const v8f sc = load8(scale + i);
    const v8f p = load8(hat + i) + eps * log8(sc);
    store8(out + i, sc > 0.f ? p : splat(-kInf));
  }
  for (; i < len; ++i) out[i] = scale[i] > 0.f ? hat[i] + eps * std::log(scale[i]) : -kInf;
}

// Whether iteration k stops before its g-update: its row-marginal error is not above tol. A NaN
// error (a NaN or −inf in the cost) stops it too, as the reference's `err > tol` test does.
PYAUDIOK_INLINE bool converged(float err, int64_t k, const SinkhornShape& s) {
  return s.tol > 0 && k > 1 && !(err > s.tol);
}

// The forward's scaling-domain state: u = e^{(f − f̂)/ε}, v = e^{(g − ĝ)/ε} relative to the
// absorbed kernel. An iteration is u' = a / K̂v, v' = b / K̂ᵀu' (0 where the marginal is 0): two
// matrix-vector products and n + m divisions. The potentials f = f̂ + ε log u are formed only
// where they are needed (history for the backward, a switch to the log domain, the result).
class ScaledForward {
 public:
  ScaledForward(const float* log_a, const float* log_b, int64_t n, int64_t m)
      : kern(n, m), u(n), v(m), u_new(n), v_new(m), a(n), b(m) {
    for (int64_t i = 0; i < n; ++i) a[i] = log_a[i] == -kInf ? 0.f : exp1(log_a[i]);
    for (int64_t j = 0; j < m; ++j) b[j] = log_b[j] == -kInf ? 0.f : exp1(log_b[j]);
  }

  // Absorb potentials (f, g): K̂ from them, u = v = 1 (0 for zero mass).
  void absorb(const float* cost, const float* f, const float* g, const SinkhornShape& s) {
    kern.absorb(cost, f, g, s);
    for (int64_t i = 0; i < s.n; ++i) u[i] = f[i] == -kInf ? 0.f : 1.f;
    for (int64_t j = 0; j < s.m; ++j) v[j] = g[j] == -kInf ? 0.f : 1.f;
  }

  // u_new = a / K̂v; false if a sum or a scaling leaves the safe range. *err = the row-marginal
  // error of the plan before this update, Σ_i |a_i u_i / u_new_i − a_i| (skipped when err is
  // null: with no tolerance nothing reads it).
  bool f_update(float* err) {
    kern.times(v.data(), u_new.data());
    if (!divide(a.data(), u_new.data(), kern.n)) return false;
    if (err == nullptr) return true;
    float e = 0.f;
    for (int64_t i = 0; i < kern.n; ++i)
      if (a[i] > 0.f) e += std::fabs(a[i] * u[i] / u_new[i] - a[i]);
    *err = e;
    return true;
  }
  // v_new = b / K̂ᵀu_new; false if out of the safe range.
  bool g_update() {
    kern.times_transposed(u_new.data(), v_new.data());
    return divide(b.data(), v_new.data(), kern.m);
  }
  void accept() {
    u.swap(u_new);
    v.swap(v_new);
  }

  // f = f̂ + ε log(scale) (−inf where the scale is 0).
  static void potentials(const std::vector<float>& scale, const std::vector<float>& hat, float eps, float* out) {
    potentials_from_scalings(scale.data(), hat.data(), static_cast<int64_t>(scale.size()), eps, out);
  }

  AbsorbedKernel kern;
  std::vector<float> u, v, u_new, v_new;

 private:
  // sums[i] = marginal[i] / sums[i] in place; false if some sum of a massive entry is outside
  // [kMinSum, kMaxSum] or the scaling outside e^±kMaxLogScale.
  static bool divide(const float* marginal, float* sums, int64_t len) {
    const float lo = std::exp(-kMaxLogScale), hi = std::exp(kMaxLogScale);
    bool ok = true;
    for (int64_t i = 0; i < len; ++i) {
      const float x = sums[i];
      const float q = marginal[i] > 0.f ? marginal[i] / x : 0.f;
      ok &= marginal[i] == 0.f || (x >= kMinSum && x <= kMaxSum && q >= lo && q <= hi);
      sums[i] = q;
    }
    return ok;
  }

  std::vector<float> a, b;
};

// When to absorb the current potentials into a new kernel after the scaling domain failed:
// at once the first time, then only after 1, 2, 4, … further failing iterations, so that a
// problem that keeps leaving the safe range costs little more than the pure log domain.
class AbsorbSchedule {
 public:
  bool due_after_failure() {
    if (wait_ > 0) {
      --wait_;
      return false;
    }
    wait_ = backoff_;
    backoff_ = std::max<int64_t>(1, 2 * backoff_);
    return true;
  }
  void success() { backoff_ = 0; }

 private:
  int64_t wait_ = 0, backoff_ = 0;
};

// −inf (zero mass) -> 0, so e^{x − log a} stays e^{−inf} = 0 instead of NaN.
std::vector<float> finite_or_zero(const float* v, int64_t size) {
  std::vector<float> out(v, v + size);
  for (auto& x : out) x = x == -kInf ? 0.f : x;
  return out;
}

// The reversed iterations in the scaling domain. With U = e^{(f − f̂)/ε}, V = e^{(g − ĝ)/ε},
// V' = e^{(g_prev − ĝ)/ε}: T = K̂ ⊙ (U ⊗ V/b), S = K̂ ⊙ (U/a ⊗ V'), so
//   f̄ = f̄0 − U ⊙ K̂ y with y = V ⊙ ḡ / b,   ḡ_prev = −V' ⊙ K̂ᵀ z with z = f̄ ⊙ U / a,
//   C̄ += K̂ ⊙ (U yᵀ + z V'ᵀ),
// and the rank-2 terms accumulate in D until the kernel changes (C̄ += K̂ ⊙ D then).
class ScaledBackward {
 public:
  ScaledBackward(int64_t n, int64_t m, const float* la, const float* lb)
      : kern_(n, m), d_(n * m), u_(n), z_(n), t_(n), inv_a_(n), v_(m), v_prev_(m), y_(m), w_(m), inv_b_(m),
        g_mid_(m) {
    for (int64_t i = 0; i < n; ++i) inv_a_[i] = exp1(-la[i]);
    for (int64_t j = 0; j < m; ++j) inv_b_[j] = exp1(-lb[j]);
  }

  // One reversed iteration; false if its scalings stay out of range even after a fresh
  // absorption (the caller then takes the log-domain step).
  bool step(const float* cost, const float* f, const float* g, const float* g_prev, const float* fbar0,
            const float* gbar, float* gbar_prev, float* grad_cost, float* grad_log_a, const SinkhornShape& s) {
    if (!scale(f, g, g_prev, s)) {
      flush(grad_cost);
      // ĝ halfway between g and g_prev halves the exponents of both V and V'.
      for (int64_t j = 0; j < kern_.m; ++j)
        g_mid_[j] = g[j] == -kInf || g_prev[j] == -kInf ? g[j] : 0.5f * (g[j] + g_prev[j]);
      kern_.absorb(cost, f, g_mid_.data(), s);
      has_kernel_ = true;
      if (!scale(f, g, g_prev, s)) return false;
    }
    const int64_t n = kern_.n, m = kern_.m;
    for (int64_t j = 0; j < m; ++j) y_[j] = v_[j] * gbar[j] * inv_b_[j];
    kern_.times(y_.data(), t_.data());
    for (int64_t i = 0; i < n; ++i) {
      const float fb = (fbar0 ? fbar0[i] : 0.f) - u_[i] * t_[i];
      grad_log_a[i] += s.eps * fb;
      z_[i] = fb * u_[i] * inv_a_[i];
    }
    kern_.times_transposed(z_.data(), w_.data());
    for (int64_t j = 0; j < m; ++j) gbar_prev[j] = -v_prev_[j] * w_[j];
    rank2_update(d_.data(), u_.data(), y_.data(), z_.data(), v_prev_.data(), n, m);
    return true;
  }

  // C̄ += K̂ ⊙ D; D = 0.
  void flush(float* grad_cost) {
    if (!has_kernel_) return;
    for (int64_t e = 0; e < kern_.n * kern_.m; ++e) grad_cost[e] += kern_.k[e] * d_[e];
    std::fill(d_.begin(), d_.end(), 0.f);
  }

 private:
  bool scale(const float* f, const float* g, const float* g_prev, const SinkhornShape& s) {
    const float inv_eps = 1.f / s.eps;
    return has_kernel_ && scalings(f, kern_.f_hat.data(), kern_.n, inv_eps, u_.data()) &&
           scalings(g, kern_.g_hat.data(), kern_.m, inv_eps, v_.data()) &&
           scalings(g_prev, kern_.g_hat.data(), kern_.m, inv_eps, v_prev_.data());
  }

  AbsorbedKernel kern_;
  bool has_kernel_ = false;
  std::vector<float> d_, u_, z_, t_, inv_a_, v_, v_prev_, y_, w_, inv_b_, g_mid_;
};

}  // namespace

void sinkhorn_forward_one(const float* cost, const float* log_a, const float* log_b, const SinkhornShape& s,
                          float* plan, float* f, float* g, int64_t* iters, float* hist_f, float* hist_g) {
  FlushDenormals flush_denormals;
  auto slot_f = [&](int64_t k) { return hist_f + (s.slots == 2 ? k & 1 : k) * s.n; };
  auto slot_g = [&](int64_t k) { return hist_g + (s.slots == 2 ? k & 1 : k) * s.m; };
  // One iteration's two slots are a history too (slot 0 keeps the zero start the backward reads); a
  // 2-slot ring would overwrite it with the final values.
  const bool history = s.slots == s.n_iters + 1;
  std::fill(slot_f(0), slot_f(0) + s.n, 0.f);
  std::fill(slot_g(0), slot_g(0) + s.m, 0.f);
  std::vector<float> colmax(s.m), colsum(s.m);
  ScaledForward sc(log_a, log_b, s.n, s.m);
  AbsorbSchedule schedule;
  sc.absorb(cost, slot_f(0), slot_g(0), s);
  bool scaled = true;  // (u, v) hold the iterate; else the slots do
  // The potentials of iteration k from the scaling state, into its slots.
  auto materialise = [&](int64_t k) {
    ScaledForward::potentials(sc.u, sc.kern.f_hat, s.eps, slot_f(k));
    ScaledForward::potentials(sc.v, sc.kern.g_hat, s.eps, slot_g(k));
  };
  int64_t done = 0;
  for (int64_t k = 1; k <= s.n_iters; ++k) {
    float err = 0.f;
    if (scaled && sc.f_update(s.tol > 0 ? &err : nullptr)) {
      if (converged(err, k, s)) break;
      if (sc.g_update()) {
        sc.accept();
        if (history) materialise(k);
        schedule.success();
        done = k;
        continue;
      }
      // The g-update left the safe range: finish this iteration in the log domain from f_k.
      ScaledForward::potentials(sc.u_new, sc.kern.f_hat, s.eps, slot_f(k));
    } else {
      if (scaled) materialise(k - 1);
      f_update(cost, log_a, slot_g(k - 1), slot_f(k), s);
      err = marginal_error(log_a, slot_f(k - 1), slot_f(k), s);
      if (converged(err, k, s)) {
        scaled = false;
        break;
      }
    }
    g_update(cost, log_b, slot_f(k), slot_g(k), colmax.data(), colsum.data(), s);
    done = k;
    scaled = false;
    if (schedule.due_after_failure()) {
      sc.absorb(cost, slot_f(k), slot_g(k), s);
      scaled = true;
    }
  }
  if (scaled) materialise(done);
  *iters = done;
  std::copy(slot_f(done), slot_f(done) + s.n, f);
  std::copy(slot_g(done), slot_g(done) + s.m, g);
  if (!history) {  // the scaled path leaves the other slot unwritten: make it defined (the final values)
    std::copy(f, f + s.n, slot_f(done + 1));
    std::copy(g, g + s.m, slot_g(done + 1));
  }
  make_plan(cost, f, g, plan, s);
}

void sinkhorn_backward_one(const float* grad_plan, const float* grad_f, const float* grad_g, const float* cost,
                           const float* log_a, const float* log_b, const float* plan, int64_t iters,
                           const float* hist_f, const float* hist_g, const SinkhornShape& s, float* grad_cost,
                           float* grad_log_a, float* grad_log_b) {
  FlushDenormals flush_denormals;
  const int64_t n = s.n, m = s.m;
  const float inv_eps = 1.f / s.eps;
  const std::vector<float> la = finite_or_zero(log_a, n), lb = finite_or_zero(log_b, m);
  // From the plan: q = P̄ ⊙ P / ε; C̄ = −q, f̄ = grad_f + q1, ḡ = grad_g + qᵀ1.
  std::vector<float> fbar(grad_f, grad_f + n), gbar(grad_g, grad_g + m), gbar_prev(m);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < m; ++j) {
      const float q = grad_plan[i * m + j] * plan[i * m + j] * inv_eps;
      grad_cost[i * m + j] = -q;
      fbar[i] += q;
      gbar[j] += q;
    }
  }
  std::fill(grad_log_a, grad_log_a + n, 0.f);
  std::fill(grad_log_b, grad_log_b + m, 0.f);
  ScaledBackward scaled(n, m, la.data(), lb.data());
  for (int64_t k = iters; k >= 1; --k) {
    for (int64_t j = 0; j < m; ++j) grad_log_b[j] += s.eps * gbar[j];
    const float* f = hist_f + k * n;
    const float* g = hist_g + k * m;
    const float* g_prev = hist_g + (k - 1) * m;
    const float* fbar0 = k == iters ? fbar.data() : nullptr;
    if (!scaled.step(cost, f, g, g_prev, fbar0, gbar.data(), gbar_prev.data(), grad_cost, grad_log_a, s))
      backward_step(cost, la.data(), lb.data(), f, g, g_prev, fbar0, gbar.data(), gbar_prev.data(), grad_cost,
                    grad_log_a, s);
    gbar.swap(gbar_prev);
  }
  scaled.flush(grad_cost);
}

}  // namespace pyaudiok::cpu
