// CPU implementations of pyaudiok::gather_rotary_forward / _backward: checks, allocation and the
// split of output rows over torch's intra-op thread pool; the work in csrc/cpu/gather_rotary.cpp.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../cpu/gather_rotary.h"

namespace pyaudiok::bindings {
namespace {

constexpr int64_t kGrain = 2048;  // output rows per task

// index[B, H, T] int64; cos, sin [T, dims/2] or [B, 1, T, dims/2] of `like`'s dtype; all contiguous CPU.
cpu::GatherRotaryShape check_inputs(const at::Tensor& like, int64_t d, const at::Tensor& index, const at::Tensor& cos,
                                    const at::Tensor& sin, int64_t dims) {
  TORCH_CHECK(like.is_cpu() && (like.scalar_type() == at::kFloat || like.scalar_type() == at::kDouble),
              "gather_rotary (cpu): rows / grad must be float32/64 CPU tensors");
  TORCH_CHECK(index.is_cpu() && index.scalar_type() == at::kLong && index.dim() == 3 && index.is_contiguous(),
              "gather_rotary (cpu): index must be a contiguous int64 CPU tensor [B, H, T]");
  TORCH_CHECK(dims >= 0 && dims % 2 == 0 && dims <= d, "gather_rotary (cpu): dims must be even and in [0, d]");
  const int64_t B = index.size(0), T = index.size(2);
  const bool batched = cos.dim() == 4;
  const bool shape_ok = batched ? cos.size(0) == B && cos.size(1) == 1 && cos.size(2) == T
                                : cos.dim() == 2 && cos.size(0) == T;
  TORCH_CHECK(shape_ok && cos.size(-1) == dims / 2 && cos.sizes() == sin.sizes() && cos.is_contiguous() &&
                  sin.is_contiguous() && cos.scalar_type() == like.scalar_type() &&
                  sin.scalar_type() == like.scalar_type() && cos.is_cpu() && sin.is_cpu(),
              "gather_rotary (cpu): cos and sin must be contiguous [T, dims/2] or [B, 1, T, dims/2] of the rows' "
              "dtype");
  return {d, dims, T, index.size(1) * T, batched};
}

at::Tensor forward_cpu(const at::Tensor& rows_in, const at::Tensor& index, const at::Tensor& cos,
                       const at::Tensor& sin, int64_t dims) {
  TORCH_CHECK(rows_in.dim() == 2, "gather_rotary (cpu): rows must be [R, d]");
  const at::Tensor rows = rows_in.contiguous();
  const cpu::GatherRotaryShape s = check_inputs(rows, rows.size(1), index, cos, sin, dims);
  at::Tensor out = at::empty({index.size(0), index.size(1), index.size(2), rows.size(1)}, rows.options());
  if (index.numel() > 0) {  // indices in range: the caller's (pyaudiok/ops/gather_rotary.py checks them)
    AT_DISPATCH_FLOATING_TYPES(rows.scalar_type(), "gather_rotary_forward", [&] {
      at::parallel_for(0, index.numel(), kGrain, [&](int64_t begin, int64_t end) {
        cpu::gather_rotary_forward<scalar_t>(rows.data_ptr<scalar_t>(), index.data_ptr<int64_t>(),
                                             cos.data_ptr<scalar_t>(), sin.data_ptr<scalar_t>(), s, begin, end,
                                             out.data_ptr<scalar_t>());
      });
    });
  }
  return out;
}

at::Tensor backward_cpu(const at::Tensor& grad_in, const at::Tensor& index, const at::Tensor& cos,
                        const at::Tensor& sin, int64_t dims, int64_t num_rows) {
  TORCH_CHECK(grad_in.dim() == 4 && grad_in.sizes().slice(0, 3) == index.sizes() && num_rows >= 0,
              "gather_rotary_backward (cpu): grad must be [B, H, T, d] matching index");
  const at::Tensor grad = grad_in.contiguous();
  const int64_t d = grad.size(3), N = index.numel();
  const cpu::GatherRotaryShape s = check_inputs(grad, d, index, cos, sin, dims);
  // Rows repeat across positions: each thread sums into a table of its own, added up at the end.
  const int64_t tables = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), (N + kGrain - 1) / kGrain));
  at::Tensor parts = at::zeros({tables, num_rows, d}, grad.options());
  if (N > 0) {
    AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "gather_rotary_backward", [&] {
      at::parallel_for(0, N, kGrain, [&](int64_t begin, int64_t end) {
        const int64_t part = std::min<int64_t>(at::get_thread_num(), tables - 1);
        cpu::gather_rotary_backward<scalar_t>(grad.data_ptr<scalar_t>(), index.data_ptr<int64_t>(),
                                              cos.data_ptr<scalar_t>(), sin.data_ptr<scalar_t>(), s, begin, end,
                                              parts.data_ptr<scalar_t>() + part * num_rows * d);
      });
    });
  }
  return tables == 1 ? parts[0] : parts.sum(0);
}

}  // namespace
}  // namespace pyaudiok::bindings

TORCH_LIBRARY_IMPL(pyaudiok, CPU, m) {
  m.impl("gather_rotary_forward", &pyaudiok::bindings::forward_cpu);
  m.impl("gather_rotary_backward", &pyaudiok::bindings::backward_cpu);
}
