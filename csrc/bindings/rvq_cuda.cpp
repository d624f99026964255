// CUDA implementations of pyaudiok::rvq_forward / rvq_decode: validation and allocation here
// (shared with the CPU binding through rvq_common.h), the work in the torch-free kernels of
// csrc/cuda/rvq.cu, launched on the current stream of the inputs' device.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../cuda/rvq.h"
#include "rvq_common.h"

namespace pyaudiok::bindings {
namespace {

int cuda_dtype(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return PYAUDIOK_RVQ_F32;
    case at::kHalf: return PYAUDIOK_RVQ_F16;
    case at::kBFloat16: return PYAUDIOK_RVQ_BF16;
    default: TORCH_CHECK(false, "rvq (cuda): float32, float16 or bfloat16 only, got ", t.scalar_type());
  }
}

void check_launch(int status, const char* what) {
  TORCH_CHECK(status == 0, what, " failed: ", cudaGetErrorString(static_cast<cudaError_t>(status)));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> rvq_forward_cuda(const at::Tensor& x, const at::Tensor& codebooks,
                                                                int64_t n_q) {
  const RvqShape s = check_rvq_forward(x, codebooks, n_q);
  const c10::cuda::CUDAGuard guard(x.device());
  const int max_dim = pyaudiok_rvq_forward_cuda_max_dim(x.get_device());
  TORCH_CHECK(s.D <= max_dim, "rvq_forward (cuda): D = ", s.D, " exceeds this device's limit of ", max_dim);
  auto [quantized, codes] = rvq_forward_outputs(x, s);
  at::Tensor partials =
      at::zeros({pyaudiok_rvq_forward_cuda_num_partials(s.N), s.n_q}, x.options().dtype(at::kFloat));
  const at::Tensor cnorm = rvq_codeword_norms(codebooks, n_q);
  check_launch(pyaudiok_rvq_forward_cuda(x.data_ptr(), codebooks.data_ptr(), cnorm.data_ptr<float>(),
                                         quantized.data_ptr(), codes.data_ptr<int64_t>(), partials.data_ptr<float>(),
                                         s.N, s.D, s.K, s.Q, s.n_q, cuda_dtype(x),
                                         c10::cuda::getCurrentCUDAStream().stream()),
               "rvq_forward (cuda)");
  return {quantized, codes, partials.sum(0)};
}

at::Tensor rvq_decode_cuda(const at::Tensor& codes, const at::Tensor& codebooks,
                           const std::optional<at::Tensor>& weights) {
  const RvqShape s = check_rvq_decode(codes, codebooks, weights);
  const c10::cuda::CUDAGuard guard(codes.device());
  at::Tensor out = at::empty({s.N, s.D}, codebooks.options());
  check_launch(pyaudiok_rvq_decode_cuda(codes.data_ptr<int64_t>(), codebooks.data_ptr(),
                                        weights.has_value() ? weights->data_ptr<float>() : nullptr, out.data_ptr(),
                                        s.N, s.D, s.K, s.n_q, cuda_dtype(codebooks),
                                        c10::cuda::getCurrentCUDAStream().stream()),
               "rvq_decode (cuda)");
  return out;
}

}  // namespace
}  // namespace pyaudiok::bindings

TORCH_LIBRARY_IMPL(pyaudiok, CUDA, m) {
  m.impl("rvq_forward", &pyaudiok::bindings::rvq_forward_cuda);
  m.impl("rvq_decode", &pyaudiok::bindings::rvq_decode_cuda);
}
