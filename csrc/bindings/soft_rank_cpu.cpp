// CPU implementations of pyaudiok::soft_sort_rank / soft_sort_rank_backward: guards and
// allocation here, the work in csrc/cpu/soft_rank.cpp, rows spread over torch's intra-op (OpenMP)
// thread pool (torch.set_num_threads applies).
#include <ATen/Parallel.h>
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../cpu/soft_rank.h"
#include "soft_rank_common.h"

namespace pyaudiok::bindings {
namespace {

cpu::SoftSortRankFlags flags(double strength, bool kl, bool rank, bool descending) {
  return {static_cast<float>(strength), kl, rank, descending};
}

// Rows per parallel task: enough work to amortise the task, at least one row.
int64_t grain(int64_t n) { return std::max<int64_t>(1, 4096 / std::max<int64_t>(n, 1)); }

std::tuple<at::Tensor, at::Tensor, at::Tensor> soft_sort_rank_cpu(const at::Tensor& x, double strength, bool kl,
                                                                  bool rank, bool descending) {
  check_soft_rank_forward(x, strength, at::kCPU);
  const auto f = flags(strength, kl, rank, descending);
  at::Tensor out = at::empty_like(x);
  at::Tensor perm = at::empty(x.sizes(), x.options().dtype(at::kLong));
  at::Tensor blocks = at::empty(x.sizes(), x.options().dtype(at::kInt));
  const int64_t R = x.size(0), n = x.size(1);
  at::parallel_for(0, R, grain(n), [&](int64_t begin, int64_t end) {
    cpu::soft_sort_rank_rows(x.data_ptr<float>(), n, f, begin, end, out.data_ptr<float>(), perm.data_ptr<int64_t>(),
                             blocks.data_ptr<int32_t>());
  });
  return {out, perm, blocks};
}

at::Tensor soft_sort_rank_backward_cpu(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& out,
                                       const at::Tensor& perm, const at::Tensor& blocks, double strength, bool kl,
                                       bool rank, bool descending) {
  check_soft_rank_backward(grad, x, out, perm, blocks, strength, at::kCPU);
  const auto f = flags(strength, kl, rank, descending);
  at::Tensor grad_x = at::empty_like(x);
  const int64_t R = x.size(0), n = x.size(1);
  at::parallel_for(0, R, grain(n), [&](int64_t begin, int64_t end) {
    cpu::soft_sort_rank_backward_rows(grad.data_ptr<float>(), x.data_ptr<float>(), out.data_ptr<float>(),
                                      perm.data_ptr<int64_t>(), blocks.data_ptr<int32_t>(), n, f, begin, end,
                                      grad_x.data_ptr<float>());
  });
  return grad_x;
}

}  // namespace
}  // namespace pyaudiok::bindings

TORCH_LIBRARY_IMPL(pyaudiok, CPU, m) {
  m.impl("soft_sort_rank", &pyaudiok::bindings::soft_sort_rank_cpu);
  m.impl("soft_sort_rank_backward", &pyaudiok::bindings::soft_sort_rank_backward_cpu);
}
