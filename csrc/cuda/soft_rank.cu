// PAV for soft rank / soft sort on CUDA: one warp per row, so long rows are split 32 ways instead
// of running on one thread.
//
// Forward: each lane runs a stack PAV over its contiguous chunk of the sorted row (its stack
// stored in place, at the chunk's start), then lane 0 merges the 32 stacks left to right, pooling
// across chunk borders (a block's final position never exceeds its chunk position, so the merged
// stack can be written over the chunks in place). Pooling is order-independent, so this gives
// PAV's unique solution. The lanes then write the outputs block by block (lane-strided over
// blocks). Backward: the lanes take the blocks starting at their strided positions, each a
// block mean (L2) or block softmax (KL) of the sorted gradient.
#include "soft_rank.h"

namespace {

constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = 4;

struct Pav {
  bool kl;
  __device__ float value(float y, float w) const { return kl ? y - w : y / w; }
  __device__ float merge(float a, float b) const {
    if (!kl) return a + b;
    const float hi = fmaxf(a, b);
    // An infinite larger term is the sum itself: log(e^inf + e^inf) = inf, not the NaN of inf - inf.
    return isinf(hi) ? hi : hi + log1pf(expf(fminf(a, b) - hi));
  }
};

// The isotonic problem's data at sorted position j (see soft_rank.py).
__device__ void point(const float* s, int64_t n, int64_t j, float inv_eps, bool kl, bool rank, float& y, float& w) {
  const float sj = s[j];
  const float wj = static_cast<float>(n - j);
  if (rank) {
    y = kl ? sj : sj - wj;
    w = kl ? logf(wj) : 1.f;
  } else {
    y = kl ? wj * inv_eps : wj * inv_eps - sj;
    w = kl ? sj : 1.f;
  }
}

// Push (start, y, w) onto the stack at [base, base + top) and pool while v[top-2] <= v[top-1].
__device__ int64_t push(int32_t* start, float* sy, float* sw, int64_t base, int64_t top, int32_t st, float y, float w,
                        const Pav& pav) {
  while (top > 0 && pav.value(sy[base + top - 1], sw[base + top - 1]) <= pav.value(y, w)) {
    --top;
    y = pav.merge(sy[base + top], y);
    w = pav.merge(sw[base + top], w);
    st = start[base + top];
  }
  start[base + top] = st;
  sy[base + top] = y;
  sw[base + top] = w;
  return top + 1;
}

__global__ void pav_forward_kernel(const float* __restrict__ s, const int64_t* __restrict__ perm, float* out,
                                   int32_t* blocks, int32_t* start, float* sy, float* sw, int64_t R, int64_t n,
                                   float inv_eps, float sign, bool kl, bool rank) {
  const int lane = threadIdx.x % kWarp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  if (row >= R) return;
  const int64_t base = row * n;
  const float* sr = s + base;
  const Pav pav{kl};
  const int64_t chunk = (n + kWarp - 1) / kWarp;
  const int64_t c0 = lane * chunk < n ? lane * chunk : n;
  const int64_t c1 = c0 + chunk < n ? c0 + chunk : n;

  // 1. Each lane: PAV of its chunk, stack kept at [base + c0, base + c0 + count).
  int64_t count = 0;
  for (int64_t j = c0; j < c1; ++j) {
    float y, w;
    point(sr, n, j, inv_eps, kl, rank, y, w);
    count = push(start, sy, sw, base + c0, count, static_cast<int32_t>(j), y, w, pav);
  }
  __syncwarp();
  // 2. Lane 0 merges the chunk stacks into one stack at [base, base + top).
  int64_t top = 0;
  const unsigned full = 0xffffffffu;
  int64_t counts[kWarp];
  for (int l = 0; l < kWarp; ++l) counts[l] = __shfl_sync(full, count, l);
  if (lane == 0) {
    for (int l = 0; l < kWarp; ++l) {
      const int64_t lc0 = l * chunk < n ? l * chunk : n;
      for (int64_t t = 0; t < counts[l]; ++t) {
        const int64_t at = base + lc0 + t;
        top = push(start, sy, sw, base, top, start[at], sy[at], sw[at], pav);
      }
    }
  }
  top = __shfl_sync(full, top, 0);
  __syncwarp();
  // 3. Outputs, lanes strided over blocks.
  for (int64_t k = lane; k < top; k += kWarp) {
    const int64_t begin = start[base + k], end = k + 1 < top ? start[base + k + 1] : n;
    const float v = pav.value(sy[base + k], sw[base + k]);
    for (int64_t j = begin; j < end; ++j) {
      blocks[base + j] = static_cast<int32_t>(end - 1);
      if (rank) {
        out[base + perm[base + j]] = kl ? expf(sr[j] - v) : sr[j] - v;
      } else {
        out[base + j] = sign * (static_cast<float>(n - j) * inv_eps - v);
      }
    }
  }
}

__global__ void pav_backward_kernel(const float* __restrict__ grad_out, const float* __restrict__ s,
                                    const float* __restrict__ out, const int64_t* __restrict__ perm,
                                    const int32_t* __restrict__ blocks, float* grad_x, int64_t R, int64_t n,
                                    float sign, float dz, bool kl, bool rank) {
  const int lane = threadIdx.x % kWarp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  if (row >= R) return;
  const int64_t base = row * n;
  auto u = [&](int64_t j) {  // the output gradient at sorted position j
    if (!rank) return sign * grad_out[base + j];
    const int64_t i = perm[base + j];
    return kl ? grad_out[base + i] * out[base + i] : grad_out[base + i];
  };
  for (int64_t begin = lane; begin < n; begin += kWarp) {
    if (begin > 0 && blocks[base + begin - 1] != begin - 1) continue;  // not a block start
    const int64_t end = static_cast<int64_t>(blocks[base + begin]) + 1;
    float total = 0.f, mx = -INFINITY, norm = static_cast<float>(end - begin);
    for (int64_t j = begin; j < end; ++j) total += u(j);
    if (kl) {
      for (int64_t j = begin; j < end; ++j) mx = fmaxf(mx, s[base + j]);
      norm = 0.f;
      for (int64_t j = begin; j < end; ++j) norm += expf(s[base + j] - mx);
      // A +inf key makes the block's LSE +inf: its softmax is expf(s - mx) itself (NaN at the +inf keys, 0
      // elsewhere), as in the reference; dividing by the NaN sum would spread the NaN over the block.
      if (mx == INFINITY) norm = 1.f;
    }
    for (int64_t j = begin; j < end; ++j) {
      const float soft = kl ? expf(s[base + j] - mx) / norm : 1.f / norm;
      const float gs = rank ? u(j) - total * soft : total * soft;
      grad_x[base + perm[base + j]] = gs * dz;
    }
  }
}

unsigned grid_for(int64_t R) { return static_cast<unsigned>((R + kWarpsPerBlock - 1) / kWarpsPerBlock); }

}  // namespace

extern "C" int pyaudiok_pav_forward_cuda(const float* s, const int64_t* perm, float* out, int32_t* blocks,
                                         int32_t* start, float* sy, float* sw, int64_t R, int64_t n, float inv_eps,
                                         float sign, int kl, int rank, cudaStream_t stream) {
  if (R == 0 || n == 0) return 0;
  pav_forward_kernel<<<grid_for(R), kWarp * kWarpsPerBlock, 0, stream>>>(s, perm, out, blocks, start, sy, sw, R, n,
                                                                         inv_eps, sign, kl != 0, rank != 0);
  return static_cast<int>(cudaGetLastError());
}

extern "C" int pyaudiok_pav_backward_cuda(const float* grad_out, const float* s, const float* out,
                                          const int64_t* perm, const int32_t* blocks, float* grad_x, int64_t R,
                                          int64_t n, float sign, float dz, int kl, int rank, cudaStream_t stream) {
  if (R == 0 || n == 0) return 0;
  pav_backward_kernel<<<grid_for(R), kWarp * kWarpsPerBlock, 0, stream>>>(grad_out, s, out, perm, blocks, grad_x, R,
                                                                          n, sign, dz, kl != 0, rank != 0);
  return static_cast<int>(cudaGetLastError());
}
