// Lloyd iterations on the CPU, one batch element per call. The points are transposed once into
// tiles of kRvqTileRows (the layout of the RVQ search, whose register-blocked nearest-row kernel
// does the assignment step here too); each iteration is then one sweep: assign a tile, add its
// points to their cluster's float64 sums. The [P, K] distance matrix never exists.
#include "kmeans.h"

#include <algorithm>
#include <vector>

#include "rvq.h"

namespace pyaudiok::cpu {

void kmeans_lloyd_one(const float* x, int64_t P, int64_t D, int64_t K, int64_t n_iters, float* centroids,
                      int64_t* assignments) {
  constexpr int64_t kTile = kRvqTileRows;
  const int64_t tiles = (P + kTile - 1) / kTile;
  // xT[tile][d][lane]; padding lanes stay zero and are never read back.
  std::vector<float> xT(static_cast<size_t>(tiles * D * kTile), 0.f);
  for (int64_t p = 0; p < P; ++p)
    for (int64_t d = 0; d < D; ++d) xT[((p / kTile) * D + d) * kTile + p % kTile] = x[p * D + d];
  std::vector<float> cnorm(K);
  std::vector<double> sums(K * D);
  std::vector<int64_t> counts(K);
  int32_t chosen[kTile];
  for (int64_t it = 0; it <= n_iters; ++it) {
    const bool last = it == n_iters;
    rvq_codeword_norms(centroids, 1, K, D, cnorm.data());
    std::fill(sums.begin(), sums.end(), 0.0);
    std::fill(counts.begin(), counts.end(), 0);
    for (int64_t tile = 0; tile < tiles; ++tile) {
      nearest_rows_tile(xT.data() + tile * D * kTile, centroids, cnorm.data(), K, D, chosen);
      const int64_t rows = std::min(kTile, P - tile * kTile);
      for (int64_t i = 0; i < rows; ++i) {
        const int64_t p = tile * kTile + i, k = chosen[i];
        if (last) {
          assignments[p] = k;
          continue;
        }
        ++counts[k];
        double* s = sums.data() + k * D;
        const float* xp = x + p * D;
        for (int64_t d = 0; d < D; ++d) s[d] += xp[d];
      }
    }
    if (last) break;
    for (int64_t k = 0; k < K; ++k) {  // an empty cluster keeps its centroid
      if (counts[k] == 0) continue;
      const double inv = 1.0 / static_cast<double>(counts[k]);
      for (int64_t d = 0; d < D; ++d) centroids[k * D + d] = static_cast<float>(sums[k * D + d] * inv);
    }
  }
}

}  // namespace pyaudiok::cpu
