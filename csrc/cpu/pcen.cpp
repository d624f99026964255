// sPCEN on the CPU, in groups of kLanes = 8 channels. The smoother runs on 8×8 blocks transposed
// so that one vector holds one time step of the 8 channels (their independent recurrences advance
// together); the compression (two powers per value) then runs vectorised along time, eight vectors
// at a time so that the long chains of the powers interleave. The backward's adjoint is the same
// kind of blocked scan, backwards in time; everything else in it runs row by row along time.
#include "pcen.h"
#include "simd.h"
#include "target_clones.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace pyaudiok::cpu {
namespace {

constexpr int64_t kLanes = 8;

// Per-lane channel parameters and derived constants.
template <typename T>
struct Lane {
  T alpha, delta, inv_r, s, delta_root, log_delta;
  Lane() = default;
  Lane(const T* params, int64_t F, int64_t f)
      : alpha(params[f]), delta(params[F + f]), inv_r(T(1) / params[2 * F + f]), s(params[3 * F + f]) {
    log_delta = std::log(delta);
    delta_root = std::exp(log_delta * inv_r);
  }
};

// δ^(1/r) and the backward's δ terms, as one route computes δ^(1/r) and ln δ. y = z^(1/r) − δ^(1/r)
// and ∂r's z^(1/r) ln z − δ^(1/r) ln δ cancel where E·P ≪ δ, so each route (fast, exact, the
// scalar tail's libm) subtracts its own evaluation of the same function at δ: z = δ then gives
// exactly 0, as the reference's single pow does, and the route's smooth errors cancel with the terms.
template <typename T>
struct DeltaTerms {
  T root;        // δ^(1/r)
  T delta_term;  // (1/r)·δ^(1/r)/δ, in ∂δ
  T r_term;      // δ^(1/r)·ln δ, in ∂r
};

template <typename T>
PYAUDIOK_INLINE DeltaTerms<T> delta_terms(T root, T log_delta, T delta, T inv_r) {
  return {root, inv_r * root / delta, root * log_delta};
}

// The libm terms of a lane (its delta_root and log_delta), for the scalar loops.
template <typename T>
PYAUDIOK_INLINE DeltaTerms<T> delta_terms(const Lane<T>& q) {
  return delta_terms(q.delta_root, q.log_delta, q.delta, q.inv_r);
}

// A row's constants as the float kernels use them.
struct Row {
  float alpha, delta, inv_r, eps;
  bool try_fast;                  // may take the fast route (see fast_route)
  bool exponents_bounded;         // the fast route's exponents need no check (see exponents_bounded)
  DeltaTerms<float> exact, fast;  // by each route
};

// Whether a row may take the fast route at all: the factors of its exponents finite (a NaN α
// must give NaN, which the range guard's min/max could miss).
inline bool fast_route(float alpha, float inv_r) { return std::isfinite(alpha) && std::isfinite(inv_r); }

// Whether every exponent of a row, −α·log2(eps + M) and log2(z)/r, is within ±126 whatever the
// values: log2 of a normal float lies in [−126, 128), so factors of magnitude ≤ 0.98 keep them
// within ±125.5. LEAF's ranges (α ≤ 1, r ≥ 1) mostly are; such rows skip the exponents' guard.
inline bool exponents_bounded(float alpha, float inv_r) {
  return std::fabs(alpha) <= 0.98f && std::fabs(inv_r) <= 0.98f;
}

// z^(1/r) for U vectors of l2 = log2 z on the fast route, the exponents checked unless kBounded
// (without kPower only the check: the backward takes z^(1/r) from y).
// make_row's δ^(1/r) takes the same code, and z = δ must give it bit for bit (silence gives y = 0
// exactly). The product is rounded on its own (+ 0 makes it the end of a multiply-add): else the
// compiler may fuse it into exp2's rounding steps in one place and not in the other (it did, where
// make_row's lone lane was computed as a scalar).
template <int U, bool kBounded, bool kPower = true>
PYAUDIOK_INLINE void fast_root(const simd::v8f* l2, float inv_r, simd::FastRangeGuard& guard, simd::v8f* root) {
  for (int u = 0; u < U; ++u) {
    root[u] = l2[u] * inv_r + 0.0f;
    if constexpr (!kBounded) guard.exponent(root[u]);
  }
  if constexpr (kPower) simd::exp2_small_n<U>(root);
}

PYAUDIOK_INLINE Row make_row(const Lane<float>& lane, float eps) {
  using namespace simd;
  const float delta = lane.delta, inv_r = lane.inv_r;
  v8f ld = splat(delta);
  log_n<1>(&ld);
  v8f dr = ld * inv_r;
  exp_n<1>(&dr);
  const DeltaTerms<float> exact = delta_terms(dr[0], ld[0], delta, inv_r);
  Row row{lane.alpha, delta, inv_r, eps, fast_route(lane.alpha, inv_r), exponents_bounded(lane.alpha, inv_r),
          exact, exact};
  v8f l2 = splat(delta), root;
  FastRangeGuard guard;
  guard.log2_arg(l2);
  log2_normal_n<1>(&l2);
  if (row.exponents_bounded)
    fast_root<1, true>(&l2, inv_r, guard, &root);
  else
    fast_root<1, false>(&l2, inv_r, guard, &root);
  if (guard.ok())  // else lanes near δ leave the fast route too, or δ^(1/r) is out of its range
    row.fast = delta_terms(root[0], l2[0] * 0.693147180559945309f, delta, inv_r);
  return row;
}

// The per-value quantities of the compression for U vectors of 8 values at E, M:
//   me = eps + M, log_m = ln me, P = me^(−α), z = E·P + δ, log_z = ln z, root = z^(1/r),
// and whether the fast route computed them (`fast`: they take Row's fast δ terms, else the exact ones).
// Each power is two long dependent chains; every step runs for the U vectors in a row so that the
// core overlaps their chains. The fast route computes x^p as 2^(p·log2 x) (simd.h's log2_normal_n,
// exp2_small_n); it needs me and z positive, normal and finite, every p·log2 x within ±126, and
// the row's α and 1/r finite. Where any lane is not (0, ∞, NaN, a negative E, an extreme α or r),
// the exact route, simd.h's log_n/exp_n with their special values, recomputes the U vectors.
// Without kRoot, root is left for the caller: the backward has it as y + δ^(1/r) (one power fewer).
template <int U>
struct Terms {
  simd::v8f me[U], log_m[U], P[U], z[U], log_z[U], root[U];
  bool fast;
};

template <int U, bool kBounded, bool kRoot = true>
PYAUDIOK_INLINE void compression_terms(const float* E, const float* M, const Row& row, Terms<U>& q) {
  using namespace simd;
  constexpr float kLn2 = 0.693147180559945309f;
  const float alpha = row.alpha, delta = row.delta, inv_r = row.inv_r, eps = row.eps;
  if (row.try_fast) {
    v8f l2m[U], l2z[U];
    FastRangeGuard guard;
    for (int u = 0; u < U; ++u) {
      l2m[u] = q.me[u] = load8(M + 8 * u) + eps;
      guard.log2_arg(q.me[u]);
    }
    log2_normal_n<U>(l2m);
    for (int u = 0; u < U; ++u) {
      q.P[u] = -alpha * l2m[u];
      if constexpr (!kBounded) guard.exponent(q.P[u]);
    }
    exp2_small_n<U>(q.P);
    for (int u = 0; u < U; ++u) {
      l2z[u] = q.z[u] = load8(E + 8 * u) * q.P[u] + delta;
      guard.log2_arg(q.z[u]);
    }
    log2_normal_n<U>(l2z);
    fast_root<U, kBounded, kRoot>(l2z, inv_r, guard, q.root);
    if (guard.ok()) {
      for (int u = 0; u < U; ++u) {
        q.log_m[u] = l2m[u] * kLn2;
        q.log_z[u] = l2z[u] * kLn2;
      }
      q.fast = true;
      return;
    }
  }
  for (int u = 0; u < U; ++u) q.log_m[u] = q.me[u] = load8(M + 8 * u) + eps;
  log_n<U>(q.log_m);
  for (int u = 0; u < U; ++u) q.P[u] = -alpha * q.log_m[u];
  exp_n<U>(q.P);
  for (int u = 0; u < U; ++u) q.log_z[u] = q.z[u] = load8(E + 8 * u) * q.P[u] + delta;
  log_n<U>(q.log_z);
  if constexpr (kRoot) {
    for (int u = 0; u < U; ++u) q.root[u] = q.log_z[u] * inv_r;
    exp_n<U>(q.root);
  }
  q.fast = false;
}

// y = (E·(eps + M)^(−α) + δ)^(1/r) − δ^(1/r) for U vectors.
template <int U, bool kBounded>
PYAUDIOK_INLINE void compress_vectors(const float* E, const float* M, const Row& row, float* y) {
  Terms<U> q;
  compression_terms<U, kBounded>(E, M, row, q);
  const float delta_root = q.fast ? row.fast.root : row.exact.root;
  for (int u = 0; u < U; ++u) simd::store8(y + 8 * u, q.root[u] - delta_root);
}

// The same, value by value with libm, for t in [t_begin, n): float's tail and the double kernel.
template <typename T>
PYAUDIOK_INLINE void compress_scalar(const T* E, const T* M, const Lane<T>& q, T eps, int64_t t_begin, int64_t n,
                                     T* y) {
  for (int64_t t = t_begin; t < n; ++t) {
    const T z = E[t] * std::exp(-q.alpha * std::log(eps + M[t])) + q.delta;
    y[t] = std::exp(std::log(z) * q.inv_r) - q.delta_root;
  }
}

// The whole vectors of a row, from t (left past them).
template <bool kBounded>
PYAUDIOK_INLINE void compress_vectors_of_row(const float* E, const float* M, const Row& row, int64_t n, float* y,
                                             int64_t& t) {
  for (; t + 64 <= n; t += 64) compress_vectors<8, kBounded>(E + t, M + t, row, y + t);
  for (; t + 32 <= n; t += 32) compress_vectors<4, kBounded>(E + t, M + t, row, y + t);
  for (; t + 8 <= n; t += 8) compress_vectors<1, kBounded>(E + t, M + t, row, y + t);
}

PYAUDIOK_CLONES_AVX512
void compress_row(const float* E, const float* M, const Lane<float>& q, float eps, int64_t n, float* y) {
  const Row row = make_row(q, eps);
  int64_t t = 0;
  if (row.exponents_bounded)
    compress_vectors_of_row<true>(E, M, row, n, y, t);
  else
    compress_vectors_of_row<false>(E, M, row, n, y, t);
  compress_scalar(E, M, q, eps, t, n, y);
}

void compress_row(const double* E, const double* M, const Lane<double>& q, double eps, int64_t n, double* y) {
  compress_scalar(E, M, q, eps, 0, n, y);
}

template <int U, bool kBounded>
PYAUDIOK_INLINE void backward_vectors(const float* g, const float* E, const float* M, const float* y, const Row& row,
                                      float* direct, float* drive, simd::v8f* s0, simd::v8f* s1, simd::v8f* s2) {
  using namespace simd;
  Terms<U> q;
  compression_terms<U, kBounded, false>(E, M, row, q);
  const float alpha = row.alpha, inv_r = row.inv_r;
  // Selected by value: a reference into `row` would keep it in memory, reloaded after every store.
  const float delta_term = q.fast ? row.fast.delta_term : row.exact.delta_term;
  const float r_term = q.fast ? row.fast.r_term : row.exact.r_term;
  // The forward's y subtracted the same route's δ^(1/r): adding it back gives that route's z^(1/r).
  const float delta_root = q.fast ? row.fast.root : row.exact.root;
  for (int u = 0; u < U; ++u) q.root[u] = load8(y + 8 * u) + delta_root;
  for (int u = 0; u < U; ++u) {
    const v8f gv = load8(g + 8 * u), gz = gv * inv_r * q.root[u] / q.z[u], gzeP = gz * load8(E + 8 * u) * q.P[u];
    store8(direct + 8 * u, gz * q.P[u]);
    store8(drive + 8 * u, -alpha * gzeP / q.me[u]);
    s0[u] -= gzeP * q.log_m[u];
    s1[u] += gz - gv * delta_term;
    s2[u] -= gv * inv_r * inv_r * (q.root[u] * q.log_z[u] - r_term);
  }
}

// The backward's per-value terms of one row, independent of the recurrence: with
// P = (eps + M)^(−α), z = E·P + δ, gz = g·(1/r)·z^(1/r − 1):
//   direct[t] = gz·P (∂y/∂E at fixed M), drive[t] = −α·gz·E·P/(eps + M) (what feeds λ),
// and the row's ∂α, ∂δ, ∂r sums added to acc[0..2]; z^(1/r) is the forward's y + δ^(1/r). Value by
// value with libm, for t in [t_begin, n): float's tail and the double kernel.
template <typename T>
PYAUDIOK_INLINE void backward_scalar(const T* g, const T* E, const T* M, const T* y, const Lane<T>& q, T eps,
                                     int64_t t_begin, int64_t n, T* direct, T* drive, double* acc) {
  const DeltaTerms<T> d = delta_terms(q);
  for (int64_t t = t_begin; t < n; ++t) {
    const T me = M[t] + eps, log_m = std::log(me), P = std::exp(-q.alpha * log_m), z = E[t] * P + q.delta;
    const T log_z = std::log(z), z_root = y[t] + d.root, gz = g[t] * q.inv_r * z_root / z;
    const T gzeP = gz * E[t] * P;
    direct[t] = gz * P;
    drive[t] = -q.alpha * gzeP / me;
    acc[0] -= gzeP * log_m;
    acc[1] += gz - g[t] * d.delta_term;
    acc[2] -= g[t] * q.inv_r * q.inv_r * (z_root * log_z - d.r_term);
  }
}

// Vectors in flight in the backward's row loop: 8 spilled more (4 % slower with AVX-512, no faster with AVX2).
constexpr int kUnroll = 6;

// backward_vectors over the whole vectors of a row, from t (left past them).
template <bool kBounded>
PYAUDIOK_INLINE void backward_vectors_of_row(const float* g, const float* E, const float* M, const float* y,
                                             const Row& row, int64_t n, float* direct, float* drive, simd::v8f* s0,
                                             simd::v8f* s1, simd::v8f* s2, int64_t& t) {
  for (; t + 8 * kUnroll <= n; t += 8 * kUnroll)
    backward_vectors<kUnroll, kBounded>(g + t, E + t, M + t, y + t, row, direct + t, drive + t, s0, s1, s2);
  for (; t + 8 <= n; t += 8)
    backward_vectors<1, kBounded>(g + t, E + t, M + t, y + t, row, direct + t, drive + t, s0, s1, s2);
}

// The same terms, eight vectors at a time as compress_row, the tail by backward_scalar.
PYAUDIOK_CLONES_AVX512
void backward_terms(const float* g, const float* E, const float* M, const float* y, const Lane<float>& q, float eps,
                    int64_t n, float* direct, float* drive, double* acc) {
  using namespace simd;
  const Row row = make_row(q, eps);
  v8f s0[kUnroll]{}, s1[kUnroll]{}, s2[kUnroll]{};
  int64_t t = 0;
  if (row.exponents_bounded)
    backward_vectors_of_row<true>(g, E, M, y, row, n, direct, drive, s0, s1, s2, t);
  else
    backward_vectors_of_row<false>(g, E, M, y, row, n, direct, drive, s0, s1, s2, t);
  for (int u = 0; u < kUnroll; ++u)
    for (int l = 0; l < 8; ++l) {
      acc[0] += s0[u][l];
      acc[1] += s1[u][l];
      acc[2] += s2[u][l];
    }
  backward_scalar(g, E, M, y, q, eps, t, n, direct, drive, acc);
}

void backward_terms(const double* g, const double* E, const double* M, const double* y, const Lane<double>& q,
                    double eps, int64_t n, double* direct, double* drive, double* acc) {
  backward_scalar(g, E, M, y, q, eps, 0, n, direct, drive, acc);
}

// Steps [t_begin, t_end) of the smoother of L rows (row stride n_time) side by side, from and
// updating `state`: M_t = s E_t + (1 − s) M_{t−1}. The lanes' independent recurrences overlap; L
// fixed at compile time keeps the states in registers.
template <int L, typename T>
PYAUDIOK_INLINE void smooth_steps(const T* E, const T* s, int64_t n_time, int64_t t_begin, int64_t t_end, T* state,
                                  T* M) {
  T keep[L];
  for (int j = 0; j < L; ++j) keep[j] = T(1) - s[j];
  for (int64_t t = t_begin; t < t_end; ++t)
    for (int j = 0; j < L; ++j) M[j * n_time + t] = state[j] = s[j] * E[j * n_time + t] + keep[j] * state[j];
}

// The whole smoother of L rows: M_0 = E_0, then every step.
template <int L, typename T>
PYAUDIOK_INLINE void smooth_lanes(const T* E, const T* s, int64_t n_time, T* M) {
  T state[L];
  for (int j = 0; j < L; ++j) state[j] = M[j * n_time] = E[j * n_time];
  smooth_steps<L>(E, s, n_time, 1, n_time, state, M);
}

// The smoother of a group of kLanes rows; float has the blocked overload below.
template <typename T>
PYAUDIOK_INLINE void smooth_rows(const T* E, const T* s, int64_t n_time, T* M) {
  smooth_lanes<kLanes>(E, s, n_time, M);
}

// (1 − s)² lane-wise, rounded once from the double product: the two-step recurrences below decay
// by it, and a float square would round twice.
PYAUDIOK_INLINE simd::v8f squared(simd::v8f keep) {
  simd::v8f k2;
  for (int l = 0; l < 8; ++l) k2[l] = static_cast<float>(static_cast<double>(keep[l]) * keep[l]);
  return k2;
}

// The same for 8 float rows, in blocks of 8 steps: the block is transposed so that each vector
// holds one step of the 8 rows, the recurrence runs on whole vectors, and the block is transposed
// back. The first steps and the tail run lane by lane. Two steps per multiply-add on the chain:
// M_{t+2} = (1 − s)²·M_t + ((1 − s)·u_{t+1} + u_{t+2}), u = s·E, and M_{t+1} off the chain. One
// step per multiply-add made the chain's latency (8 per block) the smoother's bound.
static_assert(kLanes == 8, "the blocked smoother and adjoint transpose 8 rows");
PYAUDIOK_INLINE void smooth_rows(const float* E, const float* s, int64_t n_time, float* M) {
  using namespace simd;
  float first[8];
  for (int j = 0; j < 8; ++j) first[j] = M[j * n_time] = E[j * n_time];
  smooth_steps<8>(E, s, n_time, 1, std::min<int64_t>(8, n_time), first, M);
  const v8f sv = load8(s), keep = 1.0f - sv, keep2 = squared(keep);
  v8f state = load8(first);
  int64_t t = 8;
  for (; t + 8 <= n_time; t += 8) {
    v8f c[8];
    for (int i = 0; i < 8; ++i) c[i] = load8(E + i * n_time + t);
    transpose8x8(c);
    for (int j = 0; j < 8; j += 2) {
      const v8f u0 = sv * c[j], u1 = sv * c[j + 1];
      c[j] = keep * state + u0;
      c[j + 1] = state = keep2 * state + (keep * u0 + u1);
    }
    transpose8x8(c);
    for (int i = 0; i < 8; ++i) store8(M + i * n_time + t, c[i]);
  }
  store8(first, state);
  if (t < n_time) smooth_steps<8>(E, s, n_time, t, n_time, first, M);
}

// Steps t_end − 1 down to t_begin of the smoother's adjoint for L rows of the scratch `drive`
// (row stride n_time), in place and from `lam`: λ_t = drive_t + (1 − s) λ_{t+1}. Only this
// recurrence is sequential; what λ feeds is summed row by row afterwards, vectorised along time.
template <int L, typename T>
PYAUDIOK_INLINE void adjoint_steps(T* drive, const T* s, int64_t n_time, int64_t t_begin, int64_t t_end, T* lam) {
  T keep[L];
  for (int j = 0; j < L; ++j) keep[j] = T(1) - s[j];
  for (int64_t t = t_end - 1; t >= t_begin; --t)
    for (int j = 0; j < L; ++j) drive[j * n_time + t] = lam[j] = drive[j * n_time + t] + keep[j] * lam[j];
}

// The whole adjoint of L rows, from λ_T = 0.
template <int L, typename T>
PYAUDIOK_INLINE void adjoint_lanes(T* drive, const T* s, int64_t n_time) {
  T lam[L] = {};
  adjoint_steps<L>(drive, s, n_time, 0, n_time, lam);
}

// The adjoint of a group of kLanes rows; float has the blocked overload below.
template <typename T>
PYAUDIOK_INLINE void adjoint_rows(T* drive, const T* s, int64_t n_time) {
  adjoint_lanes<kLanes>(drive, s, n_time);
}

// The same for 8 float rows, in transposed blocks of 8 steps as the smoother above (two steps per
// multiply-add on the chain): the tail past the last whole block lane by lane, then the blocks
// from the end.
PYAUDIOK_INLINE void adjoint_rows(float* drive, const float* s, int64_t n_time) {
  using namespace simd;
  const int64_t blocks_end = n_time / 8 * 8;
  float last[8] = {};
  adjoint_steps<8>(drive, s, n_time, blocks_end, n_time, last);
  const v8f keep = 1.0f - load8(s), keep2 = squared(keep);
  v8f lam = load8(last);
  for (int64_t t = blocks_end - 8; t >= 0; t -= 8) {
    v8f c[8];
    for (int i = 0; i < 8; ++i) c[i] = load8(drive + i * n_time + t);
    transpose8x8(c);
    for (int j = 7; j >= 0; j -= 2) {
      const v8f d1 = c[j], d0 = c[j - 1];
      c[j] = keep * lam + d1;
      c[j - 1] = lam = keep2 * lam + (keep * d1 + d0);
    }
    transpose8x8(c);
    for (int i = 0; i < 8; ++i) store8(drive + i * n_time + t, c[i]);
  }
}

// One row's gradient to E from its λ, and its ∂s = Σ_{t≥1} λ_t (E_t − M_{t−1}): the terms in T, their
// sum in double (no float rounding of a 10⁵-term sum). Float adds its terms in vector lanes, kBlock
// terms per lane, before each block goes into the double sum.
template <typename T>
PYAUDIOK_INLINE double state_grad_tail(const T* lam, const T* E, const T* M, int64_t t, int64_t n_time) {
  double sum = 0;
  for (; t < n_time; ++t) sum += static_cast<double>(lam[t] * (E[t] - M[t - 1]));
  return sum;
}

template <typename T>
PYAUDIOK_INLINE double state_grad(const T* lam, const T* E, const T* M, int64_t n_time) {
  return state_grad_tail(lam, E, M, 1, n_time);
}

PYAUDIOK_INLINE double state_grad(const float* lam, const float* E, const float* M, int64_t n_time) {
  using namespace simd;
  constexpr int64_t kBlock = 32;  // terms each lane adds in float
  double sum = 0;
  int64_t t = 1;
  while (t + 16 <= n_time) {
    v8f a{}, b{};  // two chains: the adds' latency, not their rate, would bound one
    for (int64_t k = 0; k < kBlock && t + 16 <= n_time; ++k, t += 16) {
      a += load8(lam + t) * (load8(E + t) - load8(M + t - 1));
      b += load8(lam + t + 8) * (load8(E + t + 8) - load8(M + t + 7));
    }
    const v8f ab = a + b;
    for (int l = 0; l < 8; ++l) sum += ab[l];
  }
  return sum + state_grad_tail(lam, E, M, t, n_time);
}

template <typename T>
PYAUDIOK_INLINE double finish_row(const T* direct, const T* lam, const T* E, const T* M, T s, int64_t n_time,
                                  T* grad_E) {
  grad_E[0] = direct[0] + lam[0];
  for (int64_t t = 1; t < n_time; ++t) grad_E[t] = direct[t] + s * lam[t];
  return state_grad(lam, E, M, n_time);
}

// A group of up to kLanes rows from r0: each row's parameters, and its smoother state M
// (`lanes` rows of n_time) from E's rows.
template <typename T>
struct Group {
  int64_t lanes;
  Lane<T> p[kLanes];
  T s[kLanes];

  Group(const T* params, int64_t F, int64_t r0, int64_t row_end) : lanes(std::min(kLanes, row_end - r0)) {
    for (int64_t j = 0; j < lanes; ++j) {
      p[j] = Lane<T>(params, F, (r0 + j) % F);
      s[j] = p[j].s;
    }
  }

  PYAUDIOK_INLINE void smooth(const T* E_group, int64_t n_time, T* M_group) const {
    if (lanes == kLanes) {
      smooth_rows(E_group, s, n_time, M_group);
    } else {
      for (int64_t j = 0; j < lanes; ++j) smooth_lanes<1>(E_group + j * n_time, s + j, n_time, M_group + j * n_time);
    }
  }
};

}  // namespace

// Two phases per group of kLanes rows: the smoother's recurrence (sequential in time, the lanes
// interleaved) into a per-group buffer that stays in cache, then the compression, elementwise and
// vectorised along each row.
template <typename T>
PYAUDIOK_CLONES_AVX512 void pcen_forward(const T* E, const T* params, int64_t F, int64_t n_time, double eps,
                                         int64_t row_begin, int64_t row_end, T* y) {
  const T e0 = static_cast<T>(eps);
  std::vector<T> M(kLanes * n_time);
  for (int64_t r0 = row_begin; r0 < row_end; r0 += kLanes) {
    const Group<T> group(params, F, r0, row_end);
    const int64_t first = r0 * n_time;
    group.smooth(E + first, n_time, M.data());
    for (int64_t j = 0; j < group.lanes; ++j) {
      const int64_t row = first + j * n_time;
      compress_row(E + row, M.data() + j * n_time, group.p[j], e0, n_time, y + row);
    }
  }
}

template <typename T>
PYAUDIOK_CLONES_AVX512 void pcen_backward(const T* grad, const T* E, const T* y, const T* params, int64_t F,
                                          int64_t n_time, double eps, int64_t row_begin, int64_t row_end, T* grad_E,
                                          T* partial) {
  const T e0 = static_cast<T>(eps);
  std::vector<T> direct(kLanes * n_time), drive(kLanes * n_time), M(kLanes * n_time);
  for (int64_t r0 = row_begin; r0 < row_end; r0 += kLanes) {
    const Group<T> group(params, F, r0, row_end);
    const int64_t lanes = group.lanes, first = r0 * n_time;
    group.smooth(E + first, n_time, M.data());  // the forward's state, recomputed
    double acc[kLanes][4] = {};  // ∂α, ∂δ, ∂r, ∂s sums of the row
    for (int64_t j = 0; j < lanes; ++j) {
      const int64_t row = first + j * n_time;
      backward_terms(grad + row, E + row, M.data() + j * n_time, y + row, group.p[j], e0, n_time,
                     direct.data() + j * n_time, drive.data() + j * n_time, acc[j]);
    }
    if (lanes == kLanes) {
      adjoint_rows(drive.data(), group.s, n_time);
    } else {
      for (int64_t j = 0; j < lanes; ++j) adjoint_lanes<1>(drive.data() + j * n_time, group.s + j, n_time);
    }
    for (int64_t j = 0; j < lanes; ++j) {
      const int64_t row = first + j * n_time;
      acc[j][3] = finish_row(direct.data() + j * n_time, drive.data() + j * n_time, E + row, M.data() + j * n_time,
                             group.s[j], n_time, grad_E + row);
      for (int k = 0; k < 4; ++k) partial[(r0 + j) * 4 + k] = static_cast<T>(acc[j][k]);
    }
  }
}

#define PYAUDIOK_PCEN_INSTANTIATE(T)                                                                            \
  template void pcen_forward<T>(const T*, const T*, int64_t, int64_t, double, int64_t, int64_t, T*);           \
  template void pcen_backward<T>(const T*, const T*, const T*, const T*, int64_t, int64_t, double, int64_t,    \
                                 int64_t, T*, T*);
PYAUDIOK_PCEN_INSTANTIATE(float)
PYAUDIOK_PCEN_INSTANTIATE(double)
#undef PYAUDIOK_PCEN_INSTANTIATE

}  // namespace pyaudiok::cpu
