// 8-lane float vectors (GCC/Clang vector extensions) shared by the CPU kernels: AVX2 registers in
// the x86-64-v3 clones (see target_clones.h), SSE pairs or NEON elsewhere. The unaligned variant
// is for loads and stores at arbitrary float pointers.
#pragma once
#include <cstdint>

namespace pyaudiok::cpu::simd {

typedef float v8f __attribute__((vector_size(32)));
typedef float v8f_u __attribute__((vector_size(32), aligned(4)));
typedef int32_t v8i __attribute__((vector_size(32)));

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


// ln x for 8 lanes (Cephes' logf, ~2 ulp for normal x > 0); 0 gives −inf, x < 0 and NaN give NaN,
// +inf stays +inf. Denormal inputs are treated as 0.
inline __attribute__((always_inline)) v8f log8(v8f x) {
  v8i bits;
  __builtin_memcpy(&bits, &x, sizeof bits);
  v8f e = __builtin_convertvector(((bits >> 23) & 0xff) - 126, v8f);
  const v8i mant = (bits & 0x007fffff) | 0x3f000000;  // m in [0.5, 1)
  v8f m;
  __builtin_memcpy(&m, &mant, sizeof m);
  const v8i small = m < 0.707106781186547524f;
  e = small ? e - 1.0f : e;
  m = small ? m + m - 1.0f : m - 1.0f;
  const v8f z = m * m;
  v8f y = splat(7.0376836292e-2f);
  y = y * m - 1.1514610310e-1f;
  y = y * m + 1.1676998740e-1f;
  y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f;
  y = y * m - 1.6668057665e-1f;
  y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f;
  y = y * m + 3.3333331174e-1f;
  y = y * m * z - 2.12194440e-4f * e - 0.5f * z;
  v8f r = m + y + 0.693359375f * e;
  const float inf = __builtin_inff();
  r = x == inf ? splat(inf) : r;
  r = x < 1.17549435e-38f ? splat(-inf) : r;  // 0 and denormals
  const float nan = __builtin_nanf("");
  r = (x < 0.f) | (x != x) ? splat(nan) : r;
  return r;
}

}  // namespace pyaudiok::cpu::simd
