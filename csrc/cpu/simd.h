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
inline v8f splat(float v) { return v8f{} + v; }
inline v8i splat_i(int32_t v) { return v8i{} + v; }

}  // namespace pyaudiok::cpu::simd
