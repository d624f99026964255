// PYAUDIOK_CLONES: compile a hot function twice, for AVX2/FMA (x86-64-v3) and for the baseline,
// and pick at load time by the CPU (GCC function multi-versioning). Elsewhere it is a no-op.
//
// PYAUDIOK_CLONES_AVX512 adds an x86-64-v4 (AVX-512) clone of the same 8-lane code: 32 vector
// registers instead of 16. Only where it was measured faster: sPCEN's eight interleaved power
// chains spill far less (its forward ran ~10 % faster on a Zen 4 core), while the RVQ and attention
// kernels ran no faster or slower with it.
//
// PYAUDIOK_INLINE: for the helpers such a function calls. A helper the compiler leaves out of line
// is compiled once, for the baseline, and the AVX2 clone then calls SSE2 code in its hot loop;
// forced inline, it is compiled into each clone with that clone's instructions.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define PYAUDIOK_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#define PYAUDIOK_CLONES_AVX512 __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define PYAUDIOK_CLONES
#define PYAUDIOK_CLONES_AVX512
#endif

#define PYAUDIOK_INLINE inline __attribute__((always_inline))
