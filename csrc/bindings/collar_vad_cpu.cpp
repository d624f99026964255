// CPU implementations of the pyaudiok::collar_vad_* raw ops: checks, allocation and the split of
// batch items over torch's intra-op thread pool; the work in csrc/cpu/collar_vad.cpp.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <tuple>
#include <vector>

#include "../cpu/collar_vad.h"
#include "checks.h"

namespace pyaudiok::bindings {
namespace {

// logits [B, N, T] and reference [B, S, T] contiguous, one float dtype; order [B, N] int64 with
// values in [-1, S) (-1: no reference row).
cpu::CollarVadShape shape_of(const at::Tensor& logits, const at::Tensor& reference, const at::Tensor& order,
                             double collar_frames) {
  TORCH_CHECK(logits.is_cpu() && (logits.scalar_type() == at::kFloat || logits.scalar_type() == at::kDouble) &&
                  logits.dim() == 3 && logits.is_contiguous(),
              "collar_vad (cpu): logits must be a contiguous float32/64 CPU tensor [B, N, T]");
  TORCH_CHECK(reference.is_cpu() && reference.scalar_type() == logits.scalar_type() && reference.dim() == 3 &&
                  reference.is_contiguous() && reference.size(0) == logits.size(0) &&
                  reference.size(2) == logits.size(2),
              "collar_vad (cpu): reference must be a contiguous [B, S, T] tensor of the logits' dtype");
  TORCH_CHECK(order.is_cpu() && order.scalar_type() == at::kLong && order.is_contiguous() &&
                  order.sizes() == logits.sizes().slice(0, 2),
              "collar_vad (cpu): order must be a contiguous int64 CPU tensor [B, N]");
  check_values_in(order, -1, reference.size(1), "collar_vad (cpu)", "order (reference rows, -1: none)");
  TORCH_CHECK(collar_frames >= 0 && std::isfinite(collar_frames), "collar_vad (cpu): collar_frames must be >= 0");
  // Frame t (centre t + 0.5) is within the collar of edge e = t + j iff 0.5 − c < j < 0.5 + c. A collar
  // wider than the items covers every frame already: clamped to T + 1, the offsets fit in int64.
  const double c = std::min(collar_frames, static_cast<double>(logits.size(2)) + 1.0);
  const int64_t lo = static_cast<int64_t>(std::floor(0.5 - c)) + 1;
  const int64_t hi = static_cast<int64_t>(std::ceil(0.5 + c)) - 1;
  return {logits.size(1), reference.size(1), logits.size(2), lo, hi};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> forward(const at::Tensor& logits, const at::Tensor& reference,
                                                       const at::Tensor& order, double collar_frames) {
  const cpu::CollarVadShape s = shape_of(logits, reference, order, collar_frames);
  const int64_t B = logits.size(0);
  at::Tensor keep = at::empty({B, s.T}, logits.options().dtype(at::kByte));
  std::vector<double> sums(B, 0.0);
  std::vector<int64_t> counts(B, 0);
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "collar_vad_forward", [&] {
    at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
      std::vector<int32_t> edges(s.T + 2);
      for (int64_t b = begin; b < end; ++b) {
        const scalar_t* ref = reference.data_ptr<scalar_t>() + b * s.S * s.T;
        uint8_t* kept = keep.data_ptr<uint8_t>() + b * s.T;
        cpu::collar_keep<scalar_t>(ref, s, edges.data(), kept);
        cpu::collar_vad_sum<scalar_t>(logits.data_ptr<scalar_t>() + b * s.N * s.T, ref,
                                      order.data_ptr<int64_t>() + b * s.N, kept, s, &sums[b], &counts[b]);
      }
    });
  });
  double total = 0.0;  // summed in item order: the same result with any number of threads
  int64_t terms = 0;
  for (int64_t b = 0; b < B; ++b) {
    total += sums[b];
    terms += counts[b];
  }
  at::Tensor count = at::scalar_tensor(static_cast<double>(terms), logits.options().dtype(at::kLong));
  at::Tensor loss = at::scalar_tensor(total / static_cast<double>(std::max<int64_t>(terms, 1)), logits.options());
  return {loss, keep, count};
}

at::Tensor backward(const at::Tensor& grad, const at::Tensor& logits, const at::Tensor& reference,
                    const at::Tensor& order, const at::Tensor& keep, const at::Tensor& count) {
  const cpu::CollarVadShape s = shape_of(logits, reference, order, 0.0);
  const int64_t B = logits.size(0);
  TORCH_CHECK(keep.is_cpu() && keep.scalar_type() == at::kByte && keep.is_contiguous() && keep.dim() == 2 &&
                  keep.size(0) == B && keep.size(1) == s.T,
              "collar_vad_backward (cpu): keep must be the forward's [B, T] uint8 mask");
  TORCH_CHECK(grad.numel() == 1 && count.numel() == 1, "collar_vad_backward (cpu): grad and count must be scalars");
  const double scale = grad.item<double>() / static_cast<double>(std::max<int64_t>(count.item<int64_t>(), 1));
  at::Tensor out = at::empty_like(logits);
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "collar_vad_backward", [&] {
    at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        cpu::collar_vad_grad<scalar_t>(logits.data_ptr<scalar_t>() + b * s.N * s.T,
                                       reference.data_ptr<scalar_t>() + b * s.S * s.T,
                                       order.data_ptr<int64_t>() + b * s.N, keep.data_ptr<uint8_t>() + b * s.T, s,
                                       scale, out.data_ptr<scalar_t>() + b * s.N * s.T);
      }
    });
  });
  return out;
}

}  // namespace
}  // namespace pyaudiok::bindings

TORCH_LIBRARY_IMPL(pyaudiok, CPU, m) {
  m.impl("collar_vad_forward", &pyaudiok::bindings::forward);
  m.impl("collar_vad_backward", &pyaudiok::bindings::backward);
}
