// CPU implementations of the pyaudiok::pcen_* raw ops: checks and allocation here, the work in the
// torch-free kernels of csrc/cpu/pcen.cpp, rows (channels) split over torch's intra-op thread pool.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>

#include "../cpu/pcen.h"

namespace pyaudiok::bindings {
namespace {

void check_inputs(const at::Tensor& E, const at::Tensor& params) {
  TORCH_CHECK(E.device().is_cpu() && params.device().is_cpu(), "pcen (cpu): tensors must be on the CPU");
  TORCH_CHECK(E.dim() == 3 && E.size(2) >= 1, "pcen (cpu): E must be [B, F, T] with T >= 1");
  TORCH_CHECK(E.scalar_type() == at::kFloat || E.scalar_type() == at::kDouble, "pcen (cpu): E must be float32/64");
  TORCH_CHECK(params.scalar_type() == E.scalar_type() && params.dim() == 2 && params.size(0) == 4 &&
                  params.size(1) == E.size(1),
              "pcen (cpu): params must be [4, F] with E's dtype");
}

// Rows per task: enough time steps that a task is worth a thread.
int64_t grain(int64_t n_time) { return std::max<int64_t>(8, (1 << 16) / std::max<int64_t>(1, n_time)); }

// eps is added to the smoother state under a log: NaN or a negative value would poison every output.
void check_eps(double eps) {
  TORCH_CHECK(std::isfinite(eps) && eps >= 0, "pcen (cpu): eps must be finite and >= 0, got ", eps);
}

std::tuple<at::Tensor, at::Tensor> forward_cpu(const at::Tensor& E_in, const at::Tensor& params_in, double eps) {
  check_inputs(E_in, params_in);
  check_eps(eps);
  const at::Tensor E = E_in.contiguous(), params = params_in.contiguous();
  const int64_t F = E.size(1), n_time = E.size(2), rows = E.size(0) * F;
  // No state out: the backward recomputes it (see pcen.h), so M is returned empty.
  at::Tensor y = at::empty_like(E), M = at::empty({0}, E.options());
  AT_DISPATCH_FLOATING_TYPES(E.scalar_type(), "pcen_forward", [&] {
    at::parallel_for(0, rows, grain(n_time), [&](int64_t b, int64_t e) {
      cpu::pcen_forward<scalar_t>(E.data_ptr<scalar_t>(), params.data_ptr<scalar_t>(), F, n_time, eps, b, e,
                                  y.data_ptr<scalar_t>());
    });
  });
  return {y, M};
}

// y is the forward's output (the state is recomputed from E, see pcen.h).
std::tuple<at::Tensor, at::Tensor> backward_cpu(const at::Tensor& grad_in, const at::Tensor& E_in,
                                                const at::Tensor& y_in, const at::Tensor& params_in, double eps) {
  check_inputs(E_in, params_in);
  check_eps(eps);
  TORCH_CHECK(grad_in.sizes() == E_in.sizes() && y_in.sizes() == E_in.sizes() &&
                  grad_in.scalar_type() == E_in.scalar_type() && y_in.scalar_type() == E_in.scalar_type(),
              "pcen_backward (cpu): grad and y must match E's shape and dtype");
  const at::Tensor g = grad_in.contiguous(), E = E_in.contiguous(), y = y_in.contiguous(),
                   params = params_in.contiguous();
  const int64_t F = E.size(1), n_time = E.size(2), rows = E.size(0) * F;
  at::Tensor grad_E = at::empty_like(E), partial = at::empty({rows, 4}, E.options());
  AT_DISPATCH_FLOATING_TYPES(E.scalar_type(), "pcen_backward", [&] {
    at::parallel_for(0, rows, grain(n_time), [&](int64_t b, int64_t e) {
      cpu::pcen_backward<scalar_t>(g.data_ptr<scalar_t>(), E.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(),
                                   params.data_ptr<scalar_t>(), F, n_time, eps, b, e, grad_E.data_ptr<scalar_t>(),
                                   partial.data_ptr<scalar_t>());
    });
  });
  return {grad_E, partial};
}

}  // namespace
}  // namespace pyaudiok::bindings

TORCH_LIBRARY_IMPL(pyaudiok, CPU, m) {
  m.impl("pcen_forward", &pyaudiok::bindings::forward_cpu);
  m.impl("pcen_backward", &pyaudiok::bindings::backward_cpu);
}
