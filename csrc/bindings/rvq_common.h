// Argument guards and output allocation shared by the CPU and CUDA bindings of the RVQ ops.
// The Python layer already validated everything with friendly messages; these guards only keep a
// direct torch.ops.pyaudiok.* call from reading out of bounds.
#pragma once
#include <ATen/ATen.h>

#include <tuple>

#include "checks.h"

namespace pyaudiok::bindings {

struct RvqShape {
  int64_t N, D, Q, K, n_q;
};

inline RvqShape check_rvq_forward(const at::Tensor& x, const at::Tensor& codebooks, int64_t n_q) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), "rvq_forward: x must be a contiguous [N, D] tensor");
  TORCH_CHECK(codebooks.dim() == 3 && codebooks.is_contiguous(),
              "rvq_forward: codebooks must be a contiguous [Q, K, D] tensor");
  TORCH_CHECK(codebooks.scalar_type() == x.scalar_type(), "rvq_forward: codebooks must have x's dtype");
  TORCH_CHECK(codebooks.device() == x.device(), "rvq_forward: codebooks must be on x's device");
  TORCH_CHECK(codebooks.size(2) == x.size(1), "rvq_forward: codebooks' D must match x's D");
  TORCH_CHECK(x.size(1) >= 1, "rvq_forward: x must have D >= 1 channels");
  TORCH_CHECK(1 <= n_q && n_q <= codebooks.size(0), "rvq_forward: n_q must be in [1, Q]");
  TORCH_CHECK(codebooks.size(1) >= 1 && codebooks.size(1) < (int64_t{1} << 31),
              "rvq_forward: codebooks must have K in [1, 2**31) codewords");
  return {x.size(0), x.size(1), codebooks.size(0), codebooks.size(1), n_q};
}

inline RvqShape check_rvq_decode(const at::Tensor& codes, const at::Tensor& codebooks,
                                 const std::optional<at::Tensor>& weights) {
  TORCH_CHECK(codes.dim() == 2 && codes.is_contiguous() && codes.scalar_type() == at::kLong,
              "rvq_decode: codes must be a contiguous int64 [N, n_q] tensor");
  TORCH_CHECK(codebooks.dim() == 3 && codebooks.is_contiguous(),
              "rvq_decode: codebooks must be a contiguous [Q, K, D] tensor");
  TORCH_CHECK(codes.device() == codebooks.device(), "rvq_decode: codes must be on codebooks' device");
  TORCH_CHECK(1 <= codes.size(1) && codes.size(1) <= codebooks.size(0), "rvq_decode: n_q must be in [1, Q]");
  TORCH_CHECK(codebooks.size(1) >= 1, "rvq_decode: codebooks must have K >= 1 codewords");
  check_values_in(codes, 0, codebooks.size(1), "rvq_decode", "codes");  // CPU codes only: no device wait
  if (weights.has_value()) {
    TORCH_CHECK(weights->dim() == 1 && weights->size(0) == codes.size(1) && weights->is_contiguous() &&
                    weights->scalar_type() == at::kFloat && weights->device() == codes.device(),
                "rvq_decode: weights must be a contiguous float32 [n_q] tensor on codes' device");
  }
  return {codes.size(0), codebooks.size(2), codebooks.size(0), codebooks.size(1), codes.size(1)};
}

// (quantized[N, D], codes[N, n_q] int64) for a forward call.
inline std::tuple<at::Tensor, at::Tensor> rvq_forward_outputs(const at::Tensor& x, const RvqShape& s) {
  return {at::empty({s.N, s.D}, x.options()), at::empty({s.N, s.n_q}, x.options().dtype(at::kLong))};
}

// ||C_q[k]||² for the used stages, [n_q, K] float32 (computed once per call, shared by all tiles).
inline at::Tensor rvq_codeword_norms(const at::Tensor& codebooks, int64_t n_q) {
  return codebooks.narrow(0, 0, n_q).to(at::kFloat).square().sum(-1).contiguous();
}

}  // namespace pyaudiok::bindings
