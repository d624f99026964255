// CPU implementations of the pyaudiok::fourier_* raw ops: checks and allocation here, the work in
// the torch-free kernels of csrc/cpu/fourier_crop.cpp over torch's intra-op thread pool. Reductions
// go to per-thread double buffers summed in thread order.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "../cpu/fourier_crop.h"

namespace pyaudiok::bindings {
namespace {

void check_float(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "fourier_crop (cpu): ", name, " must be a CPU tensor");
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, "fourier_crop (cpu): ", name,
              " must be float32 or float64");
}

// Runs fn(begin, end, partial) over [0, n) on the thread pool; returns Σ partials ([size] float64).
template <typename Fn>
at::Tensor parallel_reduce_into(int64_t n, int64_t grain, int64_t size, Fn fn) {
  const int64_t threads = at::get_num_threads();
  std::vector<std::vector<double>> partials(threads, std::vector<double>(size, 0.0));
  at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) {
    fn(begin, end, partials[at::get_thread_num()].data());
  });
  at::Tensor out = at::zeros({size}, at::TensorOptions().dtype(at::kDouble));
  double* o = out.data_ptr<double>();
  for (const auto& p : partials)
    for (int64_t i = 0; i < size; ++i) o[i] += p[i];
  return out;
}

at::Tensor matrix_cpu(const at::Tensor& mask, int64_t n_in, int64_t n_out) {
  check_float(mask, "mask");
  TORCH_CHECK(mask.dim() == 1 && mask.size(0) == n_out / 2 + 1, "fourier_crop_matrix: mask must have n_out//2+1 = ",
              n_out / 2 + 1, " values");
  TORCH_CHECK(n_in >= 1 && n_out >= 1 && n_out <= n_in, "fourier_crop_matrix: need 1 <= n_out <= n_in");
  const at::Tensor m = mask.contiguous();
  at::Tensor A = at::empty({n_out, n_in}, mask.options());
  AT_DISPATCH_FLOATING_TYPES(mask.scalar_type(), "fourier_crop_matrix", [&] {
    // Rows per task from the work (n_in·(K+1) rotations a row): small matrices stay on one thread.
    const int64_t grain = std::max<int64_t>(1, 65536 / (n_in * m.size(0)));
    at::parallel_for(0, n_out, grain, [&](int64_t b, int64_t e) {
      cpu::fourier_crop_matrix<scalar_t>(m.data_ptr<scalar_t>(), m.size(0) - 1, n_in, n_out, b, e,
                                         A.data_ptr<scalar_t>());
    });
  });
  return A;
}

at::Tensor matrix_backward_cpu(const at::Tensor& grad, const at::Tensor& mask) {
  check_float(grad, "grad");
  check_float(mask, "mask");
  TORCH_CHECK(grad.dim() == 2 && grad.scalar_type() == mask.scalar_type(),
              "fourier_crop_matrix_backward: grad must be [n_out, n_in] with the mask's dtype");
  const int64_t n_out = grad.size(0), n_in = grad.size(1);
  TORCH_CHECK(n_in >= 1 && n_out >= 1 && n_out <= n_in,
              "fourier_crop_matrix_backward: grad [n_out, n_in] needs 1 <= n_out <= n_in, got [", n_out, ", ", n_in,
              "]");
  TORCH_CHECK(mask.dim() == 1 && mask.size(0) == n_out / 2 + 1,
              "fourier_crop_matrix_backward: mask must be 1-D with n_out//2+1 = ", n_out / 2 + 1, " values");
  const int64_t K = n_out / 2;
  const at::Tensor g = grad.contiguous();
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "fourier_crop_matrix_backward", [&] {
    const int64_t grain = std::max<int64_t>(1, 65536 / (n_in * (K + 1)));
    out = parallel_reduce_into(n_out, grain, K + 1, [&](int64_t b, int64_t e, double* p) {
      cpu::fourier_crop_matrix_backward<scalar_t>(g.data_ptr<scalar_t>(), K, n_in, n_out, b, e, p);
    });
  });
  return out.to(mask.scalar_type());
}

void check_spectrum(const at::Tensor& X, const at::Tensor& rows, const at::Tensor& cols) {
  check_float(X, "spectrum");
  TORCH_CHECK(X.dim() == 4 && X.size(3) == 2, "fourier_mask_crop: spectrum must be [B, H, F, 2]");
  TORCH_CHECK(rows.dim() == 1 && cols.dim() == 1 && rows.scalar_type() == X.scalar_type() &&
                  cols.scalar_type() == X.scalar_type(),
              "fourier_mask_crop: masks must be 1-D with the spectrum's dtype");
  TORCH_CHECK(rows.size(0) <= X.size(1) && cols.size(0) <= X.size(2), "fourier_mask_crop: masks larger than spectrum");
}

at::Tensor mask_crop_cpu(const at::Tensor& spectrum, const at::Tensor& mask_rows, const at::Tensor& mask_cols) {
  check_spectrum(spectrum, mask_rows, mask_cols);
  const at::Tensor X = spectrum.contiguous(), mr = mask_rows.contiguous(), mc = mask_cols.contiguous();
  const int64_t B = X.size(0), H = X.size(1), F = X.size(2), H_out = mr.size(0), Kc = mc.size(0);
  at::Tensor Y = at::empty({B, H_out, Kc, 2}, X.options());
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, H_out * Kc));
  AT_DISPATCH_FLOATING_TYPES(X.scalar_type(), "fourier_mask_crop", [&] {
    at::parallel_for(0, B, grain, [&](int64_t b, int64_t e) {
      cpu::fourier_mask_crop<scalar_t>(X.data_ptr<scalar_t>(), mr.data_ptr<scalar_t>(), mc.data_ptr<scalar_t>(), H,
                                       F, H_out, Kc, b, e, Y.data_ptr<scalar_t>());
    });
  });
  return Y;
}

std::tuple<at::Tensor, at::Tensor> mask_crop_backward_cpu(const at::Tensor& grad, const at::Tensor& spectrum,
                                                          const at::Tensor& mask_rows, const at::Tensor& mask_cols) {
  check_spectrum(spectrum, mask_rows, mask_cols);
  const at::Tensor G = grad.contiguous(), X = spectrum.contiguous(), mr = mask_rows.contiguous(),
                   mc = mask_cols.contiguous();
  const int64_t B = X.size(0), H = X.size(1), F = X.size(2), H_out = mr.size(0), Kc = mc.size(0);
  TORCH_CHECK(G.sizes() == at::IntArrayRef({B, H_out, Kc, 2}) && G.scalar_type() == X.scalar_type(),
              "fourier_mask_crop_backward: grad must be [B, H_out, Kc, 2] with the spectrum's dtype");
  at::Tensor dX = at::empty_like(X);
  at::Tensor E;
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, H * F));
  AT_DISPATCH_FLOATING_TYPES(X.scalar_type(), "fourier_mask_crop_backward", [&] {
    E = parallel_reduce_into(B, grain, H_out * Kc, [&](int64_t b, int64_t e, double* p) {
      cpu::fourier_mask_crop_backward<scalar_t>(G.data_ptr<scalar_t>(), X.data_ptr<scalar_t>(),
                                                mr.data_ptr<scalar_t>(), mc.data_ptr<scalar_t>(), H, F, H_out, Kc, b,
                                                e, dX.data_ptr<scalar_t>(), p);
    });
  });
  return {dX, E.view({H_out, Kc}).to(X.scalar_type())};
}

}  // namespace
}  // namespace pyaudiok::bindings

TORCH_LIBRARY_IMPL(pyaudiok, CPU, m) {
  m.impl("fourier_crop_matrix", &pyaudiok::bindings::matrix_cpu);
  m.impl("fourier_crop_matrix_backward", &pyaudiok::bindings::matrix_backward_cpu);
  m.impl("fourier_mask_crop", &pyaudiok::bindings::mask_crop_cpu);
  m.impl("fourier_mask_crop_backward", &pyaudiok::bindings::mask_crop_backward_cpu);
}
