// Residual vector quantization, CPU kernels. Torch-free: raw pointers and sizes only, so this
// file compiles in a second and the binding layer (csrc/bindings/) owns all torch types.
#pragma once
#include <cstdint>

namespace pyaudiok::cpu {

// Rows handled together by one forward work item. Callers split [0, N) into
// ceil(N / kRvqTileRows) tiles and may run disjoint tile ranges on different threads.
constexpr int64_t kRvqTileRows = 16;

// Nearest row of C[K, D] for each row of a tile of kRvqTileRows rows stored transposed,
// rT[D][kRvqTileRows]: out_idx[i] = argmin_k cnorm[k] − 2⟨r_i, C_k⟩ (ties -> lowest k), with
// cnorm[k] = ||C_k||², in torch.argmin's order (a NaN score first). The search of every RVQ stage;
// k-means' assignment step shares it.
void nearest_rows_tile(const float* rT, const float* C, const float* cnorm, int64_t K, int64_t D, int32_t* out_idx);

// cnorm[q * K + k] = ||codebooks[q, k, :]||², for q < n_q.
void rvq_codeword_norms(const float* codebooks, int64_t n_q, int64_t K, int64_t D, float* cnorm);

// Forward over tiles [tile_begin, tile_end): for each row, n_q greedy stages of
// k_q = argmin_k cnorm[q,k] - 2 <r, C_q[k]> (ties -> lowest k), r -= C_q[k_q].
// Writes quantized[N, D] (sum of chosen codewords in stage order, NaN where x is NaN or inf), codes[N, n_q], and
// sqerr_tiles[tile, q] = sum over the tile's rows of ||r_q||² (caller reduces over tiles).
void rvq_forward_tiles(const float* x, const float* codebooks, const float* cnorm, int64_t N,
                       int64_t D, int64_t K, int64_t n_q, int64_t tile_begin, int64_t tile_end,
                       float* quantized, int64_t* codes, float* sqerr_tiles);

// out[row] = sum_q w_q * codebooks[q, codes[row, q]] for rows [row_begin, row_end), accumulated in
// stage order from 0; weights == nullptr means w_q = 1 with plain adds (bitwise equal to the
// forward's quantized output).
void rvq_decode_rows(const int64_t* codes, const float* codebooks, const float* weights, int64_t K,
                     int64_t D, int64_t n_q, int64_t row_begin, int64_t row_end, float* out);

}  // namespace pyaudiok::cpu
