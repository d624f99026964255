// Residual vector quantization (RVQ) CUDA launchers.
//
// Plain C interface over raw device pointers; no torch types. Every launcher
// enqueues on `stream`, never synchronizes, and returns a cudaError_t as int
// (cudaSuccess == 0). Argument errors return cudaErrorInvalidValue without
// launching anything.
#ifndef PYAUDIOK_CSRC_CUDA_RVQ_H_
#define PYAUDIOK_CSRC_CUDA_RVQ_H_

#include <stdint.h>
#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

// Element type of x / codebooks / quantized / out.
enum {
  PYAUDIOK_RVQ_F32 = 0,   // float
  PYAUDIOK_RVQ_F16 = 1,   // __half
  PYAUDIOK_RVQ_BF16 = 2,  // __nv_bfloat16
};

// Rows per squared-error partial: sqerr_partials has one row per group of
// this many consecutive input rows, whatever tile size the kernel picks.
#define PYAUDIOK_RVQ_PARTIAL_ROWS 32

// Number of rows of sqerr_partials ([num_partials, n_q] float32) for N rows:
// ceil(N / PYAUDIOK_RVQ_PARTIAL_ROWS). Depends on N only (not on the device).
int64_t pyaudiok_rvq_forward_cuda_num_partials(int64_t n_rows);

// Largest codeword dimension D the forward kernel supports on `device`
// (limited by shared memory per block: 616 on sm_70, 392 on sm_75,
// 1552 on sm_90 with 227 KiB). Returns 0 if the device cannot be queried.
int pyaudiok_rvq_forward_cuda_max_dim(int device);

// Forward RVQ, all n_q stages in one launch, on the current device.
//   x              [N, D]     dtype, contiguous
//   codebooks      [Q, K, D]  dtype, contiguous (only the first n_q used)
//   cnorm          [Q, K]     float32, ||codebooks[q, k]||^2
//   quantized      [N, D]     dtype (output) = sum of chosen codewords, fp32
//                             accumulation in stage order, then rounded
//   codes          [N, n_q]   int64 (output), ties -> lowest index
//   sqerr_partials [num_partials(N), n_q] float32 (output): sum over the
//                  partial's rows of ||residual after stage q||^2; the caller
//                  sums over dim 0 (fixed order => deterministic).
// Requires 1 <= n_q <= Q, K >= 1, 1 <= D <= max_dim(current device).
// N == 0 is a no-op returning cudaSuccess.
int pyaudiok_rvq_forward_cuda(const void* x, const void* codebooks,
                              const float* cnorm, void* quantized,
                              int64_t* codes, float* sqerr_partials,
                              int64_t N, int64_t D, int64_t K, int64_t Q,
                              int64_t n_q, int dtype, cudaStream_t stream);

// Decode: out[n, :] = sum_{q < n_q} w[q] * codebooks[q, codes[n, q], :],
// accumulated in fp32 in stage order from 0 and rounded to dtype.
//   codes      [N, n_q]  int64, each in [0, K) (not checked here)
//   codebooks  [>= n_q, K, D] dtype, contiguous
//   weights    [n_q] float32, or NULL for plain adds (then decoding the
//              forward's codes reproduces `quantized` bitwise)
//   out        [N, D] dtype
// N == 0 is a no-op returning cudaSuccess.
int pyaudiok_rvq_decode_cuda(const int64_t* codes, const void* codebooks,
                             const float* weights, void* out, int64_t N,
                             int64_t D, int64_t K, int64_t n_q, int dtype,
                             cudaStream_t stream);

#ifdef __cplusplus
}  // extern "C"
#endif

#endif  // PYAUDIOK_CSRC_CUDA_RVQ_H_
