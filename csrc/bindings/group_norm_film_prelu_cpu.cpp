// CPU implementations of the pyaudiok::group_norm_film_prelu_* raw ops: checks and allocation here, the
// work in the torch-free kernels of csrc/cpu/group_norm_film_prelu.cpp, the (item, group) pairs split
// over torch's intra-op thread pool.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>

#include "../cpu/group_norm_film_prelu.h"

namespace pyaudiok::bindings {
namespace {

constexpr const char* kOp = "group_norm_film_prelu (cpu)";

void check_same(const at::Tensor& t, const char* name, const at::Tensor& x, at::IntArrayRef shape,
                const char* layout) {
  TORCH_CHECK(t.device().is_cpu(), kOp, ": ", name, " must be on the CPU");
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), kOp, ": ", name, " must have x's dtype ", x.scalar_type(),
              ", got ", t.scalar_type());
  TORCH_CHECK(t.sizes() == shape, kOp, ": ", name, " must be ", layout, " = ", shape, ", got ", t.sizes());
}

// x[B, C, T], gain and offset [B, C], prelu [1] or [C]: the shape the kernels index with.
cpu::GroupShape check_inputs(const at::Tensor& x, const at::Tensor& gain, const at::Tensor& offset,
                             const at::Tensor& prelu, int64_t num_groups) {
  TORCH_CHECK(x.device().is_cpu(), kOp, ": x must be on the CPU");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, kOp, ": x must be float32/64");
  TORCH_CHECK(x.dim() == 3, kOp, ": x must be [B, C, T], got ", x.sizes());
  const int64_t B = x.size(0), C = x.size(1);
  TORCH_CHECK(num_groups >= 1 && C % num_groups == 0, kOp, ": num_groups must be >= 1 and divide C = ", C,
              ", got ", num_groups);
  check_same(gain, "gain", x, {B, C}, "[B, C]");
  check_same(offset, "offset", x, {B, C}, "[B, C]");
  TORCH_CHECK(prelu.dim() == 1 && (prelu.size(0) == 1 || prelu.size(0) == C), kOp,
              ": prelu_weight must be [1] or [C] = [", C, "], got ", prelu.sizes());
  check_same(prelu, "prelu_weight", x, prelu.sizes(), "[1] or [C]");
  return {C, num_groups, x.size(2), prelu.size(0)};
}

// Pairs per task: enough values that a task is worth a thread.
int64_t grain(const cpu::GroupShape& s) {
  return std::max<int64_t>(1, (int64_t{1} << 15) / std::max<int64_t>(1, s.channels / s.groups * s.n_time));
}

std::tuple<at::Tensor, at::Tensor> forward_cpu(const at::Tensor& x_in, const at::Tensor& gain_in,
                                               const at::Tensor& offset_in, const at::Tensor& prelu_in,
                                               int64_t num_groups, double eps) {
  const cpu::GroupShape s = check_inputs(x_in, gain_in, offset_in, prelu_in, num_groups);
  TORCH_CHECK(std::isfinite(eps) && eps > 0, kOp, ": eps must be finite and > 0, got ", eps);
  const at::Tensor x = x_in.contiguous(), gain = gain_in.contiguous(), offset = offset_in.contiguous(),
                   prelu = prelu_in.contiguous();
  const int64_t pairs = x.size(0) * num_groups;
  at::Tensor y = at::empty_like(x), stats = at::empty({x.size(0), num_groups, 3}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "group_norm_film_prelu_forward", [&] {
    at::parallel_for(0, pairs, grain(s), [&](int64_t begin, int64_t end) {
      cpu::group_norm_film_prelu_forward<scalar_t>(x.data_ptr<scalar_t>(), gain.data_ptr<scalar_t>(),
                                                   offset.data_ptr<scalar_t>(), prelu.data_ptr<scalar_t>(), s, eps,
                                                   begin, end, y.data_ptr<scalar_t>(), stats.data_ptr<scalar_t>());
    });
  });
  return {y, stats};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward_cpu(
    const at::Tensor& grad_in, const at::Tensor& x_in, const at::Tensor& gain_in, const at::Tensor& offset_in,
    const at::Tensor& prelu_in, const at::Tensor& stats_in, int64_t num_groups) {
  const cpu::GroupShape s = check_inputs(x_in, gain_in, offset_in, prelu_in, num_groups);
  check_same(grad_in, "grad", x_in, x_in.sizes(), "x's shape");
  check_same(stats_in, "stats", x_in, {x_in.size(0), num_groups, 3}, "[B, G, 3]");
  const at::Tensor g = grad_in.contiguous(), x = x_in.contiguous(), gain = gain_in.contiguous(),
                   offset = offset_in.contiguous(), prelu = prelu_in.contiguous(), stats = stats_in.contiguous();
  const int64_t pairs = x.size(0) * num_groups;
  at::Tensor grad_x = at::empty_like(x), d_gain = at::empty_like(gain), d_offset = at::empty_like(gain),
             d_prelu = at::empty_like(gain);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "group_norm_film_prelu_backward", [&] {
    at::parallel_for(0, pairs, grain(s), [&](int64_t begin, int64_t end) {
      cpu::group_norm_film_prelu_backward<scalar_t>(
          g.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), gain.data_ptr<scalar_t>(), offset.data_ptr<scalar_t>(),
          prelu.data_ptr<scalar_t>(), stats.data_ptr<scalar_t>(), s, begin, end, grad_x.data_ptr<scalar_t>(),
          d_gain.data_ptr<scalar_t>(), d_offset.data_ptr<scalar_t>(), d_prelu.data_ptr<scalar_t>());
    });
  });
  return {grad_x, d_gain, d_offset, d_prelu};
}

}  // namespace
}  // namespace pyaudiok::bindings

TORCH_LIBRARY_IMPL(pyaudiok, CPU, m) {
  m.impl("group_norm_film_prelu_forward", &pyaudiok::bindings::forward_cpu);
  m.impl("group_norm_film_prelu_backward", &pyaudiok::bindings::backward_cpu);
}
