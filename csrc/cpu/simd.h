// 8-lane float vectors (GCC/Clang vector extensions) shared by the CPU kernels: AVX2 registers in
// the x86-64-v3 clones (see target_clones.h), SSE pairs or NEON elsewhere. The unaligned variant
// is for loads and stores at arbitrary float pointers.
#pragma once
#include <cstdint>

namespace pyaudiok::cpu::simd {

typedef float v8f __attribute__((vector_size(32)));
typedef float v8f_u __attribute__((vector_size(32), aligned(4)));
typedef int32_t v8i __attribute__((vector_size(32)));
typedef uint32_t v8u __attribute__((vector_size(32)));

inline v8f load8(const float* p) { return *reinterpret_cast<const v8f_u*>(p); }
inline void store8(float* p, v8f v) { *reinterpret_cast<v8f_u*>(p) = v; }
// Lane-wise broadcasts, as a shuffle of lane 0: the compiler then emits one broadcast. `v8f{} + v`
// is not an identity for v = −0 (0 + −0 = +0), so it kept a scalar add in front of every broadcast
// (in the RVQ micro-kernel that doubled the floating-point uops per multiply-add), and an
// initialiser list or GCC's __builtin_shuffle became a chain of lane inserts.
#if defined(__has_builtin)
#if __has_builtin(__builtin_shufflevector)
#define PYAUDIOK_HAS_SHUFFLEVECTOR 1
#endif
#endif
#ifdef PYAUDIOK_HAS_SHUFFLEVECTOR
inline v8f splat(float v) {
  const v8f r = {v};
  return __builtin_shufflevector(r, r, 0, 0, 0, 0, 0, 0, 0, 0);
}
inline v8i splat_i(int32_t v) {
  const v8i r = {v};
  return __builtin_shufflevector(r, r, 0, 0, 0, 0, 0, 0, 0, 0);
}
#else  // older compilers: correct, one scalar add slower
inline v8f splat(float v) { return v8f{} + v; }
inline v8i splat_i(int32_t v) { return v8i{} + v; }
#endif
// Transposes the 8×8 block r[i][j] in place (r[i] becomes the old column i): unpack pairs, then
// pairs of pairs, then swap the 128-bit halves, 24 shuffles in all.
inline __attribute__((always_inline)) void transpose8x8(v8f* r) {
#ifdef PYAUDIOK_HAS_SHUFFLEVECTOR
  v8f t[8], q[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = __builtin_shufflevector(r[i], r[i + 1], 0, 8, 1, 9, 4, 12, 5, 13);
    t[i + 1] = __builtin_shufflevector(r[i], r[i + 1], 2, 10, 3, 11, 6, 14, 7, 15);
  }
  for (int i = 0; i < 8; i += 4)
    for (int k = 0; k < 2; ++k) {
      q[i + 2 * k] = __builtin_shufflevector(t[i + k], t[i + k + 2], 0, 1, 8, 9, 4, 5, 12, 13);
      q[i + 2 * k + 1] = __builtin_shufflevector(t[i + k], t[i + k + 2], 2, 3, 10, 11, 6, 7, 14, 15);
    }
  for (int i = 0; i < 4; ++i) {
    r[i] = __builtin_shufflevector(q[i], q[i + 4], 0, 1, 2, 3, 8, 9, 10, 11);
    r[i + 4] = __builtin_shufflevector(q[i], q[i + 4], 4, 5, 6, 7, 12, 13, 14, 15);
  }
#else
  float m[8][8];
  for (int i = 0; i < 8; ++i)
    for (int j = 0; j < 8; ++j) m[j][i] = r[i][j];
  for (int i = 0; i < 8; ++i) __builtin_memcpy(&r[i], m[i], sizeof r[i]);
#endif
}
inline __attribute__((always_inline)) v8f vmax(v8f a, v8f b) { return a > b ? a : b; }
inline __attribute__((always_inline)) v8f vmin(v8f a, v8f b) { return a < b ? a : b; }

// exp and log over U vectors at once, in place: every step is written for the U vectors in a row,
// so U independent evaluations interleave in program order. Each evaluation is a chain of ~30
// dependent operations; out-of-order execution alone overlaps only about two of them, which left
// sPCEN's compression bound by latency. (A 32-lane vector type does the same on paper, but GCC 12
// lowers its conversions and selects lane by lane.) U = 1 is exp8/log8 below.
#define PYAUDIOK_EACH for (int u = 0; u < U; ++u)

// e^x lane-wise; x < −87.3 (including −inf) gives 0, x > ln FLT_MAX (including +inf) gives +inf,
// NaN stays NaN. The power of two is capped at 2^127 so that results up to FLT_MAX stay finite (the
// polynomial is then evaluated up to r = 0.97, still within 3e-7 where the result is finite).
template <int U>
inline __attribute__((always_inline)) void exp_n(v8f* x) {
  const v8f lo = splat(-87.3f), hi = splat(89.0f);
  v8f xc[U], fl[U], r[U], y[U];
  PYAUDIOK_EACH {
    xc[u] = vmax(x[u], lo);
    xc[u] = xc[u] < hi ? xc[u] : hi;
  }
  PYAUDIOK_EACH {
    const v8f fx = xc[u] * 1.44269504088896341f + 0.5f;
    fl[u] = __builtin_convertvector(__builtin_convertvector(fx, v8i), v8f);
    fl[u] = fl[u] > fx ? fl[u] - 1.0f : fl[u];  // floor
    fl[u] = fl[u] < 127.f ? fl[u] : splat(127.f);
  }
  PYAUDIOK_EACH r[u] = xc[u] - fl[u] * 0.693359375f + fl[u] * 2.12194440e-4f;
  PYAUDIOK_EACH y[u] = r[u] * 1.9875691500e-4f + 1.3981999507e-3f;
  PYAUDIOK_EACH y[u] = y[u] * r[u] + 8.3334519073e-3f;
  PYAUDIOK_EACH y[u] = y[u] * r[u] + 4.1665795894e-2f;
  PYAUDIOK_EACH y[u] = y[u] * r[u] + 1.6666665459e-1f;
  PYAUDIOK_EACH y[u] = y[u] * r[u] + 5.0000001201e-1f;
  PYAUDIOK_EACH y[u] = y[u] * r[u] * r[u] + r[u] + 1.0f;
  PYAUDIOK_EACH {
    const v8i e = (__builtin_convertvector(fl[u], v8i) + 127) << 23;
    v8f scale;
    __builtin_memcpy(&scale, &e, sizeof scale);
    y[u] = y[u] * scale;
    y[u] = x[u] != x[u] ? x[u] : y[u];  // NaN in, NaN out
    x[u] = x[u] < lo ? splat(0.f) : y[u];
  }
}

// ln x lane-wise (Cephes' logf, ~2 ulp for normal x > 0); 0 gives −inf, x < 0 and NaN give NaN,
// +inf stays +inf. Denormal inputs are treated as 0.
template <int U>
inline __attribute__((always_inline)) void log_n(v8f* x) {
  v8f e[U], m[U], z[U], y[U];
  PYAUDIOK_EACH {
    v8i bits;
    __builtin_memcpy(&bits, &x[u], sizeof bits);
    e[u] = __builtin_convertvector(((bits >> 23) & 0xff) - 126, v8f);
    const v8i mant = (bits & 0x007fffff) | 0x3f000000;  // m in [0.5, 1)
    __builtin_memcpy(&m[u], &mant, sizeof m[u]);
    const v8i small = m[u] < 0.707106781186547524f;
    e[u] = small ? e[u] - 1.0f : e[u];
    m[u] = small ? m[u] + m[u] - 1.0f : m[u] - 1.0f;
    z[u] = m[u] * m[u];
  }
  PYAUDIOK_EACH y[u] = m[u] * 7.0376836292e-2f - 1.1514610310e-1f;
  PYAUDIOK_EACH y[u] = y[u] * m[u] + 1.1676998740e-1f;
  PYAUDIOK_EACH y[u] = y[u] * m[u] - 1.2420140846e-1f;
  PYAUDIOK_EACH y[u] = y[u] * m[u] + 1.4249322787e-1f;
  PYAUDIOK_EACH y[u] = y[u] * m[u] - 1.6668057665e-1f;
  PYAUDIOK_EACH y[u] = y[u] * m[u] + 2.0000714765e-1f;
  PYAUDIOK_EACH y[u] = y[u] * m[u] - 2.4999993993e-1f;
  PYAUDIOK_EACH y[u] = y[u] * m[u] + 3.3333331174e-1f;
  PYAUDIOK_EACH {
    y[u] = y[u] * m[u] * z[u] - 2.12194440e-4f * e[u] - 0.5f * z[u];
    v8f r = m[u] + y[u] + 0.693359375f * e[u];
    const float inf = __builtin_inff(), nan = __builtin_nanf("");
    r = x[u] == inf ? splat(inf) : r;
    r = x[u] < 1.17549435e-38f ? splat(-inf) : r;  // 0 and denormals
    x[u] = (x[u] < 0.f) | (x[u] != x[u]) ? splat(nan) : r;
  }
}

// Fast log2 and exp2 for arguments the caller has checked (see FastRangeGuard): about half the
// operations of log_n/exp_n above, with no special-value handling. Where a result feeds an exp,
// as in x^p = 2^(p·log2 x), only log2's absolute error matters, here < 1e-9 (plus rounding).
// log2 x for positive normal finite x: x = 2^e·m, m in [√½, √2), log2 m = s·P(s²), s = (m−1)/(m+1).
template <int U>
inline __attribute__((always_inline)) void log2_normal_n(v8f* x) {
  v8f s[U], z[U], y[U], e[U];
  PYAUDIOK_EACH {
    v8i bits;
    __builtin_memcpy(&bits, &x[u], sizeof bits);
    // Subtracting √½'s bits carries into the exponent field exactly when m would reach √2, so the
    // arithmetic shift gives e and removing e from the exponent field leaves m in [√½, √2).
    // (Unsigned where it may wrap: the lanes that later fail the guard hold any bits.)
    const v8i k = (v8i)((v8u)bits - 0x3f3504f3u) >> 23;
    const v8u mant = (v8u)bits - ((v8u)k << 23);
    e[u] = __builtin_convertvector(k, v8f);
    v8f m;
    __builtin_memcpy(&m, &mant, sizeof m);
    s[u] = (m - 1.0f) / (m + 1.0f);
    z[u] = s[u] * s[u];
  }
  PYAUDIOK_EACH y[u] = z[u] * 0.43424180150032043f + 0.5765852928161621f;
  PYAUDIOK_EACH y[u] = y[u] * z[u] + 0.961800754070282f;
  PYAUDIOK_EACH y[u] = y[u] * z[u] + 2.885390043258667f;
  PYAUDIOK_EACH x[u] = s[u] * y[u] + e[u];
}

// 2^x for |x| < 126 (a normal result): x = n + f, n the nearest integer, 2^f a minimax polynomial
// on [−½, ½] (relative error 3e-9 before rounding). Adding 1.5·2^23 rounds to the nearest integer
// and leaves n in the low bits of the sum; shifted into the exponent field, the sum's other bits
// (1.5·2^23's) fall off the top, so it adds n to 2^f's exponent as it is.
template <int U>
inline __attribute__((always_inline)) void exp2_small_n(v8f* x) {
  constexpr float kRound = 12582912.0f;  // 1.5·2^23
  v8f f[U], y[U];
  v8u n[U];  // unsigned: the shift below wraps by design
  PYAUDIOK_EACH {
    const v8f t = x[u] + kRound;
    __builtin_memcpy(&n[u], &t, sizeof n[u]);
    f[u] = x[u] - (t - kRound);
  }
  PYAUDIOK_EACH y[u] = f[u] * 0.00015337580407503992f + 0.001339986571110785f;
  PYAUDIOK_EACH y[u] = y[u] * f[u] + 0.009618519805371761f;
  PYAUDIOK_EACH y[u] = y[u] * f[u] + 0.05550329014658928f;
  PYAUDIOK_EACH y[u] = y[u] * f[u] + 0.24022646248340607f;
  PYAUDIOK_EACH y[u] = y[u] * f[u] + 0.6931471824645996f;
  PYAUDIOK_EACH {
    y[u] = y[u] * f[u] + 1.0f;
    v8u bits;
    __builtin_memcpy(&bits, &y[u], sizeof bits);
    bits += n[u] << 23;
    __builtin_memcpy(&x[u], &bits, sizeof bits);
  }
}

// True if any lane of the mask is set.
inline __attribute__((always_inline)) bool any(v8i mask) {
  uint64_t w[4];
  __builtin_memcpy(w, &mask, sizeof w);
  return (w[0] | w[1] | w[2] | w[3]) != 0;
}

// What log2_normal_n and exp2_small_n need of their arguments, folded over any number of vectors at
// two operations each and tested once: log2 arguments positive, normal and finite; exponents
// within ±126. An exponent is assumed finite (the caller checks its factors): a NaN or ±∞ log2
// argument poisons `poison` (x·0 + p is NaN for them), while min/max may drop a NaN.
struct FastRangeGuard {
  v8f poison{}, smallest = splat(1.f), lowest{}, highest{};
  __attribute__((always_inline)) void log2_arg(v8f x) {
    poison = x * 0.f + poison;
    smallest = vmin(smallest, x);
  }
  __attribute__((always_inline)) void exponent(v8f y) {
    lowest = vmin(lowest, y);
    highest = vmax(highest, y);
  }
  __attribute__((always_inline)) bool ok() const {
    return !any(~((poison == 0.f) & (smallest >= 1.17549435e-38f) & (lowest > -126.f) & (highest < 126.f)));
  }
};

#undef PYAUDIOK_EACH

inline __attribute__((always_inline)) v8f exp8(v8f x) {
  exp_n<1>(&x);
  return x;
}
inline __attribute__((always_inline)) v8f log8(v8f x) {
  log_n<1>(&x);
  return x;
}

}  // namespace pyaudiok::cpu::simd
