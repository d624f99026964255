// PYAUDIOK_CLONES: compile a hot function twice, for AVX2/FMA (x86-64-v3) and for the baseline,
// and pick at load time by the CPU (GCC function multi-versioning). Elsewhere it is a no-op.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define PYAUDIOK_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define PYAUDIOK_CLONES
#endif
