// CUDA implementations of pyaudiok::soft_sort_rank / soft_sort_rank_backward: the keys are sorted
// with torch's segmented sort (stable, decreasing), PAV and the gradient run in the torch-free
// kernels of csrc/cuda/soft_rank.cu on the current stream.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../cuda/soft_rank.h"
#include "soft_rank_common.h"

namespace pyaudiok::bindings {
namespace {

void check_launch(int status, const char* what) {
  TORCH_CHECK(status == 0, what, " failed: ", cudaGetErrorString(static_cast<cudaError_t>(status)));
}

// z = sign * x * scale is sorted in decreasing order (pyaudiok/ops/soft_rank.py).
std::pair<float, float> key(double strength, bool rank, bool descending) {
  const float sign = rank ? (descending ? -1.f : 1.f) : (descending ? 1.f : -1.f);
  return {sign, rank ? static_cast<float>(1.0 / strength) : 1.f};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> soft_sort_rank_cuda(const at::Tensor& x, double strength, bool kl,
                                                                   bool rank, bool descending) {
  check_soft_rank_forward(x, strength, at::kCUDA);
  const c10::cuda::CUDAGuard guard(x.device());
  const auto [sign, scale] = key(strength, rank, descending);
  auto [s, perm] = at::sort(x * (sign * scale), /*stable=*/true, /*dim=*/-1, /*descending=*/true);
  s = s.contiguous();
  perm = perm.contiguous();
  at::Tensor out = at::empty_like(x), blocks = at::empty(x.sizes(), x.options().dtype(at::kInt));
  at::Tensor start = at::empty_like(blocks), sy = at::empty_like(x), sw = at::empty_like(x);
  check_launch(pyaudiok_pav_forward_cuda(s.data_ptr<float>(), perm.data_ptr<int64_t>(), out.data_ptr<float>(),
                                         blocks.data_ptr<int32_t>(), start.data_ptr<int32_t>(), sy.data_ptr<float>(),
                                         sw.data_ptr<float>(), x.size(0), x.size(1),
                                         static_cast<float>(1.0 / strength), sign, kl, rank,
                                         c10::cuda::getCurrentCUDAStream().stream()),
               "soft_sort_rank (cuda)");
  return {out, perm, blocks};
}

at::Tensor soft_sort_rank_backward_cuda(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& out,
                                        const at::Tensor& perm, const at::Tensor& blocks, double strength, bool kl,
                                        bool rank, bool descending) {
  check_soft_rank_backward(grad, x, out, perm, blocks, strength, at::kCUDA);
  const c10::cuda::CUDAGuard guard(x.device());
  const auto [sign, scale] = key(strength, rank, descending);
  const at::Tensor s = (x * (sign * scale)).gather(1, perm).contiguous();
  at::Tensor grad_x = at::empty_like(x);
  check_launch(pyaudiok_pav_backward_cuda(grad.data_ptr<float>(), s.data_ptr<float>(), out.data_ptr<float>(),
                                          perm.data_ptr<int64_t>(), blocks.data_ptr<int32_t>(),
                                          grad_x.data_ptr<float>(), x.size(0), x.size(1), sign, sign * scale, kl,
                                          rank, c10::cuda::getCurrentCUDAStream().stream()),
               "soft_sort_rank_backward (cuda)");
  return grad_x;
}

}  // namespace
}  // namespace pyaudiok::bindings

TORCH_LIBRARY_IMPL(pyaudiok, CUDA, m) {
  m.impl("soft_sort_rank", &pyaudiok::bindings::soft_sort_rank_cuda);
  m.impl("soft_sort_rank_backward", &pyaudiok::bindings::soft_sort_rank_backward_cuda);
}
