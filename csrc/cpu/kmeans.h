// Batched k-means (Lloyd iterations), CPU kernel. Torch-free: raw pointers and sizes; the binding
// (csrc/bindings/kmeans_cpu.cpp) validates, allocates and splits the batch over threads.
// pyaudiok/ops/kmeans.py states the iteration, the tie rule and empty clusters.
#pragma once
#include <cstdint>

namespace pyaudiok::cpu {

// One batch element: points x[P, D]; centroids[K, D] holds the initial centroids and receives
// the final ones after n_iters iterations (fewer sweeps once the assignments stop changing, with
// the identical result); assignments[P] are those of the final centroids.
void kmeans_lloyd_one(const float* x, int64_t P, int64_t D, int64_t K, int64_t n_iters, float* centroids,
                      int64_t* assignments);

}  // namespace pyaudiok::cpu
