// CPU implementations of pyaudiok::rvq_forward / rvq_decode: validation and allocation here, the
// work in the torch-free kernels of csrc/cpu/rvq.cpp, spread over torch's intra-op (OpenMP)
// thread pool, so torch.set_num_threads applies.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../cpu/rvq.h"
#include "rvq_common.h"

namespace pyaudiok::bindings {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> rvq_forward_cpu(const at::Tensor& x, const at::Tensor& codebooks,
                                                               int64_t n_q) {
  const RvqShape s = check_rvq_forward(x, codebooks, n_q);
  TORCH_CHECK(x.scalar_type() == at::kFloat, "rvq_forward (cpu): float32 only");
  auto [quantized, codes] = rvq_forward_outputs(x, s);
  const int64_t tiles = (s.N + cpu::kRvqTileRows - 1) / cpu::kRvqTileRows;
  at::Tensor sqerr_tiles = at::zeros({tiles, s.n_q}, x.options());
  at::Tensor cnorm = at::empty({s.n_q, s.K}, x.options());
  cpu::rvq_codeword_norms(codebooks.data_ptr<float>(), s.n_q, s.K, s.D, cnorm.data_ptr<float>());
  at::parallel_for(0, tiles, 1, [&](int64_t begin, int64_t end) {
    cpu::rvq_forward_tiles(x.data_ptr<float>(), codebooks.data_ptr<float>(), cnorm.data_ptr<float>(), s.N, s.D,
                           s.K, s.n_q, begin, end, quantized.data_ptr<float>(), codes.data_ptr<int64_t>(),
                           sqerr_tiles.data_ptr<float>());
  });
  // Per-tile partial sums reduced in a fixed order: the result does not depend on the thread count.
  return {quantized, codes, sqerr_tiles.sum(0)};
}

at::Tensor rvq_decode_cpu(const at::Tensor& codes, const at::Tensor& codebooks,
                          const std::optional<at::Tensor>& weights) {
  const RvqShape s = check_rvq_decode(codes, codebooks, weights);
  TORCH_CHECK(codebooks.scalar_type() == at::kFloat, "rvq_decode (cpu): float32 only");
  at::Tensor out = at::empty({s.N, s.D}, codebooks.options());
  const float* w = weights.has_value() ? weights->data_ptr<float>() : nullptr;
  at::parallel_for(0, s.N, 256, [&](int64_t begin, int64_t end) {
    cpu::rvq_decode_rows(codes.data_ptr<int64_t>(), codebooks.data_ptr<float>(), w, s.K, s.D, s.n_q, begin, end,
                         out.data_ptr<float>());
  });
  return out;
}

}  // namespace
}  // namespace pyaudiok::bindings

TORCH_LIBRARY_IMPL(pyaudiok, CPU, m) {
  m.impl("rvq_forward", &pyaudiok::bindings::rvq_forward_cpu);
  m.impl("rvq_decode", &pyaudiok::bindings::rvq_decode_cpu);
}
