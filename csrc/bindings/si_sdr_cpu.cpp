// CPU implementation of pyaudiok::si_sdr_matrix_cpu: checks and allocation here, the work in the
// torch-free kernel of csrc/cpu/si_sdr.cpp. Items and, when there are fewer items than threads,
// time chunks of each item are split over torch's intra-op threads. The chunks' partial sums are
// added in a fixed order; their number follows the thread count, so the last bits of the float64
// statistics may differ between thread counts.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "../cpu/si_sdr.h"

namespace pyaudiok::bindings {
namespace {

constexpr int64_t kMinChunk = 8192;  // samples: shorter chunks would not pay for their partial sums

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> si_sdr_matrix_cpu(const at::Tensor& estimates_in,
                                                                             const at::Tensor& references_in,
                                                                             bool zero_mean, double eps) {
  TORCH_CHECK(estimates_in.device().is_cpu() && references_in.device().is_cpu(),
              "si_sdr_matrix_cpu: tensors must be on the CPU");
  TORCH_CHECK(estimates_in.dim() == 3 && references_in.dim() == 3 && estimates_in.size(0) == references_in.size(0) &&
                  estimates_in.size(2) == references_in.size(2) && estimates_in.size(2) >= 1,
              "si_sdr_matrix_cpu: estimates must be [B, N, T] and references [B, M, T] with T >= 1");
  TORCH_CHECK(estimates_in.scalar_type() == references_in.scalar_type() &&
                  (estimates_in.scalar_type() == at::kFloat || estimates_in.scalar_type() == at::kDouble),
              "si_sdr_matrix_cpu: estimates and references must both be float32 or both float64");
  TORCH_CHECK(eps > 0, "si_sdr_matrix_cpu: eps must be > 0");
  const at::Tensor e = estimates_in.contiguous(), r = references_in.contiguous();
  const int64_t B = e.size(0), N = e.size(1), M = r.size(1), n_time = e.size(2), K = N + M;
  const int64_t P = cpu::si_sdr_partial_size(N, M);
  const auto f64 = e.options().dtype(at::kDouble);
  at::Tensor ee = at::empty({B, N}, f64), rr = at::empty({B, M}, f64), er = at::empty({B, N, M}, f64);
  at::Tensor matrix = at::empty({B, N, M}, e.options());
  // Enough chunks per item to give every thread work, none shorter than kMinChunk.
  const int64_t threads = at::get_num_threads();
  const int64_t chunks =
      B == 0 || B >= threads ? 1 : std::max<int64_t>(1, std::min((threads + B - 1) / B, n_time / kMinChunk));
  const int64_t chunk_len = (n_time + chunks - 1) / chunks;
  at::Tensor shift = at::zeros({B, K}, f64), partial = at::empty({B, chunks, P}, f64);
  AT_DISPATCH_FLOATING_TYPES(e.scalar_type(), "si_sdr_matrix_cpu", [&] {
    const scalar_t* e_data = e.data_ptr<scalar_t>();
    const scalar_t* r_data = r.data_ptr<scalar_t>();
    double* shift_data = shift.data_ptr<double>();
    double* partial_data = partial.data_ptr<double>();
    if (zero_mean)
      for (int64_t b = 0; b < B; ++b) {
        cpu::si_sdr_shifts(e_data + b * N * n_time, N, n_time, shift_data + b * K);
        cpu::si_sdr_shifts(r_data + b * M * n_time, M, n_time, shift_data + b * K + N);
      }
    at::parallel_for(0, B * chunks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t job = begin; job < end; ++job) {
        const int64_t b = job / chunks, c = job % chunks;
        const int64_t t0 = c * chunk_len, t1 = std::min(n_time, t0 + chunk_len);
        cpu::si_sdr_partial(e_data + b * N * n_time, r_data + b * M * n_time, N, M, n_time, t0, t1,
                            shift_data + b * K, partial_data + job * P);
      }
    });
    for (int64_t b = 0; b < B; ++b) {
      double* total = partial_data + b * chunks * P;
      for (int64_t c = 1; c < chunks; ++c)
        for (int64_t i = 0; i < P; ++i) total[i] += total[c * P + i];
      cpu::si_sdr_finish(total, N, M, n_time, zero_mean, eps, ee.data_ptr<double>() + b * N,
                         rr.data_ptr<double>() + b * M, er.data_ptr<double>() + b * N * M,
                         matrix.data_ptr<scalar_t>() + b * N * M);
    }
  });
  return {matrix, ee, rr, er};
}

void check_assignable(int64_t N, int64_t M, const char* op) {
  TORCH_CHECK(N <= M && M <= cpu::kMaxExhaustiveSources, op, ": N <= M <= ", cpu::kMaxExhaustiveSources,
              " sources needed for the exhaustive search; got N = ", N, ", M = ", M);
}

// Best column per row of contiguous scores[B, N, M] into perm[B, N].
void assign(const at::Tensor& scores, at::Tensor& perm) {
  const int64_t B = scores.size(0), N = scores.size(1), M = scores.size(2);
  if (N == 0) return;
  AT_DISPATCH_FLOATING_TYPES(scores.scalar_type(), "pit_assign_cpu", [&] {
    for (int64_t b = 0; b < B; ++b)
      cpu::best_assignment(scores.data_ptr<scalar_t>() + b * N * M, N, M, perm.data_ptr<int64_t>() + b * N);
  });
}

// PIT's exhaustive assignment search per item: scores[B, N, M] -> [B, N] int64 column per row.
at::Tensor pit_assign_cpu(const at::Tensor& scores_in) {
  TORCH_CHECK(scores_in.device().is_cpu(), "pit_assign_cpu: scores must be on the CPU");
  TORCH_CHECK(scores_in.dim() == 3, "pit_assign_cpu: scores must be [B, N, M]");
  check_assignable(scores_in.size(1), scores_in.size(2), "pit_assign_cpu");
  TORCH_CHECK(scores_in.scalar_type() == at::kFloat || scores_in.scalar_type() == at::kDouble,
              "pit_assign_cpu: scores must be float32 or float64");
  const at::Tensor scores = scores_in.contiguous();
  at::Tensor perm = at::empty({scores.size(0), scores.size(1)}, scores.options().dtype(at::kLong));
  assign(scores, perm);
  return perm;
}

// The whole PIT SI-SDR in one call, for evaluation without gradients (pyaudiok/ops/si_sdr.py takes
// this route only then): the matrix, the best assignment and its mean SI-SDR per item.
std::tuple<at::Tensor, at::Tensor, at::Tensor> pit_si_sdr_cpu(const at::Tensor& estimates,
                                                             const at::Tensor& references, bool zero_mean,
                                                             double eps) {
  TORCH_CHECK(estimates.dim() == 3 && references.dim() == 3,
              "pit_si_sdr_cpu: estimates must be [B, N, T] and references [B, M, T]");
  check_assignable(estimates.size(1), references.size(1), "pit_si_sdr_cpu");  // before any work
  at::Tensor matrix = std::get<0>(si_sdr_matrix_cpu(estimates, references, zero_mean, eps));
  const int64_t B = matrix.size(0), N = matrix.size(1);
  at::Tensor perm = at::empty({B, N}, matrix.options().dtype(at::kLong));
  assign(matrix, perm);
  at::Tensor mean = matrix.gather(2, perm.unsqueeze(2)).squeeze(2).mean(-1);
  return {mean, perm, matrix};
}

}  // namespace
}  // namespace pyaudiok::bindings

TORCH_LIBRARY_IMPL(pyaudiok, CPU, m) {
  m.impl("si_sdr_matrix_cpu", &pyaudiok::bindings::si_sdr_matrix_cpu);
  m.impl("pit_assign_cpu", &pyaudiok::bindings::pit_assign_cpu);
  m.impl("pit_si_sdr_cpu", &pyaudiok::bindings::pit_si_sdr_cpu);
}
