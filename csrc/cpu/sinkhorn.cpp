// Log-domain Sinkhorn on the CPU, one batch element per task (the binding spreads the batch over
// threads). Each iteration is two passes over the cost matrix: the f-update is a row-wise
// log-sum-exp, the g-update a column-wise one done row by row (a max pass, then an exp-sum pass,
// vectorised across columns). All exponentials go through a polynomial 8-wide exp (Cephes'
// expf, ~2 ulp) compiled for AVX2 where the CPU has it: exp is the whole cost here.
#include "sinkhorn.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace pyaudiok::cpu {
namespace {

typedef float v8f __attribute__((vector_size(32)));
typedef float v8f_u __attribute__((vector_size(32), aligned(4)));
typedef int32_t v8i __attribute__((vector_size(32)));

constexpr float kInf = std::numeric_limits<float>::infinity();

inline v8f load8(const float* p) { return *reinterpret_cast<const v8f_u*>(p); }
inline void store8(float* p, v8f v) { *reinterpret_cast<v8f_u*>(p) = v; }
inline v8f splat(float v) { return v8f{} + v; }
inline v8f vmax(v8f a, v8f b) { return a > b ? a : b; }

// e^x for 8 lanes; x < −87.3 (including −inf) gives 0, NaN stays NaN.
inline __attribute__((always_inline)) v8f exp8(v8f x) {
  const v8f lo = splat(-87.3f), hi = splat(88.7f);
  const v8i underflow = x < lo;
  v8f xc = vmax(x, lo);
  xc = xc < hi ? xc : hi;
  v8f fx = xc * 1.44269504088896341f + 0.5f;
  v8f fl = __builtin_convertvector(__builtin_convertvector(fx, v8i), v8f);
  fl = fl > fx ? fl - 1.0f : fl;  // floor
  v8f r = xc - fl * 0.693359375f + fl * 2.12194440e-4f;
  v8f y = splat(1.9875691500e-4f);
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r * r + r + 1.0f;
  v8i e = (__builtin_convertvector(fl, v8i) + 127) << 23;
  v8f scale;
  __builtin_memcpy(&scale, &e, sizeof scale);
  y = y * scale;
  y = x != x ? x : y;  // NaN in, NaN out
  return underflow ? splat(0.f) : y;
}

inline float exp1(float x) {
  v8f v = splat(x);
  return exp8(v)[0];
}

inline float hmax(v8f v) {
  float r = v[0];
  for (int k = 1; k < 8; ++k) r = std::max(r, v[k]);
  return r;
}
inline float hsum(v8f v) {
  float r = 0.f;
  for (int k = 0; k < 8; ++k) r += v[k];
  return r;
}

// LSE_j (g_j − c_j) / ε, returned as ε · LSE (the shift mx is in cost units).
inline float row_lse(const float* g, const float* c, int64_t m, float inv_eps, float eps) {
  int64_t j = 0;
  v8f vm = splat(-kInf);
  for (; j + 8 <= m; j += 8) vm = vmax(vm, load8(g + j) - load8(c + j));
  float mx = hmax(vm);
  for (; j < m; ++j) mx = std::max(mx, g[j] - c[j]);
  if (mx == -kInf) return -kInf;
  v8f vs = splat(0.f);
  j = 0;
  for (; j + 8 <= m; j += 8) vs += exp8((load8(g + j) - load8(c + j) - mx) * inv_eps);
  float sum = hsum(vs);
  for (; j < m; ++j) sum += exp1((g[j] - c[j] - mx) * inv_eps);
  return mx + eps * std::log(sum);
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define PYAUDIOK_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define PYAUDIOK_CLONES
#endif

// f_new = ε log a − ε LSE_j((g − C_i·)/ε); returns Σ_i |a_i e^{(f_old_i − f_new_i)/ε} − a_i|.
PYAUDIOK_CLONES
float f_update(const float* cost, const float* log_a, const float* g, const float* f_old, float* f_new,
               const SinkhornShape& s) {
  const float inv_eps = 1.f / s.eps;
  float err = 0.f;
  for (int64_t i = 0; i < s.n; ++i) {
    const float fi = s.eps * log_a[i] - row_lse(g, cost + i * s.m, s.m, inv_eps, s.eps);
    if (log_a[i] != -kInf) err += std::fabs(exp1(log_a[i] + (f_old[i] - fi) * inv_eps) - exp1(log_a[i]));
    f_new[i] = fi;
  }
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
  for (int64_t i = 0; i < s.n; ++i) {
    const float* c = cost + i * m;
    const v8f fi = splat(f[i]);
    for (int64_t j = 0; j < m8; j += 8)
      store8(colsum + j, load8(colsum + j) + exp8((fi - load8(c + j) - load8(colmax + j)) * inv_eps));
    for (int64_t j = m8; j < m; ++j) colsum[j] += exp1((f[i] - c[j] - colmax[j]) * inv_eps);
  }
  for (int64_t j = 0; j < m; ++j)
    g[j] = colmax[j] == -kInf ? -kInf : s.eps * log_b[j] - (colmax[j] + s.eps * std::log(colsum[j]));
}

// plan_ij = exp((f_i + g_j − C_ij)/ε)
PYAUDIOK_CLONES
void make_plan(const float* cost, const float* f, const float* g, float* plan, const SinkhornShape& s) {
  const float inv_eps = 1.f / s.eps;
  const int64_t m = s.m, m8 = m - m % 8;
  for (int64_t i = 0; i < s.n; ++i) {
    const float* c = cost + i * m;
    float* p = plan + i * m;
    const v8f fi = splat(f[i]);
    for (int64_t j = 0; j < m8; j += 8) store8(p + j, exp8((fi + load8(g + j) - load8(c + j)) * inv_eps));
    for (int64_t j = m8; j < m; ++j) p[j] = exp1((f[i] + g[j] - c[j]) * inv_eps);
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

// −inf (zero mass) -> 0, so e^{x − log a} stays e^{−inf} = 0 instead of NaN.
std::vector<float> finite_or_zero(const float* v, int64_t size) {
  std::vector<float> out(v, v + size);
  for (auto& x : out) x = x == -kInf ? 0.f : x;
  return out;
}

}  // namespace

void sinkhorn_forward_one(const float* cost, const float* log_a, const float* log_b, const SinkhornShape& s,
                          float* plan, float* f, float* g, int64_t* iters, float* hist_f, float* hist_g) {
  auto slot_f = [&](int64_t k) { return hist_f + (s.slots == 2 ? k & 1 : k) * s.n; };
  auto slot_g = [&](int64_t k) { return hist_g + (s.slots == 2 ? k & 1 : k) * s.m; };
  std::fill(slot_f(0), slot_f(0) + s.n, 0.f);
  std::fill(slot_g(0), slot_g(0) + s.m, 0.f);
  std::vector<float> colmax(s.m), colsum(s.m);
  int64_t done = 0;
  for (int64_t k = 1; k <= s.n_iters; ++k) {
    const float err = f_update(cost, log_a, slot_g(k - 1), slot_f(k - 1), slot_f(k), s);
    if (s.tol > 0 && k > 1 && err <= s.tol) break;
    g_update(cost, log_b, slot_f(k), slot_g(k), colmax.data(), colsum.data(), s);
    done = k;
  }
  *iters = done;
  std::copy(slot_f(done), slot_f(done) + s.n, f);
  std::copy(slot_g(done), slot_g(done) + s.m, g);
  make_plan(cost, f, g, plan, s);
}

void sinkhorn_backward_one(const float* grad_plan, const float* grad_f, const float* grad_g, const float* cost,
                           const float* log_a, const float* log_b, const float* plan, int64_t iters,
                           const float* hist_f, const float* hist_g, const SinkhornShape& s, float* grad_cost,
                           float* grad_log_a, float* grad_log_b) {
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
  for (int64_t k = iters; k >= 1; --k) {
    for (int64_t j = 0; j < m; ++j) grad_log_b[j] += s.eps * gbar[j];
    backward_step(cost, la.data(), lb.data(), hist_f + k * n, hist_g + k * m, hist_g + (k - 1) * m,
                  k == iters ? fbar.data() : nullptr, gbar.data(), gbar_prev.data(), grad_cost, grad_log_a, s);
    gbar.swap(gbar_prev);
  }
}

}  // namespace pyaudiok::cpu
