// CPU implementations of pyaudiok::sinkhorn_forward / sinkhorn_backward: guards and allocation
// here, the work in csrc/cpu/sinkhorn.cpp, one batch element per task on torch's intra-op
// (OpenMP) thread pool.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../cpu/sinkhorn.h"
#include "checks.h"

namespace pyaudiok::bindings {
namespace {

void check(const at::Tensor& t, const char* name, at::IntArrayRef shape, at::ScalarType dtype = at::kFloat) {
  TORCH_CHECK(t.is_cpu() && t.is_contiguous() && t.scalar_type() == dtype && t.sizes() == shape, "sinkhorn (cpu): ",
              name, " must be a contiguous ", at::toString(dtype), " CPU tensor of shape ", shape, ", got ",
              t.sizes());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> sinkhorn_forward_cpu(
    const at::Tensor& cost, const at::Tensor& log_a, const at::Tensor& log_b, double eps, int64_t n_iters,
    double tol, bool history) {
  TORCH_CHECK(cost.dim() == 3, "sinkhorn_forward: cost must be [B, n, m]");
  const int64_t B = cost.size(0), n = cost.size(1), m = cost.size(2);
  check(cost, "cost", cost.sizes());
  check(log_a, "log_a", {B, n});
  check(log_b, "log_b", {B, m});
  TORCH_CHECK(n_iters >= 1 && n >= 1 && m >= 1, "sinkhorn_forward: need n_iters >= 1, n, m >= 1");
  check_float32_eps(eps, "sinkhorn_forward");
  const cpu::SinkhornShape s{n, m, n_iters, history ? n_iters + 1 : 2, static_cast<float>(eps),
                             static_cast<float>(tol)};
  auto opts = cost.options();
  at::Tensor plan = at::empty_like(cost), f = at::empty({B, n}, opts), g = at::empty({B, m}, opts);
  at::Tensor iters = at::empty({B}, opts.dtype(at::kLong));
  at::Tensor hist_f = at::empty({B, s.slots, n}, opts), hist_g = at::empty({B, s.slots, m}, opts);
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      cpu::sinkhorn_forward_one(cost.data_ptr<float>() + b * n * m, log_a.data_ptr<float>() + b * n,
                                log_b.data_ptr<float>() + b * m, s, plan.data_ptr<float>() + b * n * m,
                                f.data_ptr<float>() + b * n, g.data_ptr<float>() + b * m,
                                iters.data_ptr<int64_t>() + b, hist_f.data_ptr<float>() + b * s.slots * n,
                                hist_g.data_ptr<float>() + b * s.slots * m);
    }
  });
  return {plan, f, g, iters, hist_f, hist_g};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sinkhorn_backward_cpu(
    const at::Tensor& grad_plan, const at::Tensor& grad_f, const at::Tensor& grad_g, const at::Tensor& cost,
    const at::Tensor& log_a, const at::Tensor& log_b, const at::Tensor& plan, const at::Tensor& iters,
    const at::Tensor& hist_f, const at::Tensor& hist_g, double eps) {
  TORCH_CHECK(cost.dim() == 3 && hist_f.dim() == 3, "sinkhorn_backward: cost must be [B, n, m]");
  const int64_t B = cost.size(0), n = cost.size(1), m = cost.size(2), slots = hist_f.size(1);
  for (auto [t, name] : {std::pair{&grad_plan, "grad_plan"}, {&cost, "cost"}, {&plan, "plan"}})
    check(*t, name, {B, n, m});
  check(grad_f, "grad_f", {B, n});
  check(log_a, "log_a", {B, n});
  check(grad_g, "grad_g", {B, m});
  check(log_b, "log_b", {B, m});
  check(iters, "iters", {B}, at::kLong);
  check(hist_f, "hist_f", {B, slots, n});
  check(hist_g, "hist_g", {B, slots, m});
  check_float32_eps(eps, "sinkhorn_backward");
  // The unrolled backward replays the forward's iterations from its full history.
  check_values_in(iters, 0, slots, "sinkhorn_backward", "iters (the forward's iteration counts)");
  const cpu::SinkhornShape s{n, m, slots - 1, slots, static_cast<float>(eps), 0.f};
  at::Tensor grad_cost = at::empty_like(cost), grad_log_a = at::empty_like(log_a), grad_log_b = at::empty_like(log_b);
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      cpu::sinkhorn_backward_one(
          grad_plan.data_ptr<float>() + b * n * m, grad_f.data_ptr<float>() + b * n, grad_g.data_ptr<float>() + b * m,
          cost.data_ptr<float>() + b * n * m, log_a.data_ptr<float>() + b * n, log_b.data_ptr<float>() + b * m,
          plan.data_ptr<float>() + b * n * m, iters.data_ptr<int64_t>()[b], hist_f.data_ptr<float>() + b * slots * n,
          hist_g.data_ptr<float>() + b * slots * m, s, grad_cost.data_ptr<float>() + b * n * m,
          grad_log_a.data_ptr<float>() + b * n, grad_log_b.data_ptr<float>() + b * m);
    }
  });
  return {grad_cost, grad_log_a, grad_log_b};
}

}  // namespace
}  // namespace pyaudiok::bindings

TORCH_LIBRARY_IMPL(pyaudiok, CPU, m) {
  m.impl("sinkhorn_forward", &pyaudiok::bindings::sinkhorn_forward_cpu);
  m.impl("sinkhorn_backward", &pyaudiok::bindings::sinkhorn_backward_cpu);
}
