// Residual vector quantization (RVQ) kernels: fused multi-stage forward and
// a gather-sum decode. Plain CUDA over raw pointers; see rvq.h for the API.
//
// Forward design (one launch for all stages):
//  * A block of 256 threads owns ROWS = 16 * TM consecutive rows (TM = 4 ->
//    64 rows, or TM = 2 -> 32 rows when shared memory is tight or N is small)
//    and keeps their fp32 residual in shared memory for the whole launch.
//  * Per stage the codebook is streamed through shared memory in tiles of
//    64 codewords x 32 dims. Thread (tx, ty) of a 16 x 16 grid accumulates a
//    TM x 4 register micro-tile of dot products (rows TM*ty.., codewords
//    4*tx..), folds it into a running argmin per row once a 64-codeword chunk
//    is complete, and a 16-lane shuffle reduction picks each row's winner.
//    The [N, K] score matrix never exists in global memory.
//  * Each dot product is a sequential fp32 FMA chain over d (TF32 is never
//    used), independent of TM, so both tile variants pick identical codes.
//  * After each stage one warp per row gathers the winner, updates the
//    residual, writes the code and the row's squared error; per 32-row group
//    the row errors are summed in a fixed order into sqerr_partials (no
//    atomics, so the caller's sum over partials is deterministic).
//  * quantized is rebuilt at the end from the codes with the same fp32
//    stage-order sum that decode uses, so it needs no shared memory and
//    decode(codes) == quantized bitwise.

#include "rvq.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>

// `#pragma unroll` only for the device pass: host compilers warn on it in
// __host__ __device__ functions under -Wall.
#if defined(__CUDA_ARCH__)
#define RVQ_UNROLL _Pragma("unroll")
#else
#define RVQ_UNROLL
#endif

namespace {

constexpr int kThreads = 256;            // 16 x 16 thread grid, 8 warps
constexpr int kWarps = kThreads / 32;
constexpr int kTileK = 64;               // codewords per chunk (16 tx * 4)
constexpr int kTileD = 32;               // dims per codebook tile
constexpr int kCStride = kTileK + 4;     // pad: transposed stores, 32 banks
constexpr int kPartialRows = PYAUDIOK_RVQ_PARTIAL_ROWS;
static_assert(kPartialRows == 32, "a partial is reduced by one warp");

// ---- element type conversions (fp32 compute, RNE rounding on output) ----
__host__ __device__ __forceinline__ float to_f32(float v) { return v; }
__host__ __device__ __forceinline__ float to_f32(__half v) {
  return __half2float(v);
}
__host__ __device__ __forceinline__ float to_f32(__nv_bfloat16 v) {
  return __bfloat162float(v);
}

template <typename T> struct FromF32;
template <> struct FromF32<float> {
  __host__ __device__ static __forceinline__ float cvt(float v) { return v; }
};
template <> struct FromF32<__half> {
  __host__ __device__ static __forceinline__ __half cvt(float v) {
    return __float2half_rn(v);
  }
};
template <> struct FromF32<__nv_bfloat16> {
  __host__ __device__ static __forceinline__ __nv_bfloat16 cvt(float v) {
    return __float2bfloat16_rn(v);
  }
};

// ---- core logic, host+device so it can be checked on a CPU ----

// torch.argmin order: NaN counts as the minimum; equal scores (and NaN vs
// NaN) go to the lower index. Symmetric, so it serves both the sequential
// scan and the cross-thread merge.
__host__ __device__ __forceinline__ bool rvq_better(float s, int k, float bs,
                                                    int bk) {
  const bool s_nan = s != s, b_nan = bs != bs;
  if (s_nan || b_nan) return s_nan && (!b_nan || k < bk);
  return s < bs || (s == bs && k < bk);
}

// Shared-memory row stride of the transposed residual r_s[d][row]. Padded
// by 4 floats: keeps float4 alignment, and turns the per-row update (lanes
// over d) from a 32-way into a 4-way bank conflict.
template <int TM> struct Tile {
  static constexpr int kRows = 16 * TM;
  static constexpr int kRStride = kRows + 4;
};

__host__ __device__ __forceinline__ int rvq_dpad(int D) {
  return (D + 7) & ~7;  // dot loop runs in unrolled steps of 8 (zero-padded)
}

// Dynamic shared memory of the forward kernel, in bytes.
__host__ __device__ __forceinline__ size_t rvq_smem_bytes(int TM, int D) {
  const int rows = 16 * TM;
  return sizeof(float) * ((size_t)rvq_dpad(D) * (rows + 4) +
                          (size_t)kTileD * kCStride + 2 * (size_t)rows);
}

// Load TM consecutive floats (16- or 8-byte aligned) from shared memory.
template <int TM> struct VecLoad;
template <> struct VecLoad<4> {
  __host__ __device__ static __forceinline__ void run(const float* p,
                                                      float (&v)[4]) {
    const float4 t = *reinterpret_cast<const float4*>(p);
    v[0] = t.x; v[1] = t.y; v[2] = t.z; v[3] = t.w;
  }
};
template <> struct VecLoad<2> {
  __host__ __device__ static __forceinline__ void run(const float* p,
                                                      float (&v)[2]) {
    const float2 t = *reinterpret_cast<const float2*>(p);
    v[0] = t.x; v[1] = t.y;
  }
};

// acc[i][j] += sum_{d < L} r[d][TM*ty + i] * c[d][4*tx + j]  (L % 8 == 0)
// r: residual tile, row stride Tile<TM>::kRStride; c: codebook tile,
// row stride kCStride. Sequential in d, so the FMA order per dot product
// is fixed: d = 0, 1, ..., Dpad-1 across successive tiles.
template <int TM>
__host__ __device__ __forceinline__ void rvq_dot_tile(const float* r,
                                                      const float* c, int L,
                                                      int tx, int ty,
                                                      float (&acc)[TM][4]) {
  constexpr int RS = Tile<TM>::kRStride;
  for (int d0 = 0; d0 < L; d0 += 8) {
    RVQ_UNROLL
    for (int u = 0; u < 8; ++u) {
      float a[TM], b[4];
      VecLoad<TM>::run(r + (d0 + u) * RS + TM * ty, a);
      VecLoad<4>::run(c + (d0 + u) * kCStride + 4 * tx, b);
      RVQ_UNROLL
      for (int i = 0; i < TM; ++i)
        RVQ_UNROLL
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
  }
}

// Fold a finished chunk (codewords k0 + 4*tx + j) into the running argmin.
// score = ||c||^2 - 2 r.c (the ||r||^2 term is constant per row);
// fmaf is exact here because 2*dot is exact.
template <int TM>
__host__ __device__ __forceinline__ void rvq_argmin_chunk(
    const float (&acc)[TM][4], const float* cn, int k0, int K, int tx,
    float (&best_s)[TM], int (&best_k)[TM]) {
  RVQ_UNROLL
  for (int j = 0; j < 4; ++j) {
    const int k = k0 + 4 * tx + j;
    if (k < K) {  // tail of K: zero-padded codewords never compete
      const float cnk = cn[k];
      RVQ_UNROLL
      for (int i = 0; i < TM; ++i) {
        const float s = fmaf(-2.0f, acc[i][j], cnk);
        if (rvq_better(s, k, best_s[i], best_k[i])) {
          best_s[i] = s;
          best_k[i] = k;
        }
      }
    }
  }
}

// Copy codebook tile [k0, k0+64) x [d0, d0+L) into c[d][k] (transposed,
// zero-filled past K and D). Within a warp lanes cover 8 dims x 4 codewords:
// 32-byte runs per codeword in global memory, and the transposed stores
// land on 32 distinct banks thanks to kCStride % 32 == 4.
template <typename T>
__host__ __device__ __forceinline__ void rvq_load_codebook_tile(
    const T* cb, int K, int D, int k0, int d0, int L, int tid, float* c) {
  const int nd8 = L >> 3;
  for (int e = tid; e < L * kTileK; e += kThreads) {
    const int rest = e >> 5;
    const int d = (rest % nd8) * 8 + (e & 7);
    const int kk = (rest / nd8) * 4 + ((e >> 3) & 3);
    const int gk = k0 + kk, gd = d0 + d;
    float v = 0.0f;
    if (gk < K && gd < D) v = to_f32(cb[(int64_t)gk * D + gd]);
    c[d * kCStride + kk] = v;
  }
}

// Separately rounded fp32 mul / add that the compiler may not fuse into an
// FMA (device intrinsics; host code is not contracted by default).
__host__ __device__ __forceinline__ float mul_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
__host__ __device__ __forceinline__ float add_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

// One element of decode: sum_q w[q] * cb[q, code_row[q], d] in fp32, stage
// order, starting from 0. mul and add are rounded separately (no FMA) to
// match `acc + w * c` evaluated in PyTorch; without weights it is plain adds,
// which is exactly the forward's accumulator.
template <typename T>
__host__ __device__ __forceinline__ float rvq_decode_element(
    const T* cb, const int64_t* code_row, const float* w, int64_t K,
    int64_t D, int n_q, int64_t d) {
  float acc = 0.0f;
  for (int q = 0; q < n_q; ++q) {
    const float c = to_f32(cb[((int64_t)q * K + code_row[q]) * D + d]);
    acc = add_rn(acc, w ? mul_rn(w[q], c) : c);
  }
  return acc;
}

__device__ __forceinline__ float warp_sum(float v) {
  // Butterfly: every lane ends with the same bits (fp add is commutative).
  RVQ_UNROLL
  for (int off = 16; off > 0; off >>= 1)
    v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// ---- kernels ----

template <typename T, int TM>
__global__ void __launch_bounds__(kThreads, 2)
    rvq_forward_kernel(const T* __restrict__ x, const T* __restrict__ cbs,
                       const float* __restrict__ cnorm,
                       T* __restrict__ quantized, int64_t* __restrict__ codes,
                       float* __restrict__ partials, int64_t N, int D, int K,
                       int n_q) {
  constexpr int ROWS = Tile<TM>::kRows;
  constexpr int RS = Tile<TM>::kRStride;
  constexpr int kGroups = ROWS / kPartialRows;

  // Layout (floats): r_s[Dpad][RS] | c_s[kTileD][kCStride] | row_sq[ROWS] |
  // code_s[ROWS] (int). All segment sizes are multiples of 4 floats.
  extern __shared__ float4 rvq_smem[];
  const int Dpad = rvq_dpad(D);
  float* r_s = reinterpret_cast<float*>(rvq_smem);
  float* c_s = r_s + (size_t)Dpad * RS;
  float* row_sq = c_s + kTileD * kCStride;
  int* code_s = reinterpret_cast<int*>(row_sq + ROWS);

  const int tid = threadIdx.x;
  const int tx = tid & 15, ty = tid >> 4;  // 16 tx lanes share a warp half
  const int warp = tid >> 5, lane = tid & 31;
  const int64_t row0 = (int64_t)blockIdx.x * ROWS;

  // Residual starts as x in fp32; padding rows (>= N) and dims (>= D) are
  // zero so they add nothing to dot products.
  for (int r = warp; r < ROWS; r += kWarps) {
    const int64_t row = row0 + r;
    for (int d = lane; d < Dpad; d += 32)
      r_s[d * RS + r] =
          (row < N && d < D) ? to_f32(x[row * D + d]) : 0.0f;
  }
  // (visibility of r_s is ensured by the first __syncthreads below)

  for (int q = 0; q < n_q; ++q) {
    const T* cb = cbs + (int64_t)q * K * D;
    const float* cn = cnorm + (int64_t)q * K;

    float best_s[TM];
    int best_k[TM];
    RVQ_UNROLL
    for (int i = 0; i < TM; ++i) {
      best_s[i] = INFINITY;
      best_k[i] = INT_MAX;
    }

    for (int k0 = 0; k0 < K; k0 += kTileK) {
      float acc[TM][4];
      RVQ_UNROLL
      for (int i = 0; i < TM; ++i)
        RVQ_UNROLL
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;

      for (int d0 = 0; d0 < Dpad; d0 += kTileD) {
        const int L = min(kTileD, Dpad - d0);
        // Everyone is done reading the previous c_s tile (and, at a stage
        // start, the residual update / x load is visible).
        __syncthreads();
        rvq_load_codebook_tile<T>(cb, K, D, k0, d0, L, tid, c_s);
        __syncthreads();
        rvq_dot_tile<TM>(r_s + (size_t)d0 * RS, c_s, L, tx, ty, acc);
      }
      rvq_argmin_chunk<TM>(acc, cn, k0, K, tx, best_s, best_k);
    }

    // The 16 tx threads of a row group are lanes of one warp half, so xor
    // offsets < 16 reduce exactly them. rvq_better keeps the lower index on
    // ties regardless of merge order.
    RVQ_UNROLL
    for (int off = 8; off > 0; off >>= 1) {
      RVQ_UNROLL
      for (int i = 0; i < TM; ++i) {
        const float os = __shfl_xor_sync(0xffffffffu, best_s[i], off);
        const int ok = __shfl_xor_sync(0xffffffffu, best_k[i], off);
        if (rvq_better(os, ok, best_s[i], best_k[i])) {
          best_s[i] = os;
          best_k[i] = ok;
        }
      }
    }
    if (tx == 0) {
      RVQ_UNROLL
      for (int i = 0; i < TM; ++i)  // all scores NaN-free +inf: index 0
        code_s[TM * ty + i] = best_k[i] < K ? best_k[i] : 0;
    }
    __syncthreads();  // code_s ready; all dot-product reads of r_s done

    // Residual update, one warp per row (lanes over d: coalesced gather).
    for (int r = warp; r < ROWS; r += kWarps) {
      const int64_t row = row0 + r;
      float sq = 0.0f;
      if (row < N) {  // warp-uniform
        const int k = code_s[r];
        if (lane == 0) codes[row * n_q + q] = k;
        const T* c = cb + (int64_t)k * D;
        for (int d = lane; d < D; d += 32) {
          const float v = r_s[d * RS + r] - to_f32(c[d]);
          r_s[d * RS + r] = v;
          sq = fmaf(v, v, sq);
        }
        sq = warp_sum(sq);
      }
      if (lane == 0) row_sq[r] = sq;
    }
    __syncthreads();  // row_sq complete

    // One warp per 32-row group: fixed-order tree sum of the row errors.
    // row_sq is next written after the next stage's first __syncthreads.
    if (warp < kGroups) {
      const float s = warp_sum(row_sq[warp * kPartialRows + lane]);
      const int64_t g = (int64_t)blockIdx.x * kGroups + warp;
      if (lane == 0 && g * kPartialRows < N) partials[g * n_q + q] = s;
    }
  }

  __syncthreads();  // this block's codes (global) are visible to all lanes

  // quantized = stage-order fp32 sum of the chosen codewords (same function
  // as decode with no weights), NaN where x is NaN or inf, as the reference's
  // straight-through value ẑ + (x − x) is. Such an x leaves a non-finite
  // residual (this thread's own r_s element), so x is read again only there.
  for (int r = warp; r < ROWS; r += kWarps) {
    const int64_t row = row0 + r;
    if (row >= N) break;  // rows only grow with r
    const int64_t* code_row = codes + row * n_q;
    for (int d = lane; d < D; d += 32) {
      float v = rvq_decode_element<T>(cbs, code_row, nullptr, K, D, n_q, d);
      if (!isfinite(r_s[d * RS + r]) && !isfinite(to_f32(x[row * D + d])))
        v = NAN;
      quantized[row * D + d] = FromF32<T>::cvt(v);
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    rvq_decode_kernel(const int64_t* __restrict__ codes,
                      const T* __restrict__ cbs,
                      const float* __restrict__ weights, T* __restrict__ out,
                      int64_t N, int64_t D, int64_t K, int n_q) {
  const int64_t total = N * D;
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < total;
       e += stride) {
    const int64_t row = e / D;
    const int64_t d = e - row * D;
    out[e] = FromF32<T>::cvt(
        rvq_decode_element<T>(cbs, codes + row * n_q, weights, K, D, n_q, d));
  }
}

// ---- host side ----

int device_attr(cudaDeviceAttr attr, int device, int fallback) {
  int v = 0;
  if (cudaDeviceGetAttribute(&v, attr, device) != cudaSuccess) {
    (void)cudaGetLastError();  // do not leave a sticky query error behind
    return fallback;
  }
  return v;
}

template <typename T>
cudaError_t launch_forward(const void* x, const void* cbs, const float* cnorm,
                           void* quantized, int64_t* codes, float* partials,
                           int64_t N, int D, int K, int n_q, int TM,
                           size_t smem, cudaStream_t stream) {
  const int64_t rows = 16 * TM;
  const dim3 grid((unsigned)((N + rows - 1) / rows));
  const T* xt = static_cast<const T*>(x);
  const T* ct = static_cast<const T*>(cbs);
  T* qt = static_cast<T*>(quantized);
  // Both tile variants share one signature, so pick a pointer and launch it.
  void (*kernel)(const T*, const T*, const float*, T*, int64_t*, float*,
                 int64_t, int, int, int) =
      TM == 4 ? rvq_forward_kernel<T, 4> : rvq_forward_kernel<T, 2>;
  // Opting in above 48 KiB is per kernel; cheap, so done on every call.
  cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                       (int)smem);
  kernel<<<grid, kThreads, smem, stream>>>(xt, ct, cnorm, qt, codes,
                                           partials, N, D, K, n_q);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_decode(const int64_t* codes, const void* cbs,
                          const float* weights, void* out, int64_t N,
                          int64_t D, int64_t K, int n_q, int sms,
                          cudaStream_t stream) {
  const int64_t total = N * D;
  int64_t blocks = (total + kThreads - 1) / kThreads;
  const int64_t cap = (int64_t)sms * 32;  // grid-stride beyond this
  if (blocks > cap) blocks = cap;
  const dim3 grid((unsigned)blocks);
  rvq_decode_kernel<T><<<grid, kThreads, 0, stream>>>(
      codes, static_cast<const T*>(cbs), weights, static_cast<T*>(out), N, D,
      K, n_q);
  return cudaGetLastError();
}

}  // namespace

extern "C" int64_t pyaudiok_rvq_forward_cuda_num_partials(int64_t n_rows) {
  return n_rows <= 0 ? 0 : (n_rows + kPartialRows - 1) / kPartialRows;
}

extern "C" int pyaudiok_rvq_forward_cuda_max_dim(int device) {
  const int optin =
      device_attr(cudaDevAttrMaxSharedMemoryPerBlockOptin, device, 0);
  // The 32-row variant (TM = 2) needs the least shared memory per dim.
  const size_t fixed = rvq_smem_bytes(2, 0);
  const size_t per_dim = sizeof(float) * Tile<2>::kRStride;
  if ((size_t)optin <= fixed) return 0;
  const int64_t dmax = (int64_t)(((size_t)optin - fixed) / per_dim) & ~7;
  return dmax > INT_MAX ? (INT_MAX & ~7) : (int)dmax;
}

extern "C" int pyaudiok_rvq_forward_cuda(const void* x, const void* codebooks,
                                         const float* cnorm, void* quantized,
                                         int64_t* codes, float* sqerr_partials,
                                         int64_t N, int64_t D, int64_t K,
                                         int64_t Q, int64_t n_q, int dtype,
                                         cudaStream_t stream) {
  if (N < 0 || D < 1 || K < 1 || K > INT_MAX - kTileK || n_q < 1 ||
      n_q > Q || dtype < PYAUDIOK_RVQ_F32 || dtype > PYAUDIOK_RVQ_BF16)
    return (int)cudaErrorInvalidValue;
  if (N == 0) return (int)cudaSuccess;
  // One block per 32 rows at most: grid.x must fit in 31 bits.
  if ((N + 31) / 32 > INT_MAX) return (int)cudaErrorInvalidValue;

  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return (int)err;
  if (D > pyaudiok_rvq_forward_cuda_max_dim(device))
    return (int)cudaErrorInvalidValue;

  // 64-row tiles reuse each streamed codebook tile twice as much; fall back
  // to 32 rows when they do not fit or would leave SMs idle.
  const int optin =
      device_attr(cudaDevAttrMaxSharedMemoryPerBlockOptin, device, 0);
  const int sms = device_attr(cudaDevAttrMultiProcessorCount, device, 1);
  const bool fits64 = rvq_smem_bytes(4, (int)D) <= (size_t)optin;
  const bool fills64 = (N + 63) / 64 >= sms;
  const int TM = (fits64 && fills64) ? 4 : 2;
  const size_t smem = rvq_smem_bytes(TM, (int)D);

  switch (dtype) {
    case PYAUDIOK_RVQ_F32:
      return (int)launch_forward<float>(x, codebooks, cnorm, quantized, codes,
                                        sqerr_partials, N, (int)D, (int)K,
                                        (int)n_q, TM, smem, stream);
    case PYAUDIOK_RVQ_F16:
      return (int)launch_forward<__half>(x, codebooks, cnorm, quantized,
                                         codes, sqerr_partials, N, (int)D,
                                         (int)K, (int)n_q, TM, smem, stream);
    default:
      return (int)launch_forward<__nv_bfloat16>(
          x, codebooks, cnorm, quantized, codes, sqerr_partials, N, (int)D,
          (int)K, (int)n_q, TM, smem, stream);
  }
}

extern "C" int pyaudiok_rvq_decode_cuda(const int64_t* codes,
                                        const void* codebooks,
                                        const float* weights, void* out,
                                        int64_t N, int64_t D, int64_t K,
                                        int64_t n_q, int dtype,
                                        cudaStream_t stream) {
  if (N < 0 || D < 1 || K < 1 || n_q < 1 || n_q > INT_MAX ||
      dtype < PYAUDIOK_RVQ_F32 || dtype > PYAUDIOK_RVQ_BF16)
    return (int)cudaErrorInvalidValue;
  if (N == 0) return (int)cudaSuccess;

  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return (int)err;
  const int sms = device_attr(cudaDevAttrMultiProcessorCount, device, 32);

  switch (dtype) {
    case PYAUDIOK_RVQ_F32:
      return (int)launch_decode<float>(codes, codebooks, weights, out, N, D,
                                       K, (int)n_q, sms, stream);
    case PYAUDIOK_RVQ_F16:
      return (int)launch_decode<__half>(codes, codebooks, weights, out, N, D,
                                        K, (int)n_q, sms, stream);
    default:
      return (int)launch_decode<__nv_bfloat16>(codes, codebooks, weights, out,
                                               N, D, K, (int)n_q, sms, stream);
  }
}
