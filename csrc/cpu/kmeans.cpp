// Lloyd iterations on the CPU, one batch element per call. The points are transposed once into
// tiles of kRvqTileRows (the layout of the RVQ search, whose register-blocked nearest-row kernel
// does the assignment step here too); each iteration is one sweep over the tiles: assign a
// tile, add its points to their clusters' float sums (flushed into double sums every 256 points).
// The [P, K] distance matrix never exists. A sweep that changes no assignment ends the loop: the
// update would rebuild the same sums in the same order, so every later iteration is bit-identical
// (the result equals n_iters iterations exactly; well-separated items stop after a few sweeps).
#include "kmeans.h"

#include <algorithm>
#include <vector>

#include "rvq.h"
#include "simd.h"
#include "target_clones.h"

namespace pyaudiok::cpu {
namespace {

using namespace simd;
constexpr int64_t kTile = kRvqTileRows;
constexpr int64_t kTilesPerBlock = 16;  // 256 points per float block sum

// sums[k] += x_p for each point p of the tile (contiguous rows, 8 lanes at a time).
PYAUDIOK_CLONES
void add_rows(const float* x, const int32_t* chosen, int64_t rows, int64_t D, float* sums, int64_t* counts) {
  const int64_t d8 = D - D % 8;
  for (int64_t i = 0; i < rows; ++i) {
    const int32_t k = chosen[i];
    ++counts[k];
    const float* xp = x + i * D;
    float* s = sums + k * D;
    for (int64_t d = 0; d < d8; d += 8) store8(s + d, load8(s + d) + load8(xp + d));
    for (int64_t d = d8; d < D; ++d) s[d] += xp[d];
  }
}

}  // namespace

void kmeans_lloyd_one(const float* x, int64_t P, int64_t D, int64_t K, int64_t n_iters, float* centroids,
                      int64_t* assignments) {
  const int64_t tiles = (P + kTile - 1) / kTile;
  // xT[tile][d][lane]; padding lanes stay zero and are never read back.
  std::vector<float> xT(static_cast<size_t>(tiles * D * kTile), 0.f);
  for (int64_t p = 0; p < P; ++p)
    for (int64_t d = 0; d < D; ++d) xT[((p / kTile) * D + d) * kTile + p % kTile] = x[p * D + d];
  std::vector<float> cnorm(K), block_sums(K * D, 0.f);
  std::vector<double> sums(K * D);
  std::vector<int64_t> counts(K);
  // Float sums over blocks of kTilesPerBlock tiles, added into the double sums after each block.
  auto flush = [](std::vector<float>& block, std::vector<double>& total) {
    for (size_t e = 0; e < block.size(); ++e) total[e] += block[e];
    std::fill(block.begin(), block.end(), 0.f);
  };
  int32_t chosen[kTile];
  std::fill(assignments, assignments + P, int64_t{-1});  // no point is assigned before the first sweep
  for (int64_t it = 0; it <= n_iters; ++it) {
    const bool last = it == n_iters;
    bool changed = false;
    rvq_codeword_norms(centroids, 1, K, D, cnorm.data());
    std::fill(sums.begin(), sums.end(), 0.0);
    std::fill(counts.begin(), counts.end(), 0);
    for (int64_t tile = 0; tile < tiles; ++tile) {
      const int64_t rows = std::min(kTile, P - tile * kTile);
      nearest_rows_tile(xT.data() + tile * D * kTile, centroids, cnorm.data(), K, D, chosen);
      for (int64_t i = 0; i < rows; ++i) {
        changed |= assignments[tile * kTile + i] != chosen[i];
        assignments[tile * kTile + i] = chosen[i];
      }
      if (last) continue;
      add_rows(x + tile * kTile * D, chosen, rows, D, block_sums.data(), counts.data());
      if (tile % kTilesPerBlock == kTilesPerBlock - 1 || tile == tiles - 1) flush(block_sums, sums);
    }
    if (last || !changed) break;  // unchanged: the centroids are already the fixed point
    for (int64_t k = 0; k < K; ++k) {  // an empty cluster keeps its centroid
      if (counts[k] == 0) continue;
      const double inv = 1.0 / static_cast<double>(counts[k]);
      for (int64_t d = 0; d < D; ++d) centroids[k * D + d] = static_cast<float>(sums[k * D + d] * inv);
    }
  }
}

}  // namespace pyaudiok::cpu
