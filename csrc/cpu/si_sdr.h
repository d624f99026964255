// SI-SDR matrix of one batch element, CPU kernel (csrc/cpu/si_sdr.cpp). Torch-free: raw pointers and
// sizes; the binding (csrc/bindings/si_sdr_cpu.cpp) validates, allocates and splits the work over
// threads. pyaudiok/ops/si_sdr.py has the math.
//
// Rows: estimates[N, T] then references[M, T] (T contiguous, float or double), K = N + M.
// Use: shifts of the K rows; partial sums over disjoint time ranges, added up; then finish.
#pragma once
#include <cstdint>

namespace pyaudiok::cpu {

// Doubles in one partial: the K row sums, the K sums of squares, the N·M cross sums.
inline int64_t si_sdr_partial_size(int64_t N, int64_t M) { return 2 * (N + M) + N * M; }

// shift[k] = a cheap centre of row k (the mean of its first samples); zero_mean=false callers pass zeros.
template <typename T>
void si_sdr_shifts(const T* rows, int64_t n_rows, int64_t n_time, double* shift);

// Sums of the shifted rows over samples [t_begin, t_end) into partial[si_sdr_partial_size(N, M)].
template <typename T>
void si_sdr_partial(const T* estimates, const T* references, int64_t N, int64_t M, int64_t n_time, int64_t t_begin,
                    int64_t t_end, const double* shift, double* partial);

// From the summed partials: ee[N], rr[M], er[N, M] (centred when zero_mean) and matrix[N, M] in dB.
template <typename T>
void si_sdr_finish(const double* partial, int64_t N, int64_t M, int64_t n_time, bool zero_mean, double eps,
                   double* ee, double* rr, double* er, T* matrix);

// PIT's exhaustive search, one item: perm[N] = the assignment of the N rows of scores[N, M]
// (N ≤ M ≤ kMaxExhaustiveSources) to distinct columns with the largest total (summed in double), the
// first in lexicographic order among equal totals (itertools.permutations' order). NaN and −inf scores
// rank below every finite one and +inf above (as the Hungarian route's nan_to_num does).
constexpr int64_t kMaxExhaustiveSources = 8;
template <typename T>
void best_assignment(const T* scores, int64_t N, int64_t M, int64_t* perm);

}  // namespace pyaudiok::cpu
