// Statistics of SI-SDR (ee = ‖e‖², rr = ‖r‖², er = ⟨e, r⟩ of the optionally centred signals),
// CPU kernel. Torch-free: raw pointers and sizes; the binding (csrc/bindings/si_sdr_cpu.cpp)
// validates, allocates and splits the batch over threads. pyaudiok/ops/si_sdr.py has the math.
#pragma once
#include <cstdint>

namespace pyaudiok::cpu {

// One batch element: estimates[N, T], references[M, T] (T contiguous, float or double) ->
// ee[N], rr[M], er[N, M] accumulated in double.
template <typename T>
void si_sdr_stats_one(const T* estimates, const T* references, int64_t N, int64_t M, int64_t n_time, bool zero_mean,
                      double* ee, double* rr, double* er);

}  // namespace pyaudiok::cpu
