// Soft rank / soft sort PAV kernels for CUDA. Torch-free (raw pointers, a cudaStream_t): the
// binding sorts the keys (torch's segmented sort) and owns all tensors. Returns a cudaError_t.
// pyaudiok/ops/soft_rank.py states the math.
#pragma once
#include <cuda_runtime.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// s[R, n]: keys sorted in decreasing order; perm[R, n]: their input indices. Writes out[R, n]
// and blocks[R, n]; start/sy/sw are [R, n] scratch (int32, fp32, fp32).
int pyaudiok_pav_forward_cuda(const float* s, const int64_t* perm, float* out, int32_t* blocks, int32_t* start,
                              float* sy, float* sw, int64_t R, int64_t n, float inv_eps, float sign, int kl,
                              int rank, cudaStream_t stream);

// grad_x[R, n] from grad_out, with s, perm, blocks and out (KL rank) of the forward; dz = dz/dx.
int pyaudiok_pav_backward_cuda(const float* grad_out, const float* s, const float* out, const int64_t* perm,
                               const int32_t* blocks, float* grad_x, int64_t R, int64_t n, float sign, float dz,
                               int kl, int rank, cudaStream_t stream);

#ifdef __cplusplus
}
#endif
