// CPU implementations of the pyaudiok::gather_rotary_* and split_heads_rotary_* raw ops: checks,
// allocation and the split of rows over torch's intra-op thread pool; the work in
// csrc/cpu/rotary.cpp.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../cpu/rotary.h"
#include "checks.h"

namespace pyaudiok::bindings {
namespace {

constexpr int64_t kGrainRows = 2048;  // rows of d values per task

void check_float(const at::Tensor& t, const char* what) {
  TORCH_CHECK(t.is_cpu() && (t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble), "rotary (cpu): ", what,
              " must be a float32/64 CPU tensor");
}

// cos, sin: contiguous [T, dims/2] (shared by the batch) or [B, 1, T, dims/2] of `like`'s dtype.
// Returns whether they are per batch item.
bool check_angles(const at::Tensor& like, int64_t B, int64_t T, const at::Tensor& cos, const at::Tensor& sin,
                  int64_t dims, int64_t d) {
  TORCH_CHECK(dims >= 0 && dims % 2 == 0 && dims <= d, "rotary (cpu): dims must be even and in [0, d]");
  const bool batched = cos.dim() == 4;
  const bool shape_ok = batched ? cos.size(0) == B && cos.size(1) == 1 && cos.size(2) == T
                                : cos.dim() == 2 && cos.size(0) == T;
  TORCH_CHECK(shape_ok && cos.size(-1) == dims / 2 && cos.sizes() == sin.sizes() && cos.is_contiguous() &&
                  sin.is_contiguous() && cos.scalar_type() == like.scalar_type() &&
                  sin.scalar_type() == like.scalar_type() && cos.is_cpu() && sin.is_cpu(),
              "rotary (cpu): cos and sin must be contiguous [T, dims/2] or [B, 1, T, dims/2] of the data's dtype");
  return batched;
}

cpu::GatherRotaryShape gather_shape(const at::Tensor& like, int64_t d, const at::Tensor& index, const at::Tensor& cos,
                                    const at::Tensor& sin, int64_t dims) {
  check_float(like, "rows / grad");
  TORCH_CHECK(index.is_cpu() && index.scalar_type() == at::kLong && index.dim() == 3 && index.is_contiguous(),
              "gather_rotary (cpu): index must be a contiguous int64 CPU tensor [B, H, T]");
  const int64_t T = index.size(2);
  const bool batched = check_angles(like, index.size(0), T, cos, sin, dims, d);
  return {d, dims, T, index.size(1) * T, batched};
}

at::Tensor gather_forward(const at::Tensor& rows_in, const at::Tensor& index, const at::Tensor& cos,
                          const at::Tensor& sin, int64_t dims) {
  TORCH_CHECK(rows_in.dim() == 2, "gather_rotary (cpu): rows must be [R, d]");
  const at::Tensor rows = rows_in.contiguous();
  const cpu::GatherRotaryShape s = gather_shape(rows, rows.size(1), index, cos, sin, dims);
  check_values_in(index, 0, rows.size(0), "gather_rotary (cpu)", "index (rows of rows[R, d])");
  at::Tensor out = at::empty({index.size(0), index.size(1), index.size(2), rows.size(1)}, rows.options());
  AT_DISPATCH_FLOATING_TYPES(rows.scalar_type(), "gather_rotary_forward", [&] {
    at::parallel_for(0, index.numel(), kGrainRows, [&](int64_t begin, int64_t end) {
      cpu::gather_rotary_forward<scalar_t>(rows.data_ptr<scalar_t>(), index.data_ptr<int64_t>(),
                                           cos.data_ptr<scalar_t>(), sin.data_ptr<scalar_t>(), s, begin, end,
                                           out.data_ptr<scalar_t>());
    });
  });
  return out;
}

at::Tensor gather_backward(const at::Tensor& grad_in, const at::Tensor& index, const at::Tensor& cos,
                           const at::Tensor& sin, int64_t dims, int64_t num_rows) {
  TORCH_CHECK(grad_in.dim() == 4 && grad_in.sizes().slice(0, 3) == index.sizes() && num_rows >= 0,
              "gather_rotary_backward (cpu): grad must be [B, H, T, d] matching index");
  const at::Tensor grad = grad_in.contiguous();
  const int64_t d = grad.size(3), N = index.numel();
  const cpu::GatherRotaryShape s = gather_shape(grad, d, index, cos, sin, dims);
  check_values_in(index, 0, num_rows, "gather_rotary_backward (cpu)", "index (rows of the [num_rows, d] gradient)");
  // Rows repeat across positions: each thread sums into a table of its own, added up at the end.
  const int64_t tasks = (N + kGrainRows - 1) / kGrainRows;
  const int64_t tables = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), tasks));
  at::Tensor parts = at::zeros({tables, num_rows, d}, grad.options());
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "gather_rotary_backward", [&] {
    at::parallel_for(0, N, kGrainRows, [&](int64_t begin, int64_t end) {
      const int64_t part = std::min<int64_t>(at::get_thread_num(), tables - 1);
      cpu::gather_rotary_backward<scalar_t>(grad.data_ptr<scalar_t>(), index.data_ptr<int64_t>(),
                                            cos.data_ptr<scalar_t>(), sin.data_ptr<scalar_t>(), s, begin, end,
                                            parts.data_ptr<scalar_t>() + part * num_rows * d);
    });
  });
  return tables == 1 ? parts[0] : parts.sum(0);
}

// Positions (b, t) per task: each moves P·H rows.
int64_t heads_grain(const cpu::HeadsShape& s) {
  return std::max<int64_t>(1, kGrainRows / std::max<int64_t>(1, s.P * s.H));
}

at::Tensor split_heads_forward(const at::Tensor& x_in, int64_t parts, int64_t heads, const at::Tensor& cos,
                               const at::Tensor& sin, int64_t dims, int64_t rotated) {
  check_float(x_in, "x");
  TORCH_CHECK(parts >= 1 && heads >= 1, "split_heads_rotary (cpu): parts and heads must be >= 1, got ", parts, ", ",
              heads);
  const int64_t rows = checked_size_product(parts, heads, "split_heads_rotary (cpu)", "parts·heads");
  TORCH_CHECK(x_in.dim() == 3 && x_in.size(2) % rows == 0 && rotated >= 0 && rotated <= parts,
              "split_heads_rotary (cpu): x must be [B, T, parts·heads·d] and 0 <= rotated <= parts");
  const at::Tensor x = x_in.contiguous();
  const int64_t B = x.size(0), T = x.size(1), d = x.size(2) / rows;
  const bool batched = check_angles(x, B, T, cos, sin, dims, d);
  const cpu::HeadsShape s{B, T, parts, heads, d, dims, rotated, batched};
  at::Tensor out = at::empty({parts, B, heads, T, d}, x.options());
  if (out.numel() == 0) return out;  // else the kernels would walk all parts·heads rows of nothing
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "split_heads_rotary_forward", [&] {
    at::parallel_for(0, B * T, heads_grain(s), [&](int64_t begin, int64_t end) {
      cpu::split_heads_rotary_forward<scalar_t>(x.data_ptr<scalar_t>(), cos.data_ptr<scalar_t>(),
                                                sin.data_ptr<scalar_t>(), s, begin, end, out.data_ptr<scalar_t>());
    });
  });
  return out;
}

at::Tensor split_heads_backward(const at::Tensor& grad_in, const at::Tensor& cos, const at::Tensor& sin, int64_t dims,
                                int64_t rotated) {
  check_float(grad_in, "grad");
  TORCH_CHECK(grad_in.dim() == 5 && rotated >= 0 && rotated <= grad_in.size(0),
              "split_heads_rotary_backward (cpu): grad must be [parts, B, heads, T, d], 0 <= rotated <= parts");
  const at::Tensor grad = grad_in.contiguous();
  const int64_t P = grad.size(0), B = grad.size(1), H = grad.size(2), T = grad.size(3), d = grad.size(4);
  const bool batched = check_angles(grad, B, T, cos, sin, dims, d);
  const cpu::HeadsShape s{B, T, P, H, d, dims, rotated, batched};
  const int64_t channels = checked_size_product(
      checked_size_product(P, H, "split_heads_rotary_backward (cpu)", "parts·heads"), d,
      "split_heads_rotary_backward (cpu)", "parts·heads·d");
  at::Tensor grad_x = at::empty({B, T, channels}, grad.options());
  if (grad_x.numel() == 0) return grad_x;
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "split_heads_rotary_backward", [&] {
    at::parallel_for(0, B * T, heads_grain(s), [&](int64_t begin, int64_t end) {
      cpu::split_heads_rotary_backward<scalar_t>(grad.data_ptr<scalar_t>(), cos.data_ptr<scalar_t>(),
                                                 sin.data_ptr<scalar_t>(), s, begin, end, grad_x.data_ptr<scalar_t>());
    });
  });
  return grad_x;
}

}  // namespace
}  // namespace pyaudiok::bindings

TORCH_LIBRARY_IMPL(pyaudiok, CPU, m) {
  m.impl("gather_rotary_forward", &pyaudiok::bindings::gather_forward);
  m.impl("gather_rotary_backward", &pyaudiok::bindings::gather_backward);
  m.impl("split_heads_rotary_forward", &pyaudiok::bindings::split_heads_forward);
  m.impl("split_heads_rotary_backward", &pyaudiok::bindings::split_heads_backward);
}
