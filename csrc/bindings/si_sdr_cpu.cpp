// CPU implementation of pyaudiok::si_sdr_stats: checks and allocation here, the work in the
// torch-free kernel of csrc/cpu/si_sdr.cpp, batch elements split over torch's intra-op threads.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../cpu/si_sdr.h"

namespace pyaudiok::bindings {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> si_sdr_stats_cpu(const at::Tensor& estimates_in,
                                                                 const at::Tensor& references_in, bool zero_mean) {
  TORCH_CHECK(estimates_in.device().is_cpu() && references_in.device().is_cpu(),
              "si_sdr_stats (cpu): tensors must be on the CPU");
  TORCH_CHECK(estimates_in.dim() == 3 && references_in.dim() == 3 && estimates_in.size(0) == references_in.size(0) &&
                  estimates_in.size(2) == references_in.size(2) && estimates_in.size(2) >= 1,
              "si_sdr_stats (cpu): estimates must be [B, N, T] and references [B, M, T] with T >= 1");
  TORCH_CHECK(estimates_in.scalar_type() == references_in.scalar_type() &&
                  (estimates_in.scalar_type() == at::kFloat || estimates_in.scalar_type() == at::kDouble),
              "si_sdr_stats (cpu): estimates and references must both be float32 or both float64");
  const at::Tensor e = estimates_in.contiguous(), r = references_in.contiguous();
  const int64_t B = e.size(0), N = e.size(1), M = r.size(1), n_time = e.size(2);
  const auto opts = e.options().dtype(at::kDouble);
  at::Tensor ee = at::empty({B, N}, opts), rr = at::empty({B, M}, opts), er = at::empty({B, N, M}, opts);
  AT_DISPATCH_FLOATING_TYPES(e.scalar_type(), "si_sdr_stats", [&] {
    at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b)
        cpu::si_sdr_stats_one<scalar_t>(e.data_ptr<scalar_t>() + b * N * n_time,
                                        r.data_ptr<scalar_t>() + b * M * n_time, N, M, n_time, zero_mean,
                                        ee.data_ptr<double>() + b * N, rr.data_ptr<double>() + b * M,
                                        er.data_ptr<double>() + b * N * M);
    });
  });
  return {ee, rr, er};
}

}  // namespace
}  // namespace pyaudiok::bindings

TORCH_LIBRARY_IMPL(pyaudiok, CPU, m) { m.impl("si_sdr_stats", &pyaudiok::bindings::si_sdr_stats_cpu); }
