// CPU implementation of pyaudiok::kmeans_lloyd: checks and allocation here, the work in the
// torch-free kernel of csrc/cpu/kmeans.cpp, batch elements split over torch's intra-op threads.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../cpu/kmeans.h"

namespace pyaudiok::bindings {
namespace {

std::tuple<at::Tensor, at::Tensor> kmeans_lloyd_cpu(const at::Tensor& x_in, const at::Tensor& centroids_in,
                                                    int64_t n_iters) {
  TORCH_CHECK(x_in.device().is_cpu() && centroids_in.device().is_cpu(), "kmeans_lloyd (cpu): tensors must be on the CPU");
  TORCH_CHECK(x_in.scalar_type() == at::kFloat && centroids_in.scalar_type() == at::kFloat,
              "kmeans_lloyd (cpu): x and centroids must be float32");
  TORCH_CHECK(x_in.dim() == 3 && centroids_in.dim() == 3 && centroids_in.size(0) == x_in.size(0) &&
                  centroids_in.size(2) == x_in.size(2) && centroids_in.size(1) >= 1,
              "kmeans_lloyd (cpu): x must be [B, P, d] and centroids [B, k, d] with k >= 1");
  TORCH_CHECK(n_iters >= 0, "kmeans_lloyd (cpu): n_iters must be >= 0");
  const at::Tensor x = x_in.contiguous();
  at::Tensor centroids = centroids_in.contiguous().clone();
  const int64_t B = x.size(0), P = x.size(1), D = x.size(2), K = centroids.size(1);
  at::Tensor assignments = at::empty({B, P}, x.options().dtype(at::kLong));
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b)
      cpu::kmeans_lloyd_one(x.data_ptr<float>() + b * P * D, P, D, K, n_iters, centroids.data_ptr<float>() + b * K * D,
                            assignments.data_ptr<int64_t>() + b * P);
  });
  return {centroids, assignments};
}

}  // namespace
}  // namespace pyaudiok::bindings

TORCH_LIBRARY_IMPL(pyaudiok, CPU, m) { m.impl("kmeans_lloyd", &pyaudiok::bindings::kmeans_lloyd_cpu); }
