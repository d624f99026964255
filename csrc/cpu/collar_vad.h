// DIVE's collar-aware multi-speaker VAD loss (pyaudiok/ops/collar_vad.py states the contract): the
// frames near a turn boundary of the reference are left out of a binary cross-entropy over the
// selected speakers' rows. Torch-free: raw pointers and sizes, one batch item per call.
#pragma once
#include <cstdint>

namespace pyaudiok::cpu {

struct CollarVadShape {
  int64_t N, S, T;  // logit rows (selected speakers), reference speakers, frames
  int64_t lo, hi;   // frame t is near edge e iff lo <= e - t <= hi (hi < lo: no collar)
};

// keep[t] = 1 for the frames of one item whose window [t + lo, t + hi] holds no turn boundary: a
// frame edge e in [0, T] where any reference row changes value (rows are 0 outside [0, T)).
// edges: scratch of T + 2 counts.
template <typename T>
void collar_keep(const T* reference, const CollarVadShape& s, int32_t* edges, uint8_t* keep);

// Σ over selected rows n (order[n] >= 0) and kept frames of BCE-with-logits(logits[n, t],
// reference[order[n], t]), and the number of terms.
template <typename T>
void collar_vad_sum(const T* logits, const T* reference, const int64_t* order, const uint8_t* keep,
                    const CollarVadShape& s, double* sum, int64_t* count);

// grad[n, t] = scale · (sigmoid(logits[n, t]) − reference[order[n], t]) on the terms of the sum, else 0.
template <typename T>
void collar_vad_grad(const T* logits, const T* reference, const int64_t* order, const uint8_t* keep,
                     const CollarVadShape& s, double scale, T* grad);

}  // namespace pyaudiok::cpu
