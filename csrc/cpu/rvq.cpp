// Residual vector quantization on the CPU: all stages in one pass over a tile of rows, with the
// nearest-codeword search done as a register-blocked matrix product and a running argmin, so the
// [N, K] distance matrix never exists (only a 16-row tile's residual lives in L1).
//
// Layout of the hot loop: the tile's residual is kept transposed, rT[d][16 rows], so one d-step
// loads two 8-wide row vectors and broadcasts one scalar per codeword; each codeword's score is
// then a vector over rows, and the argmin is a per-lane compare-and-select (no horizontal work).
#include "rvq.h"
#include "simd.h"
#include "target_clones.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <vector>

namespace pyaudiok::cpu {
namespace {

using namespace simd;

constexpr int kRows = static_cast<int>(kRvqTileRows);  // 2 vectors of 8 rows
constexpr int kCodewordsPerStep = 6;                   // 12 accumulators + 2 row loads + 1 broadcast

static_assert(kRows == 16, "the micro-kernel holds a tile as two 8-wide vectors");

// Scores of NC codewords (starting at k0) against the 16 rows, merged into the running argmin.
// Codewords are visited in increasing k and replace only on a strictly smaller score, which
// makes ties resolve to the lowest index. The order is torch.argmin's: a NaN score (a NaN or inf
// in the row or the codeword) comes before every number, and the first NaN stays.
template <int NC>
inline __attribute__((always_inline)) void score_block(const float* rT, const float* C, const float* cnorm,
                                                       int64_t D, int32_t k0, v8f best[2], v8i idx[2]) {
  v8f acc[NC][2];
  for (int j = 0; j < NC; ++j) acc[j][0] = acc[j][1] = v8f{};
  const float* c[NC];
  for (int j = 0; j < NC; ++j) c[j] = C + static_cast<int64_t>(k0 + j) * D;
  for (int64_t d = 0; d < D; ++d) {
    const v8f r0 = load8(rT + d * kRows);
    const v8f r1 = load8(rT + d * kRows + 8);
    for (int j = 0; j < NC; ++j) {
      const v8f b = splat(c[j][d]);
      acc[j][0] += r0 * b;
      acc[j][1] += r1 * b;
    }
  }
  for (int j = 0; j < NC; ++j) {
    const v8f cn = splat(cnorm[k0 + j]);
    const v8i kk = splat_i(k0 + j);
    for (int h = 0; h < 2; ++h) {
      const v8f s = cn - 2.0f * acc[j][h];
      // s < best, or s NaN; never once best is NaN (one unordered compare, one ordered)
      const v8i better = ~(s >= best[h]) & (best[h] == best[h]);
      best[h] = better ? s : best[h];
      idx[h] = better ? kk : idx[h];
    }
  }
}

}  // namespace

// Nearest codeword of stage codebook C[K, D] for each of the tile's 16 rows.
PYAUDIOK_CLONES
void nearest_rows_tile(const float* rT, const float* C, const float* cnorm, int64_t K, int64_t D,
                       int32_t* out_idx) {
  v8f best[2] = {splat(std::numeric_limits<float>::infinity()), splat(std::numeric_limits<float>::infinity())};
  v8i idx[2] = {v8i{}, v8i{}};
  int32_t k0 = 0;
  for (; k0 + kCodewordsPerStep <= K; k0 += kCodewordsPerStep)
    score_block<kCodewordsPerStep>(rT, C, cnorm, D, k0, best, idx);
  switch (K - k0) {  // tail of fewer than kCodewordsPerStep codewords
    case 5: score_block<5>(rT, C, cnorm, D, k0, best, idx); break;
    case 4: score_block<4>(rT, C, cnorm, D, k0, best, idx); break;
    case 3: score_block<3>(rT, C, cnorm, D, k0, best, idx); break;
    case 2: score_block<2>(rT, C, cnorm, D, k0, best, idx); break;
    case 1: score_block<1>(rT, C, cnorm, D, k0, best, idx); break;
    default: break;
  }
  std::memcpy(out_idx, &idx[0], sizeof(v8i));
  std::memcpy(out_idx + 8, &idx[1], sizeof(v8i));
}

void rvq_codeword_norms(const float* codebooks, int64_t n_q, int64_t K, int64_t D, float* cnorm) {
  for (int64_t k = 0; k < n_q * K; ++k) {
    const float* c = codebooks + k * D;
    float s = 0.f;
    for (int64_t d = 0; d < D; ++d) s += c[d] * c[d];
    cnorm[k] = s;
  }
}

void rvq_forward_tiles(const float* x, const float* codebooks, const float* cnorm, int64_t N,
                       int64_t D, int64_t K, int64_t n_q, int64_t tile_begin, int64_t tile_end,
                       float* quantized, int64_t* codes, float* sqerr_tiles) {
  // Tiles go through the stages a group at a time: each stage's codebook (K·D floats, 512 KiB at the
  // 24 kHz preset, more than L2) is streamed once per group of tiles instead of once per tile, while
  // the group's residuals and sums (256 KiB: 16 tiles at D = 128, measured best of 4–32 on a Zen 3
  // core) stay in L2. Every tile's arithmetic is unchanged: the results do not depend on the grouping.
  const size_t tile_floats = static_cast<size_t>(D) * kRows;
  const int64_t group_tiles =
      std::max<int64_t>(1, std::min<int64_t>(16, (256 << 10) / (2 * tile_floats * sizeof(float))));
  std::vector<float> rT(tile_floats * group_tiles);    // residuals, transposed, tile by tile
  std::vector<float> accT(tile_floats * group_tiles);  // sums of the chosen codewords, transposed
  const auto rows_of = [&](int64_t tile) { return static_cast<int>(std::min<int64_t>(kRows, N - tile * kRows)); };
  int32_t chosen[kRows];
  for (int64_t group = tile_begin; group < tile_end; group += group_tiles) {
    const int64_t tiles = std::min<int64_t>(group_tiles, tile_end - group);
    // Padding rows stay zero: they are scored like real rows but never written out.
    std::fill(rT.begin(), rT.begin() + tiles * tile_floats, 0.f);
    std::fill(accT.begin(), accT.begin() + tiles * tile_floats, 0.f);
    for (int64_t t = 0; t < tiles; ++t) {
      const int64_t row0 = (group + t) * kRows;
      const int rows = rows_of(group + t);
      float* r = rT.data() + t * tile_floats;
      for (int i = 0; i < rows; ++i)
        for (int64_t d = 0; d < D; ++d) r[d * kRows + i] = x[(row0 + i) * D + d];
    }
    for (int64_t q = 0; q < n_q; ++q) {
      const float* C = codebooks + q * K * D;
      for (int64_t t = 0; t < tiles; ++t) {
        const int64_t tile = group + t, row0 = tile * kRows;
        const int rows = rows_of(tile);
        float* r = rT.data() + t * tile_floats;
        float* acc = accT.data() + t * tile_floats;
        nearest_rows_tile(r, C, cnorm + q * K, K, D, chosen);
        float sq = 0.f;
        for (int i = 0; i < rows; ++i) {
          codes[(row0 + i) * n_q + q] = chosen[i];
          const float* c = C + static_cast<int64_t>(chosen[i]) * D;
          for (int64_t d = 0; d < D; ++d) {
            float& ri = r[d * kRows + i];
            acc[d * kRows + i] += c[d];
            ri -= c[d];
            sq += ri * ri;
          }
        }
        sqerr_tiles[tile * n_q + q] = sq;
      }
    }
    for (int64_t t = 0; t < tiles; ++t) {
      const int64_t row0 = (group + t) * kRows;
      const int rows = rows_of(group + t);
      const float* acc = accT.data() + t * tile_floats;
      // + (x − x): NaN where x is NaN or inf, as the reference's straight-through ẑ + (x − x) is
      for (int i = 0; i < rows; ++i)
        for (int64_t d = 0; d < D; ++d) {
          const float xi = x[(row0 + i) * D + d];
          quantized[(row0 + i) * D + d] = acc[d * kRows + i] + (xi - xi);
        }
    }
  }
}

namespace {

// Σ_q w_q · C_q[code_q] over `Vectors` groups of 8 columns from column d0: the sums stay in vector
// registers while every stage's codeword adds its slice, so the output is written once (a sum kept
// in memory would chain each stage's add through a store and a reload).
template <int Vectors>
PYAUDIOK_INLINE void decode_columns(const int64_t* row_codes, const float* codebooks, const float* weights, int64_t K,
                                    int64_t D, int64_t n_q, int64_t d0, float* out) {
  using namespace simd;
  v8f acc[Vectors];
#pragma GCC unroll 8
  for (int j = 0; j < Vectors; ++j) acc[j] = splat(0.f);
  for (int64_t q = 0; q < n_q; ++q) {
    const float* c = codebooks + (q * K + row_codes[q]) * D + d0;
    const v8f w = splat(weights == nullptr ? 1.f : weights[q]);  // × 1 is exact: plain sums stay exact
#pragma GCC unroll 8
    for (int j = 0; j < Vectors; ++j) acc[j] += w * load8(c + 8 * j);
  }
#pragma GCC unroll 8
  for (int j = 0; j < Vectors; ++j) store8(out + d0 + 8 * j, acc[j]);
}

}  // namespace

PYAUDIOK_CLONES
void rvq_decode_rows(const int64_t* codes, const float* codebooks, const float* weights, int64_t K,
                     int64_t D, int64_t n_q, int64_t row_begin, int64_t row_end, float* out) {
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t* row_codes = codes + row * n_q;
    float* o = out + row * D;
    int64_t d0 = 0;
    for (; d0 + 64 <= D; d0 += 64) decode_columns<8>(row_codes, codebooks, weights, K, D, n_q, d0, o);
    for (; d0 + 8 <= D; d0 += 8) decode_columns<1>(row_codes, codebooks, weights, K, D, n_q, d0, o);
    for (; d0 < D; ++d0) {  // the last D mod 8 columns
      float sum = 0.f;
      for (int64_t q = 0; q < n_q; ++q)
        sum += (weights == nullptr ? 1.f : weights[q]) * codebooks[(q * K + row_codes[q]) * D + d0];
      o[d0] = sum;
    }
  }
}

}  // namespace pyaudiok::cpu
