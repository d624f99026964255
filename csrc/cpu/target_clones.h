// PYAUDIOK_CLONES: compile a hot function twice, for AVX2/FMA (x86-64-v3) and for the baseline,
// and pick at load time by the CPU (GCC function multi-versioning). Elsewhere it is a no-op.
//
// PYAUDIOK_INLINE: for the helpers such a function calls. A helper the compiler leaves out of line
// is compiled once, for the baseline, and the AVX2 clone then calls SSE2 code in its hot loop;
// forced inline, it is compiled into each clone with that clone's instructions.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define PYAUDIOK_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define PYAUDIOK_CLONES
#endif

#define PYAUDIOK_INLINE inline __attribute__((always_inline))
