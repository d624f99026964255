// Argument guards shared by the CPU and CUDA bindings of the soft sort/rank ops. The Python layer
// already validated everything with friendly messages; these keep a direct torch.ops.pyaudiok.*
// call from reading out of bounds.
#pragma once
#include <ATen/ATen.h>

#include "checks.h"

namespace pyaudiok::bindings {

// t must be a contiguous 2-D `dtype` tensor of `shape` on `device` ("cpu" / "cuda").
inline void check_soft_rank_rows(const at::Tensor& t, const char* name, at::ScalarType dtype, at::IntArrayRef shape,
                                 at::DeviceType device) {
  TORCH_CHECK(t.dim() == 2 && t.is_contiguous() && t.scalar_type() == dtype && t.sizes() == shape &&
                  t.device().type() == device,
              "soft_sort_rank (", c10::DeviceTypeName(device, /*lower_case=*/true), "): ", name,
              " must be a contiguous ", at::toString(dtype), " tensor of shape ", shape, " on that device");
}

inline void check_soft_rank_forward(const at::Tensor& x, double strength, at::DeviceType device) {
  TORCH_CHECK(x.dim() == 2, "soft_sort_rank: x must be [R, n]");
  check_soft_rank_rows(x, "x", at::kFloat, x.sizes(), device);
  TORCH_CHECK(x.size(1) < (int64_t{1} << 31), "soft_sort_rank: n must be < 2**31");
  TORCH_CHECK(strength > 0, "soft_sort_rank: strength must be > 0");
}

// The forward's blocks: at sorted position j of a row, the last position of j's pooled block, so
// j <= blocks[r, j] < n (the backward walks a row block by block from these). CPU tensors only: reading a
// device tensor's values would wait on the device.
inline void check_soft_rank_blocks(const at::Tensor& blocks) {
  if (!blocks.is_cpu()) return;
  const int64_t R = blocks.size(0), n = blocks.size(1);
  const int32_t* b = blocks.const_data_ptr<int32_t>();
  for (int64_t r = 0; r < R; ++r) {
    for (int64_t j = 0; j < n; ++j) {
      const int64_t last = b[r * n + j];
      TORCH_CHECK(j <= last && last < n, "soft_sort_rank_backward: blocks[", r, ", ", j, "] must lie in [", j, ", ",
                  n, ") (the last sorted position of the block holding position ", j, "), got ", last);
    }
  }
}

inline void check_soft_rank_backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& out,
                                     const at::Tensor& perm, const at::Tensor& blocks, double strength,
                                     at::DeviceType device) {
  TORCH_CHECK(x.dim() == 2, "soft_sort_rank_backward: x must be [R, n]");
  check_soft_rank_rows(grad, "grad", at::kFloat, x.sizes(), device);
  check_soft_rank_rows(x, "x", at::kFloat, x.sizes(), device);
  check_soft_rank_rows(out, "out", at::kFloat, x.sizes(), device);
  check_soft_rank_rows(perm, "perm", at::kLong, x.sizes(), device);
  check_soft_rank_rows(blocks, "blocks", at::kInt, x.sizes(), device);
  TORCH_CHECK(strength > 0, "soft_sort_rank: strength must be > 0");
  check_values_in(perm, 0, x.size(1), "soft_sort_rank_backward", "perm");
  check_soft_rank_blocks(blocks);
}

}  // namespace pyaudiok::bindings
