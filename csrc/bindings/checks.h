// Argument checks shared by the bindings: a direct torch.ops.pyaudiok.* call bypasses the Python
// layer's validation, so the bindings guard everything the kernels index with. Value checks are one
// host scan over the (small) index tensors, done before the kernels start.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

namespace pyaudiok::bindings {

// Largest tile or block size accepted by the ops that take one for tuning: larger tiles gain nothing
// and their sizes would overflow the kernels' index arithmetic.
constexpr int64_t kMaxBlockSize = int64_t{1} << 20;

// (min, max) of an integer CPU tensor's values; numel() >= 1.
inline std::pair<int64_t, int64_t> int_value_range(const at::Tensor& t) {
  const at::Tensor c = t.contiguous();
  int64_t lo = std::numeric_limits<int64_t>::max(), hi = std::numeric_limits<int64_t>::min();
  AT_DISPATCH_INDEX_TYPES(c.scalar_type(), "int_value_range", [&] {
    const index_t* p = c.const_data_ptr<index_t>();
    index_t mn = p[0], mx = p[0];
    for (int64_t i = 1, n = c.numel(); i < n; ++i) {
      mn = std::min(mn, p[i]);
      mx = std::max(mx, p[i]);
    }
    lo = mn;
    hi = mx;
  });
  return {lo, hi};
}

// Every value of the int32/int64 tensor t lies in [lo, hi). CPU tensors only: reading a device
// tensor's values would wait on the device; those are left to the callers' checks.
inline void check_values_in(const at::Tensor& t, int64_t lo, int64_t hi, const char* op, const char* name) {
  if (!t.is_cpu() || t.numel() == 0) return;
  const auto [mn, mx] = int_value_range(t);
  TORCH_CHECK(lo <= mn && mx < hi, op, ": ", name, " must lie in [", lo, ", ", hi, "), got values in [", mn,
              ", ", mx, "]");
}

// a·b for sizes a, b >= 0, refused where it overflows int64.
inline int64_t checked_size_product(int64_t a, int64_t b, const char* op, const char* what) {
  int64_t product = 0;
  TORCH_CHECK(a >= 0 && b >= 0 && !__builtin_mul_overflow(a, b, &product), op, ": ", what, " = ", a, " * ", b,
              " overflows int64");
  return product;
}

// A tuning block size: 0 (chosen by shape) or in [1, kMaxBlockSize].
inline void check_block_size(int64_t block, const char* op, const char* name) {
  TORCH_CHECK(block >= 0 && block <= kMaxBlockSize, op, ": ", name, " must lie in [0, ", kMaxBlockSize,
              "] (0: chosen by shape), got ", block);
}

// A strength the float32 kernels divide by: finite and a normal float32 > 0 (a smaller one rounds
// to 0 or makes 1/eps overflow).
inline void check_float32_eps(double eps, const char* op) {
  constexpr double smallest = std::numeric_limits<float>::min();
  TORCH_CHECK(std::isfinite(eps) && eps >= smallest, op, ": eps must be finite and >= ", smallest,
              " (float32's smallest normal), got ", eps);
}

}  // namespace pyaudiok::bindings
